"""The data preflight of a study (issue 12, item 7): every file the trials read is checked before Ray starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import h5py
import pytest

import medseg_platform.preflight as preflight
import medseg_platform.study.runner as runner
from medseg_platform.data.layout import AcdcLayout, write_manifest
from medseg_platform.errors import DataError
from analysis.study_cli import run_study_main
from medseg_platform.profiles import PROFILES
from medseg_platform.study import Study, Variant


def _study(root: Path, results: Path, **kwargs) -> Study:
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(root), "data.labelled_batch": 2, "data.unlabelled_batch": 2,
                                               "data.labelled": "1"})
    return Study("pre", base, results, variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], seeds=[1], dashboard=False,
                 **kwargs)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a study gets as far as starting Ray."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner, "init_ray", refuse)
    monkeypatch.setattr(runner, "run_tune", refuse)


def _log() -> tuple[list[str], Callable[[str], None]]:
    lines: list[str] = []
    return lines, lines.append


def test_truncated_slice_stops_the_study_command_with_one_line_before_ray(tiny_root, tmp_path, capsys, no_ray):
    bad = AcdcLayout(tiny_root).slice_path("patient003_frame02_slice_1")  # an unlabelled slice with 1 labelled patient
    bad.write_bytes(bad.read_bytes()[:200])
    results = tmp_path / "results"
    argv = ["--smoke-test", "--data-root", str(tiny_root), "--results-dir", str(results), "--no-dashboard"]
    code = run_study_main("pre", "pre", lambda args, profile, base: _study(tiny_root, results), argv=argv)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(error_lines) == 1
    assert error_lines[0].startswith(f"error: data preflight, nothing started: {bad}: unreadable HDF5 file")
    assert f"'medseg data check {tiny_root} --num-classes 4' lists every problem" in error_lines[0]
    assert not (results / "pre-smoke").exists()  # no study folder, no trials, no cache


def test_label_outside_the_classes_and_nan_image_are_found_in_val_and_test_volumes(tiny_root, tmp_path, no_ray):
    layout = AcdcLayout(tiny_root)
    with h5py.File(layout.volume_path("patient005_frame02"), "r+") as fh:  # val
        fh["label"][1, 2, 3] = 9
    with h5py.File(layout.volume_path("patient006_frame01"), "r+") as fh:  # test
        fh["image"][0, 0, 0] = float("nan")
    with pytest.raises(DataError) as info:
        _study(tiny_root, tmp_path / "r").run()
    message = str(info.value)
    assert "\n" not in message and "patient005_frame02.h5: 'label' has value(s) [9] outside 0..3" in message
    assert message.endswith("(1 more problem(s)); 'medseg data check " + str(tiny_root) + " --num-classes 4' lists every problem")


def test_a_passed_check_is_cached_until_a_file_changes(tiny_root, tmp_path, monkeypatch):
    datasets = [(str(tiny_root), 4)]
    lines, log = _log()
    preflight.preflight_datasets(datasets, tmp_path, log)
    cache = json.loads((tmp_path / "preflight.json").read_text())
    (verdict,) = cache["passed"].values()
    assert verdict == {"root": str(tiny_root), "num_classes": 4, "class_names": ["RV", "Myo", "LV"], "files": 24 + 2 + 2}
    assert lines[0].startswith(f"data preflight: 28 files of {tiny_root} OK (")

    calls = []
    real = preflight.check_dataset
    monkeypatch.setattr(preflight, "check_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    preflight.preflight_datasets(datasets, tmp_path, log)  # unchanged: nothing is read
    assert calls == [] and lines[1] == f"data preflight: {tiny_root} unchanged since its last check (28 files)"


def test_changed_file_or_num_classes_is_checked_again(tiny_root, tmp_path):
    datasets = [(str(tiny_root), 4)]
    preflight.preflight_datasets(datasets, tmp_path, lambda m: None)
    before = (tmp_path / "preflight.json").read_bytes()
    with pytest.raises(DataError, match="outside 0..2"):
        preflight.preflight_datasets([(str(tiny_root), 3)], tmp_path, lambda m: None)
    assert (tmp_path / "preflight.json").read_bytes() == before  # a failed check is never cached
    volume = AcdcLayout(tiny_root).volume_path("patient006_frame02")
    volume.write_bytes(volume.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{volume}: unreadable HDF5 file"):
        preflight.preflight_datasets(datasets, tmp_path, lambda m: None)


def test_datasets_of_one_study_must_share_their_class_names(tiny_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_root, other)
    write_manifest(other, {}, {}, class_names=["a", "b", "c"])
    trials = [{"config": {"data": {"root": str(tiny_root), "num_classes": 4}}},
              {"config": {"data": {"root": str(other), "num_classes": 4}}},
              {"config": {"data": {"root": str(tiny_root), "num_classes": 4}}}]
    assert preflight.datasets_of_trials(trials) == [(str(tiny_root), 4), (str(other), 4)]
    with pytest.raises(DataError) as info:
        preflight.preflight_datasets(preflight.datasets_of_trials(trials), tmp_path / "study", lambda m: None)
    assert str(info.value) == (f"{other}: class names a, b, c differ from RV, Myo, LV of {tiny_root} "
                               "(one study's trials must share one dataset's classes; run them as separate studies)")
    assert not (tmp_path / "study").exists()


def test_a_search_checks_every_sample_in_its_folder_against_the_dataset_now(tmp_path):
    """Samples are keyed by their sampled config, not by the study's trial list: a search resumed on a dataset converted
    again used to table the old samples beside the new ones."""
    import types

    from medseg_platform.data.phantom import generate_phantom
    from medseg_platform.errors import DataError
    from medseg_platform.io import write_json_atomic
    from medseg_platform.preflight import dataset_identity
    from medseg_platform.study.runner import check_trained_on_this_data

    root = generate_phantom(tmp_path / "ph", patients=5, size=32, seed=0)
    study_dir = tmp_path / "study"
    trials = [{"key": "mona-l1-s1-0000000000", "config": {"data": {"root": str(root), "num_classes": 4}}}]
    sample = study_dir / "trials" / "mona-l1-s1-sampled0001"
    sample.mkdir(parents=True)
    record = {"config": {"data": {"root": str(root)}}, "data_identity": dataset_identity(root)}
    write_json_atomic(sample / "result.json", record)
    search = types.SimpleNamespace(search_space={"optim.lr": object()}, study_dir=study_dir)
    grid = types.SimpleNamespace(search_space=None, study_dir=study_dir)
    check_trained_on_this_data(search, trials)  # the same version: passes
    write_json_atomic(sample / "result.json", {**record, "data_identity": "0" * 64})  # trained on another version
    with pytest.raises(DataError, match=r"1 finished trial\(s\) or cached pretraining stage\(s\) .* another version"):
        check_trained_on_this_data(search, trials)
    check_trained_on_this_data(grid, trials)  # a grid tables only its own trials' folders
