"""``medseg predict`` (:mod:`medseg_platform.predict`): a finished trial's selected weights on a dataset, files that
``medseg evaluate`` scores exactly as the trial scored its own test split; NIfTI on the source grid; bad input is
one ``error:`` line, exit 2. The trial is trained once per module, in-process, on the tiny dataset (seconds)."""

import csv
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from analysis.console import main
from medseg_platform.data.layout import AcdcLayout, write_manifest
from medseg_platform.errors import MedsegError
from tests.conftest import make_tiny_dataset

METRICS = ("dice", "jaccard", "hd95", "asd", "assd", "n_pred", "n_gt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, trial folder) of a supervised smoke trial on the tiny dataset, trained long enough to segment
    (its test Dice is far from 0, so equal values mean equal predictions)."""
    base = tmp_path_factory.mktemp("predict")
    root = make_tiny_dataset(base / "tiny")
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root), "--results-dir",
                 str(base / "results"), "--set", "optim.lr=0.1", "--set", "optim.max_steps=20", "--set", "eval.val_every=10"]) == 0
    (trial,) = (base / "results" / "train-supervised-smoke" / "trials").iterdir()
    return root, trial


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_predictions_are_what_the_trial_scored_and_medseg_evaluate_reads_them(trained, tmp_path, capsys):
    root, trial = trained
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote 2 prediction(s) of the test split to {out}; h5 only" in stdout
    # (the folder's .lock, held while a prediction writes there, is gone: medseg_platform.io.folder_lock)
    assert sorted(p.name for p in out.iterdir()) == ["patient006_frame01.h5", "patient006_frame02.h5", "prediction.json"]
    summary = json.loads((out / "prediction.json").read_text())
    result = json.loads((trial / "result.json").read_text())
    assert summary == {"trial": str(trial), "data_root": str(root), "split": "test", "cases": ["patient006_frame01", "patient006_frame02"],
                       "best_step": result["best_step"], "num_classes": 4, "class_names": ["RV", "Myo", "LV"], "nifti": [],
                       "distance_units": "mm", "empty_policy": "nan", "complete": True}
    with h5py.File(out / "patient006_frame01.h5") as fh:
        prediction = fh["pred"][()]
        assert prediction.dtype == np.uint8 and prediction.shape == (3, 12, 10)
        assert fh.attrs["spacing"].tolist() == [5.0, 1.5, 1.25]
    # the trial kept the middle slice of its test predictions: the same labels, pixel for pixel
    kept = np.load(trial / "qualitative.npz")
    assert list(kept["cases"]) == ["patient006_frame01", "patient006_frame02"]
    np.testing.assert_array_equal(prediction[int(kept["slices"][0])], kept["prediction_0"])

    assert main(["evaluate", "--pred", str(out), "--gt", str(root), "--quiet", "--out", str(tmp_path / "eval")]) == 0
    ours, trials = read_rows(tmp_path / "eval" / "per_case.csv"), read_rows(trial / "per_case.csv")
    assert [(r["case"], r["class"]) for r in ours] == [(r["case"], r["class"]) for r in trials]
    assert [[r[m] for m in METRICS] for r in ours] == [[r[m] for m in METRICS] for r in trials]
    assert 0.3 < result["test"]["mean"]["dice"] < 1.0  # a model that segments: the comparison above is not of empty maps


def test_split_all_predicts_every_case_in_list_order(trained, tmp_path, capsys):
    root, trial = trained
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(tmp_path / "all"), "--split", "all"]) == 0
    layout = AcdcLayout(root)
    expected = layout.train_cases + layout.val_cases + layout.test_cases
    assert json.loads((tmp_path / "all" / "prediction.json").read_text())["cases"] == expected
    assert sorted(p.stem for p in (tmp_path / "all").glob("*.h5")) == sorted(expected) and len(expected) == 12


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_cases_converted_from_nifti_get_a_nifti_on_the_source_grid(trained, tmp_path, capsys):
    _, trial = trained
    raw = tmp_path / "raw"
    rng = np.random.default_rng(3)
    # a rotated, shifted, anisotropic grid: what the prediction must keep
    affine = np.array([[0.0, -1.25, 0.0, 40.0], [1.5, 0.0, 0.0, -12.5], [0.0, 0.0, 5.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    for name in ("a", "b", "c", "d"):
        label = rng.integers(0, 4, size=(10, 12, 3)).astype(np.uint8)  # (X, Y, Z)
        save_nifti(raw / f"{name}.nii.gz", (label * 100 + rng.integers(0, 40, size=label.shape)).astype(np.int16), affine)
        save_nifti(raw / f"{name}_gt.nii.gz", label, affine)
    converted = tmp_path / "converted"
    assert main(["data", "convert-nifti", str(raw), str(converted), "--num-classes", "4", "--class-names", "RV,Myo,LV"]) == 0
    manifest = json.loads((converted / "manifest.json").read_text())
    assert all(np.array_equal(facts["affine"], affine) for facts in manifest["cases"].values())

    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    cases = AcdcLayout(converted).test_cases
    assert f"NIfTI with the source affine for {len(cases)} of them in {out / 'nifti'}" in capsys.readouterr().out
    for case in cases:
        image = nib.load(str(out / "nifti" / f"{case}.nii.gz"))
        with h5py.File(out / f"{case}.h5") as fh:
            prediction = fh["pred"][()]
        np.testing.assert_array_equal(image.affine, affine)
        assert image.header.get_xyzt_units()[0] == "mm"  # the manifest's affines are in mm (it used to say "unknown")
        assert image.shape == (10, 12, 3) and image.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(image.dataobj), prediction.transpose(2, 1, 0))
    before = {p.name: p.read_bytes() for p in (out / "nifti").iterdir()}
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "nifti").iterdir()} == before  # no timestamps in the gzip files
    # the NIfTI folder is scored like the h5 one (medseg evaluate flips NIfTI axes against an h5 ground truth)
    assert main(["evaluate", "--pred", str(out / "nifti"), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e1")]) == 0
    assert main(["evaluate", "--pred", str(out), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e2")]) == 0
    assert read_rows(tmp_path / "e1" / "per_case.csv") == read_rows(tmp_path / "e2" / "per_case.csv")
    # medseg evaluate's own folder beside the predictions: a rerun says its scores are of the predictions it replaced
    assert main(["evaluate", "--pred", str(out), "--gt", str(converted), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f"note: {out / 'evaluation'} holds the scores of the predictions this "
                                                        "run replaced; the command above scores these anew")
    # the val split's predictions beside them: each other case named and counted once, though an h5 and a NIfTI hold it
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out), "--split", "val"]) == 2
    shown = ", ".join(cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")
    assert one_line_error(capsys) == (f"error: --out {out}: already holds predictions of {len(cases)} other case(s) ({shown}), "
                                      "which medseg evaluate would score with these; use an empty folder, or delete them\n")


def test_a_unit_scale_sform_with_the_spacing_in_the_qform_gives_predictions_of_the_source_voxel_size(trained, tmp_path):
    """ACDC's released headers keep unit scales in the sform and the spacing in the qform; nibabel's affine is the
    sform, so predictions were written with 1 x 1 x 1 mm voxels that overlay nothing (a probe on ACDC-style files)."""
    _, trial = trained
    raw = tmp_path / "raw"
    raw.mkdir()
    spacing = (1.5625, 1.5625, 10.0)
    qform = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    qform[:3, 3] = (120.0, 90.0, -30.0)
    rng = np.random.default_rng(4)
    for name in ("a", "b", "c", "d"):
        label = rng.integers(0, 4, size=(10, 12, 3)).astype(np.uint8)
        for path, array in ((raw / f"{name}.nii.gz", (label * 100).astype(np.int16)), (raw / f"{name}_gt.nii.gz", label)):
            image = nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]))  # the unit-scale sform
            image.set_qform(qform, code=1)
            image.header.set_zooms(spacing)
            nib.save(image, str(path))
    converted = tmp_path / "converted"
    assert main(["data", "convert-nifti", str(raw), str(converted), "--num-classes", "4", "--class-names", "RV,Myo,LV"]) == 0
    manifest = json.loads((converted / "manifest.json").read_text())
    assert all(np.allclose(facts["affine"], qform) for facts in manifest["cases"].values())
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    for case in AcdcLayout(converted).test_cases:
        image = nib.load(str(out / "nifti" / f"{case}.nii.gz"))
        assert image.header.get_zooms() == pytest.approx(spacing) and np.allclose(image.affine, qform)
        assert int(image.header["qform_code"]) > 0 and np.allclose(image.header.get_qform(), qform)
    # a manifest written by earlier code kept the unit-scale sform: predict rescales it to the recorded spacing
    for facts in manifest["cases"].values():
        facts["affine"] = np.diag([-1.0, -1.0, 1.0, 1.0]).tolist()
    (converted / "manifest.json").write_text(json.dumps(manifest))
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(tmp_path / "old")]) == 0
    for case in AcdcLayout(converted).test_cases:
        image = nib.load(str(tmp_path / "old" / "nifti" / f"{case}.nii.gz"))
        assert image.header.get_zooms() == pytest.approx(spacing)
        assert np.allclose(image.affine[:3, :3], np.diag([-spacing[0], -spacing[1], spacing[2]]))


def test_an_unfinished_trial_is_a_one_line_error(trained, tmp_path, capsys):
    root, trial = trained
    unfinished = tmp_path / "trial"
    shutil.copytree(trial, unfinished)
    (unfinished / "result.json").unlink()
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(unfinished), "--data-root", str(root), "--out", str(out)]) == 2
    assert one_line_error(capsys) == (f"error: --trial {unfinished}: unfinished trial (no result.json); rerun its study command "
                                      "to finish it first\n")
    assert not out.exists()


def test_a_search_sample_asha_stopped_is_named_so(trained, tmp_path, capsys):
    """The HPO probe was told to rerun the study command to finish it, which never finishes a stopped sample."""
    root, trial = trained
    stopped = tmp_path / "search" / "trials" / "sample-key"
    shutil.copytree(trial, stopped)
    (stopped / "result.json").unlink()
    (tmp_path / "search" / "search_history.csv").write_text("order,trial_id,trial_key,status\n1,t1,sample-key,stopped early\n")
    assert main(["predict", "--trial", str(stopped), "--data-root", str(root), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys) == (f"error: --trial {stopped}: a search sample that ASHA stopped early (search_history.csv): "
                                      "it was never tested and a rerun does not finish it; give a completed sample "
                                      "(best_config.json names the best one's trial_key)\n")


def test_a_folder_that_is_no_trial_is_a_one_line_error(trained, tmp_path, capsys):
    root, trial = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--trial", str(empty), "--data-root", str(root), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys) == (f"error: --trial {empty}: not a trial folder (no config.json or result.json); give "
                                      "<results>/<study>/trials/<key>\n")
    study = trial.parent.parent
    assert main(["predict", "--trial", str(study), "--data-root", str(root), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys) == (f"error: --trial {study}: a study folder, not a trial; give one of its trials, "
                                      f"{study}/trials/<key>\n")
    assert not (tmp_path / "p").exists()
    # without --data-root a wrong --trial is named as such, not as a trial that records no dataset (the data walkthrough)
    assert main(["predict", "--trial", str(tmp_path / "nope"), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys).startswith(f"error: --trial {tmp_path / 'nope'}: no such folder")
    # the evaluation review: a file was called "no such folder", and a missing --data-root was not named as the flag
    assert main(["predict", "--trial", str(trial / "result.json"), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys).startswith(f"error: --trial {trial / 'result.json'}: a file, not a folder (give a trial ")
    assert main(["predict", "--trial", str(trial), "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys).startswith(f"error: --data-root: {tmp_path / 'nope'}: ")
    assert not (tmp_path / "p").exists()


def test_an_output_that_is_a_file_is_a_one_line_error(trained, tmp_path, capsys):
    root, trial = trained
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(afile)]) == 2
    assert one_line_error(capsys) == f"error: --out {afile}: is a file, not a folder; give a folder\n"
    assert afile.read_text() == "x"


def test_an_errored_trial_is_named_with_its_recorded_error(trained, tmp_path, capsys):
    root, trial = trained
    errored = tmp_path / "trial"
    shutil.copytree(trial, errored)
    (errored / "result.json").unlink()
    (errored / "error.json").write_text(json.dumps({"status": "error", "error": "non-finite loss at step 3\nmore detail"}))
    assert main(["predict", "--trial", str(errored), "--data-root", str(root), "--out", str(tmp_path / "p")]) == 2
    assert one_line_error(capsys) == (f"error: --trial {errored}: the trial errored (non-finite loss at step 3); fix the cause "
                                      "and rerun its study command\n")


def test_an_output_in_the_trial_or_holding_other_predictions_is_refused(trained, tmp_path, capsys):
    """medseg evaluate scores every prediction file of a folder: one holding other cases' files would score a mix."""
    root, trial = trained
    for inside in (trial, trial / "preds"):
        assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(inside)]) == 2
        assert one_line_error(capsys) == f"error: --out {inside}: inside the trial folder {trial}; write predictions somewhere else\n"
    assert not (trial / "preds").exists() and not (trial / "prediction.json").exists()
    out = tmp_path / "p"
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out), "--split", "val"]) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out)]) == 2
    assert one_line_error(capsys).startswith(f"error: --out {out}: already holds predictions of 2 other case(s) (patient005_frame01, "
                                             "patient005_frame02)")
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out), "--split", "val"]) == 0  # the same cases
    import fcntl

    with open(out / ".lock", "a+") as held:  # another medseg predict writing there (the security audit: two runs mixed)
        fcntl.flock(held, fcntl.LOCK_EX)
        capsys.readouterr()
        assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out), "--split", "val"]) == 2
        assert one_line_error(capsys).startswith(f"error: {out}: medseg predict is running there already")
    (out / ".lock").unlink()  # as the other run does when it ends
    assert sorted(p.name for p in out.iterdir()) == before


def test_the_suggested_evaluation_uses_the_trial_s_distance_units_and_empty_policy():
    from medseg_platform.predict import evaluate_command

    summary = {"data_root": "/d", "num_classes": 4, "distance_units": "voxel", "empty_policy": "released"}
    assert evaluate_command(Path("/p"), summary) == ("medseg evaluate --pred /p --gt /d --num-classes 4 --spacing-from none "
                                                     "--empty-policy released")
    assert evaluate_command(Path("/p"), {**summary, "distance_units": "mm", "empty_policy": "nan"}) == (
        "medseg evaluate --pred /p --gt /d --num-classes 4")


def test_a_trial_without_its_checkpoint_is_a_one_line_error(trained, tmp_path, capsys):
    root, trial = trained
    copy = tmp_path / "trial"
    shutil.copytree(trial, copy)
    shutil.rmtree(copy / "checkpoint")
    assert main(["predict", "--trial", str(copy), "--data-root", str(root), "--out", str(tmp_path / "pred")]) == 2
    retrain = f"to train it again, delete the folder {copy} and rerun the command that trained it"
    assert one_line_error(capsys) == (f"error: {copy / 'checkpoint' / 'checkpoint.pt'}: missing, so the trial's selected "
                                      f"weights are gone ({retrain})\n")
    # the security audit: a tensor, a truncated file and another network's weights were tracebacks, and an unreadable
    # checkpoint said "delete it", which loses the weights predict needs
    import torch

    (copy / "checkpoint").mkdir()
    whole = (trial / "checkpoint" / "checkpoint.pt").read_bytes()
    recorded = json.loads((trial / "result.json").read_text())
    selected = {"best_step": recorded["best_step"], "best_val_dice": recorded["best_val_dice"]}
    own_state = torch.load(trial / "checkpoint" / "checkpoint.pt", weights_only=True)["best_state"]
    for content, message in ((None, "not a checkpoint of this platform (a Tensor, not a dict of states); the trial's selected "
                                    f"weights are in it: restore it from a copy, or {retrain}"),
                             (b"truncated", "unreadable checkpoint ("),
                             (whole[:50_000], "unreadable checkpoint ("),  # an OSError in torch.load: a traceback before
                             ({"best_state": {"nope": torch.zeros(1)}, **selected},
                              "its selected weights do not fit the trial's network ("),
                             # evalrev: another trial's checkpoint that selected the same step was taken for this one's
                             ({"best_state": own_state, **selected, "best_val_dice": recorded["best_val_dice"] + 0.25},
                              f"selected val Dice {recorded['best_val_dice'] + 0.25} but result.json records "
                              f"{recorded['best_val_dice']} (the checkpoint is not this finished trial's; {retrain})")):
        if isinstance(content, bytes):
            (copy / "checkpoint" / "checkpoint.pt").write_bytes(content)
        else:
            torch.save(torch.zeros(2) if content is None else content, copy / "checkpoint" / "checkpoint.pt")
        assert main(["predict", "--trial", str(copy), "--data-root", str(root), "--out", str(tmp_path / "pred")]) == 2
        error = one_line_error(capsys)
        assert error.startswith(f"error: {copy / 'checkpoint' / 'checkpoint.pt'}: {message}") and "delete it" not in error, error


@pytest.mark.parametrize("names, message", [
    (("Liver", "Kidney", "Spleen"),
     "class names Liver, Kidney, Spleen differ from RV, Myo, LV of trial {key} (labels must mean the same classes; if only "
     "the names differ, convert it again with --class-names)"),
    (("Liver", "Kidney"),
     "a dataset of 3 classes, but trial {key} has 4 classes (RV, Myo, LV and background) (use a dataset labelled with the "
     "same classes)"),
])
def test_a_dataset_with_other_classes_is_a_one_line_error(trained, tmp_path, capsys, names, message):
    _, trial = trained
    other = make_tiny_dataset(tmp_path / "other", seed=1)
    write_manifest(other, {"converter": "a test"}, {}, names)
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--data-root", str(other), "--out", str(out)]) == 2
    assert one_line_error(capsys) == f"error: --data-root {other}: {message.format(key=trial.name)}\n"
    assert not out.exists()


def test_a_missing_volume_is_a_one_line_error_before_any_prediction(trained, tmp_path, capsys):
    """It used to predict the cases before it, then fail, leaving a folder without prediction.json."""
    import shutil

    root, trial = trained
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    last = (copy / "test.list").read_text().split()[-1]
    (copy / "data" / f"{last}.h5").unlink()
    out = tmp_path / "preds"
    assert main(["predict", "--trial", str(trial), "--data-root", str(copy), "--out", str(out)]) == 2
    assert one_line_error(capsys).startswith(f"error: --data-root {copy}: 1 of the test split's ")
    assert not out.exists()


def test_an_unreadable_or_non_finite_volume_is_named_before_any_prediction(trained, tmp_path, capsys):
    """The evaluation review: a NaN voxel failed with "predict_volume: image must be finite numbers" naming no file,
    and a junk file after the first case's prediction; both left a partial folder."""
    import shutil

    import h5py

    root, trial = trained
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    first, *_, last = (copy / "test.list").read_text().split()
    with h5py.File(copy / "data" / f"{first}.h5", "r+") as fh:
        image = fh["image"][()]
        image[0, 0, 0] = np.nan
        fh["image"][...] = image
    (copy / "data" / f"{last}.h5").write_bytes(b"not an h5 file")
    out = tmp_path / "preds"
    assert main(["predict", "--trial", str(trial), "--data-root", str(copy), "--out", str(out)]) == 2
    error = one_line_error(capsys)
    assert error.startswith(f"error: --data-root {copy}: 2 of the test split's ") and "cannot be predicted, e.g. " in error
    assert f"{copy / 'data' / (first + '.h5')}: 'image' holds NaN/inf" in error
    assert not out.exists()


# ------------------------------------------------------------------------------------------ --images
def raw_scans(folder: Path, names=("a", "b", "c", "d"), seed: int = 5) -> np.ndarray:
    """NIfTI scans with labels beside them (``<name>_gt``) in ``folder`` on a rotated, anisotropic grid; returns the
    affine."""
    rng = np.random.default_rng(seed)
    affine = np.array([[0.0, -1.25, 0.0, 40.0], [1.5, 0.0, 0.0, -12.5], [0.0, 0.0, 5.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    for name in names:
        label = rng.integers(0, 4, size=(10, 12, 3)).astype(np.uint8)  # (X, Y, Z)
        save_nifti(folder / f"{name}.nii.gz", (label * 100 + rng.integers(0, 40, size=label.shape)).astype(np.int16), affine)
        save_nifti(folder / f"{name}_gt.nii.gz", label, affine)
    return affine


def test_scans_never_converted_are_predicted_as_their_converted_copies(trained, tmp_path, capsys):
    """--images preprocesses as the converters do: each scan's prediction equals its converted copy's, byte for byte, and
    the suggested evaluation against the labels beside the scans scores what the converted dataset's would."""
    _, trial = trained
    raw = tmp_path / "raw"
    affine = raw_scans(raw)
    converted = tmp_path / "converted"
    assert main(["data", "convert-nifti", str(raw), str(converted), "--num-classes", "4", "--class-names", "RV,Myo,LV"]) == 0
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(tmp_path / "via"), "--split", "all"]) == 0
    save_nifti(raw / "cine_4d.nii.gz", np.zeros((10, 12, 3, 2), dtype=np.int16), affine)  # a time series: left out
    capsys.readouterr()

    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{raw}: left out 4 label or prediction file(s) (names ending in _gt or _pred)" in captured.err
    assert f"{raw}: left out 1 4-D file(s), e.g. cine_4d.nii.gz (give its 3-D frames)" in captured.err
    assert "[4/4] d (d.nii.gz, 3x12x10)" in captured.err
    assert f"wrote 4 prediction(s) to {out}, NIfTI on each scan's grid in {out / 'nifti'}" in captured.out
    evaluate = f"medseg evaluate --pred {out} --gt {raw} --num-classes 4"
    assert f"score them against the label files beside the scans: {evaluate}" in captured.out
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["cases"] == ["a", "b", "c", "d"] and summary["images"]["a"] == str(raw / "a.nii.gz")
    for case in "abcd":
        with h5py.File(out / f"{case}.h5") as ours, h5py.File(tmp_path / "via" / f"{case}.h5") as theirs:
            np.testing.assert_array_equal(ours["pred"][()], theirs["pred"][()])
            assert ours.attrs["spacing"].tolist() == theirs.attrs["spacing"].tolist() == [5.0, 1.25, 1.5]
        ours, theirs = nib.load(str(out / "nifti" / f"{case}.nii.gz")), nib.load(str(tmp_path / "via" / "nifti" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
        np.testing.assert_array_equal(ours.affine, affine)
        scan = nib.load(str(raw / f"{case}.nii.gz"))  # the scan's own header: both transforms with their codes
        assert ours.get_data_dtype() == np.uint8 and ours.shape == scan.shape
        for get in ("get_qform", "get_sform"):
            transform, code = getattr(ours.header, get)(coded=True)
            source, source_code = getattr(scan.header, get)(coded=True)
            assert int(code) == int(source_code) and (transform is None) == (source is None)
            if transform is not None:
                np.testing.assert_array_equal(transform, source)
    capsys.readouterr()
    assert main(evaluate.split()[1:] + ["--quiet", "--out", str(tmp_path / "e1")]) == 0
    assert "no prediction" not in capsys.readouterr().err  # the 4-D cine beside the labels is no ground-truth case
    without = ["evaluate", "--pred", str(out), "--gt", str(raw), "--quiet", "--out", str(tmp_path / "e0")]
    assert main(without) == 0  # the class count from prediction.json, not ACDC's 4 by default
    assert read_rows(tmp_path / "e0" / "per_case.csv") == read_rows(tmp_path / "e1" / "per_case.csv")
    five = tmp_path / "five"
    shutil.copytree(out, five, ignore=shutil.ignore_patterns("evaluation"))
    (five / "prediction.json").write_text(json.dumps({**json.loads((five / "prediction.json").read_text()), "num_classes": 5}))
    assert main(["evaluate", "--pred", str(five), "--gt", str(raw), "--quiet", "--out", str(tmp_path / "e5")]) == 0
    assert {r["class"] for r in read_rows(tmp_path / "e5" / "per_case.csv")} == {"1", "2", "3", "4"}
    assert main(["evaluate", "--pred", str(tmp_path / "via"), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e2")]) == 0
    assert read_rows(tmp_path / "e1" / "per_case.csv") == read_rows(tmp_path / "e2" / "per_case.csv")
    # the own-data review: a trial's predictions of other classes than the dataset's scored unwarned under its names
    renamed = tmp_path / "renamed"
    shutil.copytree(tmp_path / "via", renamed, ignore=shutil.ignore_patterns("evaluation"))
    record = json.loads((renamed / "prediction.json").read_text())
    assert record["class_names"] == ["RV", "Myo", "LV"]
    (renamed / "prediction.json").write_text(json.dumps({**record, "class_names": ["LV", "Myo", "RV"]}))
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(renamed), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e3")]) == 2
    assert (f"error: --gt {converted}: class names RV, Myo, LV differ from LV, Myo, RV of the predictions "
            f"({renamed / 'prediction.json'}, the trial's)") in capsys.readouterr().err
    assert not (tmp_path / "e3").exists()
    # names that differ by surrounding spaces only are the same names to training and medseg predict (the diff review)
    (renamed / "prediction.json").write_text(json.dumps({**record, "class_names": [" RV", "Myo", "LV "]}))
    assert main(["evaluate", "--pred", str(renamed), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e4")]) == 0
    # files named one by one are predicted the same; without labels beside them no evaluation is suggested
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(raw / "b.nii.gz", alone / "b.nii.gz")
    assert main(["predict", "--trial", str(trial), "--images", str(alone / "b.nii.gz"), str(raw / "a.nii.gz"),
                 "--out", str(tmp_path / "two")]) == 0
    assert "score them" not in capsys.readouterr().out
    assert json.loads((tmp_path / "two" / "prediction.json").read_text())["cases"] == ["b", "a"]
    assert (tmp_path / "two" / "b.h5").read_bytes() == (out / "b.h5").read_bytes()
    assert (tmp_path / "two" / "nifti" / "b.nii.gz").read_bytes() == (out / "nifti" / "b.nii.gz").read_bytes()  # no time in it


@pytest.mark.parametrize("images, extra, message", [
    (["{raw}/missing.nii.gz"], [], "--images {raw}/missing.nii.gz: no such file or folder"),
    (["{raw}/notes.txt"], [], "--images {raw}/notes.txt: not a NIfTI file name (expected .nii or .nii.gz)"),
    (["{raw}/labels"], [], "--images {raw}/labels: no NIfTI image (.nii or .nii.gz) directly in this folder; left out 1 label "
                          "or prediction file(s) (names ending in _gt or _pred) (give the files, or the folder that holds them)"),
    (["{raw}/a.nii.gz", "{raw}/copy"], [], "--images: {raw}/a.nii.gz and {raw}/copy/a.nii are both case 'a' (predictions are "
                                        "named by case; give them in separate runs)"),
    (["{raw}/copy"], ["--split", "val"], "--split: chooses cases of --data-root; with --images every scan given is predicted (drop "
                                    "--split)"),
    (["{raw}/broken.nii.gz"], [], "{raw}/broken.nii.gz: unreadable NIfTI file"),
])
def test_bad_images_are_one_line_errors_before_any_prediction(trained, tmp_path, capsys, images, extra, message):
    _, trial = trained
    raw = tmp_path / "raw"
    raw_scans(raw, names=("a",))
    (raw / "notes.txt").write_text("x")
    raw_scans(raw / "labels", names=("z",))
    for path in (raw / "labels").glob("z.*"):
        path.unlink()  # only its label is left
    scan = nib.load(str(raw / "a.nii.gz"))
    save_nifti(raw / "copy" / "a.nii", np.asarray(scan.dataobj), scan.affine)  # the same case, uncompressed elsewhere
    (raw / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--images", *[i.format(raw=raw) for i in images], "--out", str(out), *extra]) == 2
    assert one_line_error(capsys).startswith("error: " + message.format(raw=raw))
    assert not out.exists()


def test_predictions_into_the_scans_folder_are_refused(trained, tmp_path, capsys):
    _, trial = trained
    raw = tmp_path / "raw"
    raw_scans(raw, names=("a",))
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--out", str(raw)]) == 2
    assert one_line_error(capsys) == f"error: --out {raw}: the folder of the scans, or one they lie in; write predictions somewhere else\n"
    assert sorted(p.name for p in raw.iterdir()) == ["a.nii.gz", "a_gt.nii.gz"]
    # one folder above the scans: `medseg evaluate --gt` there would read the predictions as the labels (the review)
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--out", str(tmp_path)]) == 2
    assert one_line_error(capsys).startswith(f"error: --out {tmp_path}: the folder of the scans, or one they lie in")


def test_a_linked_scan_is_named_as_given_not_as_its_target(trained, tmp_path):
    """git-annex and DVC checkouts link each scan to a hash-named file: the case was named after the target."""
    _, trial = trained
    store, links = tmp_path / "store", tmp_path / "links"
    raw_scans(store, names=("3f9a0c",))
    links.mkdir()
    (links / "patientA.nii.gz").symlink_to(store / "3f9a0c.nii.gz")
    (links / "patientA_gt.nii.gz").symlink_to(store / "3f9a0c_gt.nii.gz")
    for given in (links, links / "patientA.nii.gz"):
        out = tmp_path / f"p-{given.name}"
        assert main(["predict", "--trial", str(trial), "--images", str(given), "--out", str(out)]) == 0
        summary = json.loads((out / "prediction.json").read_text())
        assert summary["cases"] == ["patientA"] and summary["images"]["patientA"] == str(links / "patientA.nii.gz")


def test_scans_of_the_raw_acdc_release_are_scored_against_its_training_folder(trained, tmp_path, capsys):
    """ACDC keeps each patient's frames, their _gt labels and a 4-D cine in training/patientNNN/: predicting the patient
    folders suggests the evaluation against training/, which reads it one level down."""
    _, trial = trained
    training = tmp_path / "training"
    for seed, patient in enumerate(("patient001", "patient002")):
        affine = raw_scans(training / patient, names=(f"{patient}_frame01", f"{patient}_frame12"), seed=seed)
        save_nifti(training / patient / f"{patient}_4d.nii.gz", np.zeros((10, 12, 3, 2), dtype=np.int16), affine)
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--images", str(training / "patient001"), str(training / "patient002"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("left out 1 4-D file(s)") == 2
    assert json.loads((out / "prediction.json").read_text())["cases"] == [
        "patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame12"]
    evaluate = f"medseg evaluate --pred {out} --gt {training} --num-classes 4"
    assert f"score them against the label files beside the scans: {evaluate}" in captured.out
    assert main(evaluate.split()[1:] + ["--quiet", "--out", str(tmp_path / "e")]) == 0
    assert len(read_rows(tmp_path / "e" / "per_case.csv")) == 4 * 3
    assert "have no prediction" not in capsys.readouterr().err


def test_a_scan_header_is_kept_whatever_its_transforms_say(trained, tmp_path):
    """The data-flow probe: a scan whose qform and sform disagree, or that records no orientation, got a prediction with
    one chosen affine in both transforms (code 2), which ITK-based viewers place elsewhere than the scan."""
    _, trial = trained
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(6)
    data = (rng.integers(0, 4, size=(10, 12, 3)) * 100).astype(np.int16)
    qform = np.diag([1.5, 1.25, 5.0, 1.0])
    sform = qform.copy()
    sform[:3, 3] = (30.0, -10.0, 4.0)  # 30 mm away from the qform
    both = nib.Nifti1Image(data, sform)
    both.set_qform(qform, code=1)
    both.set_sform(sform, code=2)
    nib.save(both, str(raw / "both.nii.gz"))
    bare = nib.Nifti1Image(data, np.eye(4))
    bare.set_qform(None, code=0)
    bare.set_sform(None, code=0)
    nib.save(bare, str(raw / "bare.nii"))
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--out", str(tmp_path / "p")]) == 0
    for name, source in (("both", raw / "both.nii.gz"), ("bare", raw / "bare.nii")):
        ours, scan = nib.load(str(tmp_path / "p" / "nifti" / f"{name}.nii.gz")), nib.load(str(source))
        for get in ("get_qform", "get_sform"):
            (transform, code), (expected, expected_code) = getattr(ours.header, get)(coded=True), getattr(scan.header, get)(coded=True)
            assert int(code) == int(expected_code)
            assert (transform is None and expected is None) or np.array_equal(transform, expected)
        np.testing.assert_array_equal(ours.header.get_zooms(), scan.header.get_zooms())


def test_predictions_never_replace_a_scan_or_a_file_no_earlier_prediction_wrote(trained, tmp_path, capsys):
    """The data-flow probe lost its scans: kept in <project>/nifti, they were replaced by their predictions with
    --out <project>, in both modes."""
    root, trial = trained
    project = tmp_path / "project"
    raw_scans(project / "nifti", names=("a",))
    before = (project / "nifti" / "a.nii.gz").read_bytes()
    assert main(["predict", "--trial", str(trial), "--images", str(project / "nifti"), "--out", str(project)]) == 2
    assert one_line_error(capsys) == f"error: --out {project}: the folder of the scans, or one they lie in; write predictions somewhere else\n"
    from medseg_platform.predict import check_own_outputs  # the same guard, for outputs that are inputs in any folder

    with pytest.raises(MedsegError, match="would replace the scan it is made from"):
        check_own_outputs(project, [("a", project / "nifti" / "a.nii.gz")], [project / "nifti" / "a.nii.gz"])
    # a case id with a dot (an SSL4MIS list may name one) is an earlier prediction's when prediction.json lists it
    dotted = tmp_path / "dotted"
    (dotted / "nifti").mkdir(parents=True)
    (dotted / "patient006.frame01.h5").write_bytes(b"x")
    (dotted / "nifti" / "patient006.frame01.nii.gz").write_bytes(b"x")
    (dotted / "prediction.json").write_text(json.dumps({"cases": ["patient006.frame01"], "nifti": []}))
    check_own_outputs(dotted, [("patient006.frame01", dotted / "patient006.frame01.h5")])
    with pytest.raises(MedsegError, match="does not list it for patient006.frame01"):  # that run wrote no NIfTI of it
        check_own_outputs(dotted, [("patient006.frame01", dotted / "nifti" / "patient006.frame01.nii.gz")])
    converted = tmp_path / "converted"
    raw_scans(tmp_path / "raw", names=("p1", "p2", "p3", "p4"))
    assert main(["data", "convert-nifti", str(tmp_path / "raw"), str(converted), "--num-classes", "4", "--class-names", "RV,Myo,LV"]) == 0
    assert (project / "nifti" / "a.nii.gz").read_bytes() == before and not (project / "prediction.json").exists()
    (project / "nifti" / "a.nii.gz").unlink()
    case = AcdcLayout(converted).test_cases[0]
    shutil.copy(tmp_path / "raw" / f"{case}.nii.gz", project / "nifti" / f"{case}.nii.gz")  # a scan of the dataset kept there
    before = (project / "nifti" / f"{case}.nii.gz").read_bytes()
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(project)]) == 2
    assert one_line_error(capsys).startswith(f"error: --out {project}: {project / 'nifti' / (case + '.nii.gz')} exists and is not a "
                                             f"prediction of an earlier medseg predict here (its prediction.json does not list it for {case})")
    assert (project / "nifti" / f"{case}.nii.gz").read_bytes() == before and not (project / "prediction.json").exists()
    # an earlier prediction's own files are replaced, also after a run that stopped half-way (prediction.json comes first)
    out = tmp_path / "out"
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    summary = json.loads((out / "prediction.json").read_text())
    (out / "prediction.json").write_text(json.dumps({**summary, "complete": False}))
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--gt", str(converted), "--quiet", "--out", str(tmp_path / "e")]) == 0
    assert (f"warning: {out / 'prediction.json'}: the medseg predict run that wrote this folder did not finish, so some of its "
            "files may be an earlier run's" in capsys.readouterr().err)  # the review: a mixed folder was scored silently
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    assert json.loads((out / "prediction.json").read_text())["complete"] is True


def test_labels_named_otherwise_and_bad_voxels(trained, tmp_path, capsys):
    _, trial = trained
    raw = tmp_path / "raw"
    raw_scans(raw, names=("a", "b"))
    for name in ("a", "b"):  # labels named <image>_seg
        (raw / f"{name}_gt.nii.gz").rename(raw / f"{name}_seg.nii.gz")
    # without --label-suffix the labels are predicted as scans: a note says so and names the flag (the data walkthrough)
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "prediction.json").read_text())["cases"] == ["a", "a_seg", "b", "b_seg"]
    assert (f"{raw}: 2 file(s) are named as another plus '_seg' (e.g. a_seg.nii.gz beside a.nii.gz) and are predicted as "
            "scans; if they are labels, rerun with --label-suffix _seg") in capsys.readouterr().err
    assert main(["predict", "--trial", str(trial), "--images", str(raw), "--label-suffix", "_seg", "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "prediction.json").read_text())["cases"] == ["a", "b"]
    captured = capsys.readouterr()
    assert "are named as another plus" not in captured.err
    command = captured.out.split("score them against the label files beside the scans: ")[1].splitlines()[0]
    assert command.endswith(f"--gt {raw} --num-classes 4 --label-suffix _seg"), command  # evaluate reads them too
    assert main(command.split()[1:]) == 0, capsys.readouterr().err
    assert len(read_rows(tmp_path / "p" / "evaluation" / "per_case.csv")) == 2 * 3
    capsys.readouterr()
    assert main(["predict", "--trial", str(trial), "--images", str(raw / "a_seg.nii.gz"), "--label-suffix", "_seg",
                 "--out", str(tmp_path / "q")]) == 2
    assert one_line_error(capsys).startswith(f"error: --images {raw / 'a_seg.nii.gz'}: a label or prediction file by its name")
    # a constant scan after a good one: nothing is written (it used to leave the first prediction and no prediction.json)
    save_nifti(raw / "flat.nii.gz", np.zeros((10, 12, 3), dtype=np.int16), np.eye(4))
    out = tmp_path / "r"
    assert main(["predict", "--trial", str(trial), "--images", str(raw / "a.nii.gz"), str(raw / "flat.nii.gz"), "--out", str(out)]) == 2
    assert "image is constant" in one_line_error(capsys) and not out.exists()
    # a folder of patient folders: the error names them
    assert main(["predict", "--trial", str(trial), "--images", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "its subfolders raw hold some: give them, e.g. --images" in one_line_error(capsys)


def test_a_prediction_does_not_carry_the_scan_s_display_window_intent_or_extensions(trained, tmp_path):
    """The second review: cal_min/cal_max of a scan (a display window) shows labels 0-3 as black; a statistic intent
    makes FSL/AFNI-style tools read the labels as z scores; an extension describes the scan's bricks."""
    _, trial = trained
    raw = tmp_path / "raw"
    raw_scans(raw, names=("a",))
    scan = nib.load(str(raw / "a.nii.gz"))
    header = scan.header.copy()
    header["cal_min"], header["cal_max"] = 0, 4000
    header.set_intent("z score")
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"scanner notes"))
    nib.save(nib.Nifti1Image(np.asarray(scan.dataobj), None, header=header), str(raw / "a.nii.gz"))
    (raw / "._a.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork beside it: not a scan
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "elsewhere" / ".." / "p"  # '..' is removed from the recorded paths, links are not followed
    assert main(["predict", "--trial", str(trial), "--images", str(tmp_path / "elsewhere" / ".." / "raw"), "--out", str(out)]) == 0
    prediction = nib.load(str(tmp_path / "p" / "nifti" / "a.nii.gz"))
    assert (float(prediction.header["cal_min"]), float(prediction.header["cal_max"])) == (0.0, 0.0)
    assert prediction.header.get_intent()[0] == "label" and len(prediction.header.extensions) == 0
    assert prediction.get_data_dtype() == np.uint8 and np.array_equal(prediction.affine, scan.affine)
    assert json.loads((tmp_path / "p" / "prediction.json").read_text())["images"] == {"a": str(raw / "a.nii.gz")}


def test_an_empty_label_suffix_is_refused(trained, tmp_path, capsys):
    _, trial = trained
    with pytest.raises(SystemExit):
        main(["predict", "--trial", str(trial), "--images", str(tmp_path), "--label-suffix", " ", "--out", str(tmp_path / "p")])
    assert "give the ending of the label files' names, e.g. _seg" in capsys.readouterr().err


def test_predictions_of_another_trial_in_out_are_replaced_with_a_note(trained, tmp_path, capsys):
    """Another trial's predictions of the same cases were replaced without a word (the workflow probe)."""
    root, trial = trained
    other = tmp_path / "other-trial"
    shutil.copytree(trial, other)
    out = tmp_path / "p"
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out)]) == 0
    assert "holds predictions of trial" not in capsys.readouterr().err
    assert main(["predict", "--trial", str(other), "--data-root", str(root), "--out", str(out)]) == 0
    assert (f"note: {out} holds predictions of trial {trial}; those of these cases are replaced by trial other-trial's"
            in capsys.readouterr().err)


def test_a_trial_of_the_earlier_transposed_unet_is_predicted_with_its_own_network(trained, tmp_path):
    """Trials trained before 2026-12-06 used transposed-convolution up-paths, and their configs do not name
    ``model.upsample``: predict builds the network their weights are of (it refused them as another trial's)."""
    import torch

    from medseg_platform.config import TrialConfig
    from medseg_platform.engine import load_selected_model
    from methods.unet import UNet

    _, trial = trained
    config = json.loads((trial / "result.json").read_text())["config"]
    config["model"].pop("upsample", None)  # as written before the field existed
    cfg = TrialConfig.from_dict(config)
    assert cfg.model.upsample == "bilinear"
    copy = tmp_path / "trial"
    shutil.copytree(trial, copy)
    path = copy / "checkpoint" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    old = UNet(num_classes=cfg.data.num_classes, channels=tuple(cfg.model.channels), upsample="transposed")
    state["best_state"] = old.state_dict()
    torch.save(state, path)
    model = load_selected_model(cfg, copy, torch.device("cpu"))
    assert model.upsample == "transposed"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values()))


def test_without_data_root_the_trial_s_own_dataset_is_predicted(trained, tmp_path, capsys):
    """The walkthrough: a phantom trial needed its cache path typed out, though its config.json records it. Without
    --data-root the trial's data.root is used (and named); a trial whose dataset is gone is a one-line error."""
    root, trial = trained
    out = tmp_path / "own"
    assert main(["predict", "--trial", str(trial), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"--data-root: the trial's own dataset, {root}" in captured.err
    assert json.loads((out / "prediction.json").read_text())["data_root"] == str(root)
    moved = tmp_path / "moved"
    shutil.copytree(trial, moved)
    config = json.loads((moved / "config.json").read_text())
    config["config"]["data"]["root"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--trial", str(moved), "--out", str(tmp_path / "none")]) == 2
    assert "is not there any more; pass --data-root ROOT" in one_line_error(capsys)
    assert not (tmp_path / "none").exists()


def test_a_stopped_prediction_says_whether_its_folder_is_unfinished(trained, tmp_path, capsys, monkeypatch):
    """The data walkthrough: a killed medseg predict exited 143 without a word; now a stop (Ctrl-C, or SIGTERM taken as
    one) exits 130 and says whether the folder holds an unfinished prediction."""
    import medseg_platform.predict as predict

    root, trial = trained
    out = tmp_path / "p"

    def stopped(trial_dir, data_root, out_dir, split, log):
        if split == "val":  # stopped after the folder was marked unfinished
            Path(out_dir).mkdir()
            (Path(out_dir) / predict.PREDICTION_FILE).write_text(json.dumps({"complete": False}))
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_trial", stopped)
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"stopped by a signal: no prediction was written to {out}; "
                                                                "rerun the same command to predict")
    assert main(["predict", "--trial", str(trial), "--data-root", str(root), "--out", str(out), "--split", "val"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"stopped by a signal: {out} is unfinished (prediction.json "
                                                                "says so; medseg evaluate warns); rerun the same command to predict")


def test_a_source_without_orientation_gets_a_prediction_without_orientation(trained, tmp_path):
    """With qform and sform codes 0, nibabel makes up an affine (x negated, origin at the centre) that NIfTI readers do
    not use; the converter recorded it as the source's and predict wrote it with code 2, so the prediction landed
    mirrored and shifted against the scan (the converter review). Now the manifest says `oriented: false` with the
    voxel sizes' diagonal, and the prediction is written as the source is: codes 0, the source's voxel sizes."""
    _, trial = trained
    raw = tmp_path / "raw"
    rng = np.random.default_rng(8)
    for name in ("a", "b", "c", "d"):
        label = rng.integers(0, 4, size=(10, 12, 3)).astype(np.uint8)
        for path, array in ((raw / f"{name}.nii.gz", (label * 100).astype(np.int16)), (raw / f"{name}_gt.nii.gz", label)):
            image = nib.Nifti1Image(array, None)  # no affine: both codes 0
            image.header.set_zooms((1.5, 1.25, 8.0))
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, str(path))
            assert int(nib.load(str(path)).header["qform_code"]) == int(nib.load(str(path)).header["sform_code"]) == 0
    converted = tmp_path / "converted"
    assert main(["data", "convert-nifti", str(raw), str(converted), "--num-classes", "4", "--class-names", "RV,Myo,LV"]) == 0
    manifest = json.loads((converted / "manifest.json").read_text())
    for facts in manifest["cases"].values():
        assert facts["oriented"] is False and facts["affine"] == np.diag([1.5, 1.25, 8.0, 1.0]).tolist()
    out = tmp_path / "pred"
    assert main(["predict", "--trial", str(trial), "--data-root", str(converted), "--out", str(out)]) == 0
    for case in AcdcLayout(converted).test_cases:
        image = nib.load(str(out / "nifti" / f"{case}.nii.gz"))
        source = nib.load(str(raw / f"{case}.nii.gz"))
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 0
        assert image.header.get_zooms() == pytest.approx((1.5, 1.25, 8.0))
        np.testing.assert_allclose(image.affine, source.affine)  # nibabel's made-up affine of both: the same grid
        assert image.shape == source.shape


def test_a_malformed_affine_in_the_manifest_is_refused_before_any_prediction(trained, tmp_path, capsys):
    """A manifest affine of the wrong shape passed `data check` and failed in predict with a ValueError traceback after
    the first cases' h5 files were written (the converter review)."""
    root, trial = trained
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    case = AcdcLayout(copy).test_cases[0]
    for affine, oriented in (([[1, 0, 0], [0, 1, 0]], True), (np.diag([1.0, 0.0, 1.0, 1.0]).tolist(), True),
                             (np.eye(4).tolist(), "no")):
        (copy / "manifest.json").write_text(json.dumps({"cases": {case: {"patient": case.split("_")[0], "affine": affine,
                                                                         "oriented": oriented}}}))
        out = tmp_path / "out"
        assert main(["predict", "--trial", str(trial), "--data-root", str(copy), "--out", str(out)]) == 2
        message = one_line_error(capsys)
        assert f"cases['{case}']." in message and "re-create the manifest with the converter" in message, message
        assert not out.exists()
        assert main(["data", "check", str(copy)]) != 0
        capsys.readouterr()
