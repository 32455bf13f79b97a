import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.console import main
from medseg_platform.data.check import check_dataset
from medseg_platform.data.layout import AcdcLayout


def test_clean_dataset_reports_counts_and_fractions(tiny_root: Path, capsys):
    report = check_dataset(tiny_root)
    assert report.ok, report.problems
    assert report.splits["train"].cases == 8 and report.splits["train"].slices == 24
    assert report.splits["test"].cases == 2 and report.splits["test"].slices == 6
    voxels = report.splits["train"].class_voxels
    assert voxels.sum() == 24 * 12 * 10 and (voxels > 0).all()
    assert main(["data", "check", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out and "train" in out and "%" in out


def test_every_bad_file_is_reported_and_check_continues(tiny_root: Path, capsys):
    ds = AcdcLayout(tiny_root)
    # 1) an h5 without `label`
    with h5py.File(ds.slice_path(ds.train_slices[0]), "w") as fh:
        fh["image"] = np.zeros((12, 10), np.float32)
    # 2) label value 7 with 4 classes
    with h5py.File(ds.slice_path(ds.train_slices[1]), "r+") as fh:
        fh["label"][0, 0] = 7
    # 3) NaN image
    with h5py.File(ds.volume_path("patient005_frame01"), "r+") as fh:
        fh["image"][0, 0, 0] = np.nan
    # 4) truncated file
    path = ds.volume_path("patient006_frame02")
    path.write_bytes(path.read_bytes()[:100])
    # 5) the list names a missing case; 6) and one case twice (a repeat used to pass unnoticed)
    (tiny_root / "test.list").write_text("patient006_frame01\npatient006_frame02\npatient777_frame01\npatient006_frame01\n")
    # 7) an 'image' that is an HDF5 group (used to stop the whole check with a TypeError)
    with h5py.File(ds.slice_path(ds.train_slices[2]), "w") as fh:
        fh.create_group("image")
        fh["label"] = np.zeros((12, 10), np.uint8)

    # 8) a training case's volume deleted (read by `predict --split all`, not by training; it passed as OK)
    train_volume = ds.volume_path(ds.train_cases[0])
    train_volume.unlink()

    report = check_dataset(tiny_root)
    text = "\n".join(report.problems)
    assert len(report.problems) == 8, text
    assert f"{train_volume}: file is missing (every case has its volume in data/" in text
    assert "test.list: 1 id(s) listed more than once, e.g. 'patient006_frame01'" in text
    assert f"{ds.train_slices[2]}.h5: ['image'] hold(s) a group, not an array" in text
    assert f"{ds.train_slices[0]}.h5: missing dataset key(s) ['label']" in text
    assert f"{ds.train_slices[1]}.h5: 'label' has value(s) [7] outside 0..3" in text
    assert "patient005_frame01.h5: 'image' has 1 NaN/inf value(s)" in text
    assert "patient006_frame02.h5: unreadable HDF5 file" in text
    assert "patient777_frame01.h5: file is missing" in text
    assert all("\n" not in p for p in report.problems)
    # every readable file was still counted (all but the one without `label` and the group)
    assert report.splits["train"].items == 22
    assert main(["data", "check", str(tiny_root)]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 8 and "8 problem(s)" in out


def test_missing_root_is_a_one_line_error(tmp_path: Path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err


def test_lists_that_would_read_elsewhere_or_are_not_text_are_one_line_errors(tiny_root: Path, capsys):
    """A list line with a folder part used to read a file outside the dataset; bytes that are not UTF-8 were a
    UnicodeDecodeError; a malformed slice id did not name its list or line."""
    val = (tiny_root / "val.list").read_text()
    (tiny_root / "val.list").write_text(val + "../../elsewhere/data/patient001_frame01\n")
    assert main(["data", "check", str(tiny_root)]) == 1  # one problem among the others, not the end of the check
    lineno = len(val.splitlines()) + 1
    captured = capsys.readouterr()
    assert (f"{tiny_root / 'val.list'}: line {lineno} '../../elsewhere/data/patient001_frame01' is not an id (ids are file names "
            "without a folder or control characters; fix the list)") in captured.out + captured.err
    (tiny_root / "val.list").write_text(val + "patient001\x1b[2Jframe01\n")  # an escape sequence (the security review)
    assert main(["data", "check", str(tiny_root)]) == 1
    captured = capsys.readouterr()
    assert "is not an id (ids are file names without a folder or control characters" in captured.out + captured.err
    assert "\x1b" not in captured.out + captured.err  # the escape is not printed raw
    (tiny_root / "test.list").write_text("=HYPERLINK(x)_frame01\n")  # a formula in every trial's per_case.csv (the security review)
    assert main(["data", "check", str(tiny_root)]) == 1
    captured = capsys.readouterr()
    assert ("line 1 '=HYPERLINK(x)_frame01' starts with '='; a spreadsheet opening a trial's per_case.csv would read the id as "
            "a formula: rename the case") in captured.out + captured.err
    (tiny_root / "val.list").write_text(val)
    train = (tiny_root / "train_slices.list").read_bytes()
    (tiny_root / "train_slices.list").write_bytes(train + b"garbage id\n")
    assert main(["data", "splits", str(tiny_root), "--labelled", "1"]) == 2
    assert f"train_slices.list: line {len(train.splitlines()) + 1} 'garbage id' is not a slice id" in capsys.readouterr().err
    (tiny_root / "train_slices.list").write_bytes(train + b"\xff\xfe\n")
    assert main(["data", "check", str(tiny_root)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tiny_root / 'train_slices.list'}: not UTF-8 text (invalid start byte at "
                                               f"byte {len(train)}); re-create it with the converter")


def test_num_classes_comes_from_the_manifest_and_is_capped(tmp_path: Path, capsys):
    """``check`` defaulted to 4 classes whatever the dataset recorded, and had no upper limit (10**12 hung)."""
    from medseg_platform.data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "ph", patients=3, size=32, seed=1)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["class_names"] = ["a", "b", "c", "d", "e"]  # a dataset with 6 classes whose labels use only 0..3
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "check", str(root)]) == 0
    assert f"dataset {root} (6 classes)" in capsys.readouterr().out
    assert main(["data", "check", str(root), "--num-classes", "1000000000000"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --num-classes 1000000000000: the number of classes must be from 2 (background "
                                               "and one structure) to 256 (labels are stored as uint8)")
    manifest["class_names"] = []
    manifest["source"]["num_classes"] = 1  # a count the manifest records is checked too, and the message names it
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "check", str(root)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {root / 'manifest.json'}: 1 classes: the number of classes must be")


def test_a_wrong_num_classes_prints_twenty_problems_and_counts_the_rest(tmp_path: Path, capsys):
    """One problem line per file (91 on the data probe's dataset) buried the summary."""
    from medseg_platform.data.check import PRINTED_PROBLEMS
    from medseg_platform.data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "ph", patients=5, size=32, seed=0)
    problems = check_dataset(root, 2).problems
    assert len(problems) > PRINTED_PROBLEMS == 20
    assert main(["data", "check", str(root), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == PRINTED_PROBLEMS + 1
    assert f"problem: ... and {len(problems) - 20} more ({len(problems)} in all; fix the ones above and check again)\n" in out
    assert f"{len(problems)} problem(s)" in out


def test_a_patient_in_two_splits_and_a_file_changed_after_writing_are_problems(tmp_path: Path, capsys):
    """Both passed as "OK": a test frame of a training patient leaks, and an edited file keeps the dataset's identity."""
    from medseg_platform.data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "ph", patients=5, size=32, seed=0)
    assert check_dataset(root).ok
    ds = AcdcLayout(root)
    test_case = ds.test_cases[0]
    with h5py.File(ds.volume_path(test_case), "r+") as fh:  # a label edited in place
        fh["label"][0, 0, 0] = 1 - fh["label"][0, 0, 0]
    report = check_dataset(root)
    assert len(report.problems) == 1 and report.problems[0].startswith(
        f"{root / 'manifest.json'}: 1 file(s) differ from the SHA-256 it records, e.g. data/{test_case}.h5")
    assert main(["data", "check", str(root)]) == 1 and "1 problem(s)" in capsys.readouterr().out
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["sha256"]  # what the message offers, to accept edits (lists edited by hand below)
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert check_dataset(root).ok
    other_frame = test_case[:-2] + ("02" if test_case.endswith("01") else "01")  # the same patient's other frame
    (root / "test.list").write_text("\n".join(c for c in ds.test_cases if c != other_frame) + "\n")
    (root / "val.list").write_text("\n".join([*ds.val_cases, other_frame]) + "\n")
    report = check_dataset(root)
    assert report.problems == [f"{root}: 1 patient(s) have cases in more than one split, e.g. {test_case.split('_')[0]} in "
                               "val and test (splits are by patient: the other frames of a training patient are not a "
                               "test of generalisation); fix the list files"]
    (root / "val.list").write_text("\n".join([*ds.val_cases, ds.test_cases[0]]) + "\n")  # one case in two splits
    assert [p for p in check_dataset(root).problems if "more than one split" in p] == [
        f"{root}: case(s) {[ds.test_cases[0]]} appear in more than one split (train/val/test must be disjoint)"]


def test_class_names_are_not_acdcs_when_the_manifest_disagrees_with_num_classes(tmp_path: Path):
    from medseg_platform.data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "ph", patients=5, size=32, seed=0)  # 4 classes, named
    report = check_dataset(root, num_classes=3)
    assert report.problems and report.class_names == ("class 1", "class 2")


def test_a_split_without_foreground_is_a_problem_and_an_absent_class_a_note(tmp_path: Path, capsys):
    """A val split whose labels are all background leaves validation Dice undefined: training used to select the first
    validated state silently (every val Dice NaN) and test it."""
    from medseg_platform.data import layout as layout_module
    from tests.conftest import make_tiny_dataset

    root = make_tiny_dataset(tmp_path / "tiny")
    layout = AcdcLayout(root)
    (case,) = layout.val_cases[:1]
    volume = layout.read_volume(case)
    label = volume.label.copy()
    label[label == 3] = 0  # LV absent from this val case: a note
    layout_module.write_case(root, case, volume.image, label, spacing=volume.spacing, with_slices=False)
    report = check_dataset(root)
    assert report.ok and report.notes == []  # the other val case still holds LV
    for other in layout.val_cases:
        volume = layout.read_volume(other)
        layout_module.write_case(root, other, volume.image, np.where(volume.label == 3, 0, volume.label).astype(np.uint8),
                                 spacing=volume.spacing, with_slices=False)
    report = check_dataset(root)
    assert report.ok and report.notes == ["split 'val' never holds LV: its Dice is undefined where nothing predicts it (left "
                                          "out of the val means) and 0 where something does"]
    assert main(["data", "check", str(root)]) == 0
    assert "note: split 'val' never holds LV" in capsys.readouterr().out
    for other in layout.val_cases:
        volume = layout.read_volume(other)
        layout_module.write_case(root, other, volume.image, np.zeros_like(volume.label), spacing=volume.spacing, with_slices=False)
    report = check_dataset(root)
    assert report.ok and report.notes == ["split 'val' has no foreground label in any of its files, so validation Dice "
                                          "cannot tell models apart (a trial that selects on val refuses to start) (check "
                                          "its label files and val.list)"]
    # such a trial stops before it trains: it used to select its first validated state silently (every val Dice NaN)
    results = tmp_path / "results"
    capsys.readouterr()
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root),
                 "--results-dir", str(results)]) == 1
    error = json.loads(next((results / "train-supervised-smoke" / "trials").iterdir()).joinpath("error.json").read_text())
    assert "no val case the trial validates on has a foreground label, so validation Dice cannot select a model" in error["error"]
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root), "--results-dir",
                 str(results), "--set", "eval.selection=final"]) == 0  # the final weights need no selection
    for slice_id in layout.train_slices:  # nothing to learn: a problem
        path = layout.slice_path(slice_id)
        with h5py.File(path, "r+") as fh:
            fh["label"][...] = 0
    problems = check_dataset(root).problems
    assert problems[-1] == (f"{root}: split 'train' has no foreground label in any of its files, so there is nothing to "
                            "learn (check its label files and train_slices.list)")


def test_empty_huge_and_badly_spaced_volumes_are_problems_before_any_read(tiny_root: Path, capsys):
    """The security audit: a volume of 0 slices, a 'spacing' attribute of text or NaN passed the check and the preflight
    and failed after training; a 1.6 KB file declaring 4000^3 floats ended in a 238 GiB allocation traceback."""
    ds = AcdcLayout(tiny_root)
    with h5py.File(ds.volume_path("patient005_frame01"), "w") as fh:  # an empty volume
        fh["image"] = np.zeros((0, 12, 10), np.float32)
        fh["label"] = np.zeros((0, 12, 10), np.uint8)
    with h5py.File(ds.volume_path("patient005_frame02"), "r+") as fh:
        fh.attrs["spacing"] = "abc"
    with h5py.File(ds.volume_path("patient006_frame01"), "r+") as fh:
        fh.attrs["spacing"] = np.array([np.nan, 1.0, 1.0])
    with h5py.File(ds.volume_path("patient006_frame02"), "w") as fh:  # declared, never written: the file stays small
        fh.create_dataset("image", shape=(4000, 4000, 4000), dtype=np.float32)
        fh.create_dataset("label", shape=(4000, 4000, 4000), dtype=np.uint8)
    assert ds.volume_path("patient006_frame02").stat().st_size < 10_000
    problems = check_dataset(tiny_root).problems
    assert len(problems) == 4, problems
    assert "patient005_frame01.h5: 'image' is empty (shape (0, 12, 10)); re-create the file from a scan with voxels" in problems[0]
    assert "patient005_frame02.h5: attribute 'spacing': expected 3 positive numbers (one per array axis), got 'abc'" in problems[1]
    assert "patient006_frame01.h5: attribute 'spacing': expected 3 positive numbers" in problems[2]
    assert ("patient006_frame02.h5: 'image' declares a 4000x4000x4000 array of 238.4 GiB, more than the 4 GiB an array of a "
            "dataset may hold") in problems[3]


def test_a_manifest_whose_cases_are_not_objects_or_spacings_not_numbers_is_a_one_line_error(tiny_root: Path):
    from medseg_platform.data.layout import read_manifest
    from medseg_platform.errors import DataError

    path = tiny_root / "manifest.json"
    for cases, message in (([], "'cases' must map each case id to an object"),
                           ({"patient005_frame01": {"spacing": [5, "x", 1]}}, r"cases\['patient005_frame01'\].spacing: expected 3 positive")):
        path.write_text(json.dumps({"cases": cases}))
        with pytest.raises(DataError, match=message):
            read_manifest(tiny_root)


def test_test_cases_with_and_without_a_spacing_are_refused_before_training_in_mm(tiny_root: Path):
    """A trial scored HD95 in mm where a test volume had a spacing and in voxels where it had none, averaged the two and
    labelled the table "mm" (the evaluation probe); `medseg evaluate` refused the same data. Now `data check` notes it
    (a trial in voxels uses the dataset as it is, so it is no problem of the data's), a trial in mm refuses it in its
    config check before any step, a --test-root is refused before training, and the evaluation itself refuses it."""
    from types import SimpleNamespace

    import torch

    from medseg_platform.config import TrialConfig
    from medseg_platform.engine.evaluate import evaluate_volumes
    from medseg_platform.errors import DataError
    from medseg_platform.preflight import preflight_datasets
    from medseg_platform.study.runner import check_test_root

    ds = AcdcLayout(tiny_root)
    assert check_dataset(tiny_root).ok and not ds.manifest  # every volume has a spacing attribute
    unspaced = ds.test_cases[1]
    with h5py.File(ds.volume_path(unspaced), "r+") as fh:
        del fh.attrs["spacing"]
    cases = len(ds.val_cases) + len(ds.test_cases)
    message = (f"{ds.root}: {cases - 1} of {cases} evaluated cases have a voxel spacing but 1 has none (e.g. {unspaced}), so "
               "HD95 and ASD in mm would average mm with voxels; add the missing spacing (the volume's 'spacing' attribute "
               "or the manifest's), or score in voxels (--set eval.distance_units=voxel)")
    report = check_dataset(tiny_root)
    assert report.ok and message in report.notes
    cfg = TrialConfig().replace(**{"data.root": str(tiny_root), "data.patch_size": (32, 32), "data.labelled": "2",
                                   "data.labelled_batch": 2, "data.unlabelled_batch": 2})
    voxel = cfg.replace(**{"eval.distance_units": "voxel"})
    cfg.validate(check_data=False)
    with pytest.raises(DataError, match=r"1 of 2 evaluated cases have a voxel spacing but 1 has none \(e.g. patient006_frame02\)"):
        cfg.validate()
    voxel.validate()
    preflight_datasets([(str(tiny_root), 4)], tiny_root.parent / "preflight", log=lambda m: None)  # a voxel trial's passes
    study = SimpleNamespace(test_root=str(tiny_root))
    with pytest.raises(DataError, match=r"--test-root .*1 of 2 evaluated cases have a voxel spacing"):
        check_test_root(study, [{"config": cfg.to_dict()}])
    assert check_test_root(study, [{"config": voxel.to_dict()}]) == [(str(tiny_root), 4)]
    model = torch.nn.Conv2d(1, 4, 1)
    volumes = (ds.read_volume(case) for case in ds.test_cases)  # streamed, as a --test-root passes them
    with pytest.raises(DataError, match=rf"1 of 2 evaluated cases have a voxel spacing but 1 has none \(e.g. {unspaced}\)"):
        evaluate_volumes(model, volumes, cfg, torch.device("cpu"))
    rows = evaluate_volumes(model, (ds.read_volume(case) for case in ds.test_cases), voxel, torch.device("cpu"))
    assert {row["case"] for row in rows} == set(ds.test_cases)


def test_a_malformed_list_line_is_one_problem_and_the_check_goes_on(tiny_root: Path, capsys):
    """A bad line in a list stopped `medseg data check` at once (exit 2), hiding every other problem (the data CLI
    review); it is now one problem among the others, and training's reader still refuses it."""
    import pytest

    from medseg_platform.errors import DataError

    ds = AcdcLayout(tiny_root)
    with h5py.File(ds.volume_path(ds.test_cases[0]), "r+") as fh:
        fh["image"][0, 0, 0] = np.nan
    with open(tiny_root / "val.list", "a", encoding="utf-8") as fh:
        fh.write("patient099_frame01/..\n")
    with open(tiny_root / "train_slices.list", "a", encoding="utf-8") as fh:
        fh.write("bogus\n")
    report = check_dataset(tiny_root)
    assert not report.ok
    assert any("val.list: line" in p and "'patient099_frame01/..' is not an id" in p for p in report.problems)
    assert any("'bogus' is not a slice id" in p for p in report.problems)
    assert any("NaN" in p or "nan" in p for p in report.problems)  # the other problems are still found
    assert main(["data", "check", str(tiny_root)]) == 1
    with pytest.raises(DataError, match="is not a slice id"):
        AcdcLayout(tiny_root)
