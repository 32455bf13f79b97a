"""``medseg evaluate`` in-process: files written, values, naming rules, axis order, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as mb

from analysis.console import main
from medseg_platform.evaluation.metrics import evaluate_case

TEST_CASES = ("patient006_frame01", "patient006_frame02")
SPACING = (5.0, 1.5, 1.25)  # what conftest.make_tiny_dataset writes


def gt_label(root: Path, case: str) -> np.ndarray:
    with h5py.File(root / "data" / f"{case}.h5", "r") as fh:
        return fh["label"][()]


def perturbed(label: np.ndarray, seed: int) -> np.ndarray:
    pred = label.copy()
    rng = np.random.default_rng(seed)
    pred[rng.random(pred.shape) < 0.25] = rng.integers(0, 4)
    return pred


def write_h5_preds(root: Path, out: Path, key: str = "pred") -> dict[str, np.ndarray]:
    out.mkdir(parents=True, exist_ok=True)
    preds = {}
    for i, case in enumerate(TEST_CASES):
        preds[case] = perturbed(gt_label(root, case), i)
        with h5py.File(out / f"{case}.h5", "w") as fh:
            fh[key] = preds[case]
    return preds


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_root_ground_truth_in_mm_and_voxels(tiny_root, tmp_path, capsys):
    preds = write_h5_preds(tiny_root, tmp_path / "preds")
    rc, out, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root)], capsys)
    assert rc == 0, err
    assert "[1/2] patient006_frame01" in err and "[2/2] patient006_frame02" in err
    result_dir = tmp_path / "preds" / "evaluation"
    assert f"wrote {result_dir / 'per_case.csv'}" in out and "mean" in out
    rows = read_rows(result_dir / "per_case.csv")
    assert [(r["case"], r["class"]) for r in rows] == [(c, str(k)) for c in TEST_CASES for k in (1, 2, 3)]
    for r in rows:
        expected = evaluate_case(preds[r["case"]], gt_label(tiny_root, r["case"]), 4, SPACING)[int(r["class"]) - 1]
        assert r["units"] == "mm"
        for m in ("dice", "jaccard", "hd95", "asd", "assd"):
            assert float(r[m]) == pytest.approx(expected[m], abs=1e-12)
    summary = json.loads((result_dir / "summary.json").read_text())
    assert summary["units"] == "mm" and summary["num_cases"] == 2 and summary["gt_kind"] == "dataset-root"
    dice_1 = [float(r["dice"]) for r in rows if r["class"] == "1"]
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dice_1))
    summary_rows = read_rows(result_dir / "summary.csv")
    assert [r["class"] for r in summary_rows] == ["1", "2", "3", "mean"]
    assert float(summary_rows[3]["dice_mean"]) == pytest.approx(summary["mean"]["dice"]["mean"])

    # voxel units into another folder, checked against medpy itself, medpy backend gives the same numbers
    for backend in ("ours", "medpy"):
        out_dir = tmp_path / f"vox-{backend}"
        rc, _, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--spacing-from", "none",
                          "--metric-backend", backend, "--out", str(out_dir), "--quiet"], capsys)
        assert rc == 0 and err == ""
        for r in read_rows(out_dir / "per_case.csv"):
            p, g = preds[r["case"]] == int(r["class"]), gt_label(tiny_root, r["case"]) == int(r["class"])
            assert r["units"] == "voxel"
            assert float(r["hd95"]) == pytest.approx(mb.hd95(p, g), abs=1e-6)
            assert float(r["asd"]) == pytest.approx(mb.asd(p, g), abs=1e-6)


def test_released_nifti_folder_and_mixed_formats(tiny_root, tmp_path, capsys):
    """The released test_2D.py layout (<case>_pred/_gt/_img.nii.gz in one folder, SimpleITK axis order)."""
    folder = tmp_path / "released"
    folder.mkdir()
    preds = {}
    for i, case in enumerate(TEST_CASES):
        gt = gt_label(tiny_root, case)
        preds[case] = perturbed(gt, i)
        zooms = SPACING[::-1]  # SimpleITK writes a (D, H, W) array as x=W, y=H, z=D
        for suffix, arr in (("pred", preds[case].astype(np.float32)), ("gt", gt.astype(np.float32)), ("img", gt / 3.0)):
            img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.diag([*zooms, 1.0]))
            img.header.set_zooms(zooms)
            nib.save(img, folder / f"{case}_{suffix}.nii.gz")
    # NIfTI vs NIfTI: nibabel order, spacing from the zooms in that order
    rc, _, err = run(["evaluate", "--pred", str(folder), "--gt", str(folder), "--quiet"], capsys)
    assert rc == 0, err
    nifti_rows = read_rows(folder / "evaluation" / "per_case.csv")
    assert sorted({r["case"] for r in nifti_rows}) == list(TEST_CASES)
    # NIfTI predictions vs h5 ground truth: NIfTI axes reversed to (D, H, W); same numbers
    rc, _, err = run(["evaluate", "--pred", str(folder), "--gt", str(tiny_root), "--out", str(tmp_path / "mixed"), "--quiet"], capsys)
    assert rc == 0, err
    mixed_rows = read_rows(tmp_path / "mixed" / "per_case.csv")
    for a, b in zip(nifti_rows, mixed_rows):
        assert (a["case"], a["class"]) == (b["case"], b["class"])
        for m in ("dice", "hd95", "asd"):
            assert float(a[m]) == pytest.approx(float(b[m]), abs=1e-9)
    case, c = nifti_rows[0]["case"], int(nifti_rows[0]["class"])
    ref = mb.hd95(preds[case] == c, gt_label(tiny_root, case) == c, voxelspacing=SPACING)
    assert float(nifti_rows[0]["hd95"]) == pytest.approx(ref, abs=1e-6)


def test_empty_policies_through_the_cli(tiny_root, tmp_path, capsys):
    preds = write_h5_preds(tiny_root, tmp_path / "preds", key="label")
    case = TEST_CASES[0]
    preds[case][preds[case] == 2] = 0  # class 2 never predicted in this case
    with h5py.File(tmp_path / "preds" / f"{case}.h5", "w") as fh:
        fh["label"] = preds[case]
    printed = {}
    for policy, expected in (("nan", ["0.0", "0.0", "nan", "nan"]), ("released", ["0.0", "0.0", "0.0", "0.0"])):
        out = tmp_path / policy
        rc, printed[policy], _ = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--empty-policy", policy,
                             "--out", str(out), "--quiet"], capsys)
        assert rc == 0
        row = next(r for r in read_rows(out / "per_case.csv") if r["case"] == case and r["class"] == "2")
        assert [row[m] for m in ("dice", "jaccard", "hd95", "asd")] == expected
        summary = json.loads((out / "summary.json").read_text())
        assert summary["classes"]["2"]["hd95"]["n_undefined"] == (1 if policy == "nan" else 0)
    # the printed table counts undefined values per metric (dice/jaccard/hd95/asd)
    class_2 = {policy: next(line for line in text.splitlines() if line.split()[:1] == ["2"] and "±" in line) for policy, text in printed.items()}
    assert class_2["nan"].endswith("0/0/1/1") and class_2["released"].endswith("0/0/0/0")
    nan_summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert nan_summary["classes"]["2"]["hd95"]["n_defined"] == 1


def one_line_error(capsys, argv) -> str:
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_inputs_give_one_line_errors_and_write_nothing(tiny_root, tmp_path, capsys):
    preds_dir = tmp_path / "preds"
    preds = write_h5_preds(tiny_root, preds_dir)
    base = ["evaluate", "--gt", str(tiny_root), "--quiet"]

    msg = one_line_error(capsys, ["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tiny_root)])
    assert "nope" in msg and "does not exist" in msg
    msg = one_line_error(capsys, ["evaluate", "--pred", str(preds_dir), "--gt", str(tmp_path / "nogt")])
    assert "nogt" in msg
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    msg = one_line_error(capsys, ["evaluate", "--pred", str(afile), "--gt", str(tiny_root)])
    assert msg == f"error: --pred {afile}: is a file, not a folder (give the folder holding the predicted volumes)"
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir), "--out", str(afile)])
    assert msg == f"error: --out {afile}: is a file, not a folder; give a folder"
    assert afile.read_text() == "x"

    with h5py.File(preds_dir / "patient999_frame01.h5", "w") as fh:
        fh["pred"] = np.zeros((3, 12, 10), np.uint8)
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir)])
    assert "no ground truth for 1 prediction(s): patient999_frame01" in msg
    (preds_dir / "patient999_frame01.h5").unlink()

    with h5py.File(preds_dir / f"{TEST_CASES[1]}.h5", "w") as fh:
        fh["pred"] = np.zeros((3, 10, 12), np.uint8)
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir)])
    assert TEST_CASES[1] in msg and "(3, 10, 12)" in msg and "(3, 12, 10)" in msg

    bad = preds[TEST_CASES[1]].copy()
    bad[0, 0, 0] = 7
    with h5py.File(preds_dir / f"{TEST_CASES[1]}.h5", "w") as fh:
        fh["pred"] = bad
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir)])
    assert f"{TEST_CASES[1]}.h5" in msg and "[0, 3]" in msg and "--num-classes" in msg

    with h5py.File(preds_dir / f"{TEST_CASES[1]}.h5", "w") as fh:
        fh["logits"] = bad
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir)])
    assert f"{TEST_CASES[1]}.h5" in msg and "'pred' or 'label'" in msg

    (preds_dir / f"{TEST_CASES[1]}.h5").unlink()
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 3), np.uint8), np.eye(4)), preds_dir / f"{TEST_CASES[0]}_pred.nii.gz")
    msg = one_line_error(capsys, base + ["--pred", str(preds_dir)])
    assert "several files" in msg and TEST_CASES[0] in msg
    assert not (preds_dir / "evaluation").exists()


def test_help_ends_with_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].strip().startswith("medseg evaluate --pred")


def test_classes_no_volume_contains_are_named_in_a_warning(tiny_root, tmp_path, capsys):
    """``--num-classes 9`` on 4-class data used to add NaN rows without a word; the rows stay (a rare class can be
    absent from a test subset), and the warning says why they are empty and what to pass."""
    preds_dir = tmp_path / "preds"
    write_h5_preds(tiny_root, preds_dir)
    rc, _, err = run(["evaluate", "--pred", str(preds_dir), "--gt", str(tiny_root), "--quiet", "--num-classes", "9",
                      "--out", str(tmp_path / "ev")], capsys)
    assert rc == 0
    assert err.strip().splitlines() == [
        "warning: class(es) 4, 5, 6, 7, 8 appear in no prediction and no ground truth of the 2 case(s), so their rows hold "
        "NaN, not a measurement; if the data has 4 classes, pass --num-classes 4"]
    rows = read_rows(tmp_path / "ev" / "per_case.csv")
    assert {row["class"] for row in rows} == {str(c) for c in range(1, 9)}
    rc, _, err = run(["evaluate", "--pred", str(preds_dir), "--gt", str(tiny_root), "--quiet", "--out", str(tmp_path / "ev4")],
                     capsys)
    assert rc == 0 and err == ""


def test_cases_without_a_prediction_are_named_in_a_warning(tiny_root, tmp_path, capsys):
    """A prediction run that stopped halfway used to score as the whole test split, without a word."""
    preds_dir = tmp_path / "preds"
    write_h5_preds(tiny_root, preds_dir)
    (preds_dir / f"{TEST_CASES[1]}.h5").unlink()
    rc, _, err = run(["evaluate", "--pred", str(preds_dir), "--gt", str(tiny_root), "--quiet", "--out", str(tmp_path / "ev")],
                     capsys)
    assert rc == 0
    assert err.strip().splitlines() == [
        f"warning: 1 of the 2 cases of {tiny_root / 'test.list'} have no prediction and are not scored: {TEST_CASES[1]} "
        "(the summary covers the predicted cases only)"]
    # a ground-truth folder: its label files are the cases
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for case in TEST_CASES:
        with h5py.File(gt_dir / f"{case}.h5", "w") as fh:
            fh["label"] = gt_label(tiny_root, case)
    rc, _, err = run(["evaluate", "--pred", str(preds_dir), "--gt", str(gt_dir), "--quiet", "--out", str(tmp_path / "ev2")],
                     capsys)
    assert rc == 0 and f"1 of the 2 cases of {gt_dir} have no prediction" in err


def test_nifti_grids_are_compared_in_the_world_and_a_2d_ground_truth_takes_a_one_slice_prediction(tmp_path, capsys):
    """Both sides NIfTI: a prediction written in another voxel order (the same anatomy, as nibabel's as_closest_canonical
    writes it) used to score Dice 0 silently; a (x, y, 1) prediction of a 2-D (x, y) label was refused for its shape."""
    rng = np.random.default_rng(0)
    gt = np.zeros((12, 10, 4), np.uint8)
    gt[2:9, 3:8, 1:3] = 1
    gt[4:7, 4:6, 1:3] = 2
    affine = np.diag([1.5, 1.25, 5.0, 1.0])
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    nib.save(nib.Nifti1Image(gt, affine), gt_dir / "c1_gt.nii.gz")
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -1.5, 11 * 1.5
    nib.save(nib.Nifti1Image(np.ascontiguousarray(gt[::-1]), flipped), pred_dir / "c1.nii.gz")  # perfect, stored x-reversed
    err = one_line_error(capsys, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3"])
    assert err.startswith("error: c1: prediction c1.nii.gz is stored in another orientation than ground truth c1_gt.nii.gz "
                          "(by their affines, voxel axis i points the other way")
    # the same voxel order with other scales and origin is no mismatch: ACDC's released headers keep unit scales in the
    # sform (nibabel's affine), where a prediction written by ITK carries the spacing
    nib.save(nib.Nifti1Image(gt, np.diag([-1.0, -1.0, 1.0, 1.0])), gt_dir / "c1_gt.nii.gz")
    nib.save(nib.Nifti1Image(gt, np.array([[-1.5, 0, 0, 20.0], [0, -1.25, 0, 7.0], [0, 0, 5.0, -3.0], [0, 0, 0, 1]])),
             pred_dir / "c1.nii.gz")
    rc, out, err = run(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3", "--quiet"], capsys)
    assert rc == 0 and [float(r["dice"]) for r in read_rows(pred_dir / "evaluation" / "per_case.csv")] == [1.0, 1.0]
    nib.save(nib.Nifti1Image(gt, affine), gt_dir / "c1_gt.nii.gz")
    nib.save(nib.Nifti1Image(gt, affine), pred_dir / "c1.nii.gz")

    nib.save(nib.Nifti1Image(gt.astype(np.float32) / 2, affine), gt_dir / "c1.nii.gz")  # a convert-nifti raw folder: image + _gt
    rc, out, err = run(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3", "--quiet"], capsys)
    assert rc == 0, err  # scored against c1_gt (it used to ask to keep one file per case)
    (gt_dir / "c1.nii.gz").unlink()
    # a raw file name with a space: convert-nifti's case id (and so medseg predict's file) is "c_1"
    (gt_dir / "c1_gt.nii.gz").rename(gt_dir / "c 1_gt.nii.gz")
    (pred_dir / "c1.nii.gz").rename(pred_dir / "c_1.nii.gz")
    rc, out, err = run(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3", "--quiet"], capsys)
    assert rc == 0, err  # it used to say "no ground truth for 1 prediction(s): c_1"
    assert {r["case"] for r in read_rows(pred_dir / "evaluation" / "per_case.csv")} == {"c_1"} and "no prediction" not in err
    # an exact stem wins over a converted one; names the converters would merge are not guessed between
    nib.save(nib.Nifti1Image(np.zeros_like(gt), affine), gt_dir / "c_1_gt.nii.gz")
    rc, out, err = run(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3", "--quiet"], capsys)
    assert rc == 0 and "1 of the 2 cases of" in err  # scored against c_1_gt; "c 1" has no prediction
    (gt_dir / "c_1_gt.nii.gz").unlink()
    (gt_dir / "c 1_gt.nii.gz").rename(gt_dir / "c1_gt.nii.gz")
    (pred_dir / "c_1.nii.gz").rename(pred_dir / "c1.nii.gz")

    flat = gt[:, :, 1]  # a 2-D label and the (x, y, 1) volume a converter's round trip writes for it
    pred = flat.copy()
    pred[rng.random(pred.shape) < 0.2] = 0
    nib.save(nib.Nifti1Image(flat, affine), gt_dir / "c1_gt.nii.gz")
    nib.save(nib.Nifti1Image(pred[:, :, None], affine), pred_dir / "c1.nii.gz")
    rc, out, err = run(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3", "--quiet"], capsys)
    assert rc == 0, err
    row = read_rows(pred_dir / "evaluation" / "per_case.csv")[0]
    assert float(row["hd95"]) == pytest.approx(mb.hd95(pred == 1, flat == 1, voxelspacing=(1.5, 1.25)), abs=1e-9)


def test_the_number_of_classes_of_a_dataset_root_comes_from_its_manifest(tiny_root, tmp_path, capsys):
    """A 3-class dataset scored with the default 4 classes got an empty class 3 (0 under --empty-policy released), which
    pulled the mean down; a dataset root's manifest now sets the count unless --num-classes is given."""
    from medseg_platform.data.layout import write_manifest

    preds = write_h5_preds(tiny_root, tmp_path / "preds")
    for case, pred in preds.items():
        with h5py.File(tiny_root / "data" / f"{case}.h5", "r+") as fh:
            label = fh["label"][()]
            label[label == 3] = 0
            fh["label"][...] = label
        pred[pred == 3] = 0
        with h5py.File(tmp_path / "preds" / f"{case}.h5", "w") as fh:
            fh["pred"] = pred
    write_manifest(tiny_root, {"converter": "test"}, {}, class_names=["liver", "tumour"])
    rc, out, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--empty-policy", "released",
                        "--quiet"], capsys)
    assert rc == 0, err
    assert "2 cases, 2 foreground classes" in out
    # the printed table names the classes the dataset records (the reports probe: it printed 1/2/3)
    assert [line.split()[0] for line in out.splitlines()[1:5]] == ["class", "liver", "tumour", "mean"]
    assert sorted({r["class"] for r in read_rows(tmp_path / "preds" / "evaluation" / "per_case.csv")}) == ["1", "2"]
    assert json.loads((tmp_path / "preds" / "evaluation" / "summary.json").read_text())["num_classes"] == 3
    # the evaluation review: where the manifest records 4 classes and none holds class 3, the warning suggested
    # --num-classes 3, which this root then refuses; it names the empty class and suggests nothing
    write_manifest(tiny_root, {"converter": "test"}, {}, class_names=["RV", "Myo", "LV"])
    rc, _, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--quiet", "--out",
                      str(tmp_path / "ev4")], capsys)
    assert rc == 0 and err.strip().splitlines() == [
        "warning: class(es) 3 (LV) appear in no prediction and no ground truth of the 2 case(s), so their rows hold NaN, "
        "not a measurement"]  # named as the printed table names it (the warning gave the label alone)


def test_a_dataset_roots_own_ids_are_matched_as_they_are(tmp_path, capsys):
    """A list line may hold any file name: ids outside [A-Za-z0-9_-] are matched by their own stems (sanitising every
    stem made 'patient.6_frame01' unmatchable against its own dataset root)."""
    from tests.conftest import make_tiny_dataset

    root = make_tiny_dataset(tmp_path / "root", test_patients=("patient.6",))
    out = tmp_path / "pred"
    out.mkdir()
    for case in ("patient.6_frame01", "patient.6_frame02"):
        with h5py.File(out / f"{case}.h5", "w") as fh:
            fh["pred"] = gt_label(root, case)
    rc, _, err = run(["evaluate", "--pred", str(out), "--gt", str(root), "--quiet"], capsys)
    assert rc == 0, err
    assert {r["case"] for r in read_rows(out / "evaluation" / "per_case.csv")} == {"patient.6_frame01", "patient.6_frame02"}


def test_a_ground_truth_folder_of_patient_folders_is_read_one_level_down(tmp_path, capsys):
    """The raw ACDC release keeps each patient's frames, their _gt labels and a 4-D cine in training/patientNNN/: its
    training/ folder is a ground truth (its _gt files; images and cines are not labels)."""
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    training, preds, labels = tmp_path / "training", tmp_path / "preds", {}
    preds.mkdir()
    for patient in ("patient001", "patient002"):
        folder = training / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\n")
        nib.save(nib.Nifti1Image(rng.integers(0, 99, size=(8, 9, 3, 4)).astype(np.int16), affine), str(folder / f"{patient}_4d.nii.gz"))
        for frame in ("frame01", "frame12"):
            case = f"{patient}_{frame}"
            labels[case] = rng.integers(0, 4, size=(8, 9, 3)).astype(np.uint8)
            nib.save(nib.Nifti1Image(labels[case] * 50, affine), str(folder / f"{case}.nii.gz"))
            nib.save(nib.Nifti1Image(labels[case], affine), str(folder / f"{case}_gt.nii.gz"))
            if case != "patient002_frame12":  # one case without a prediction: the warning counts the _gt files only
                nib.save(nib.Nifti1Image(perturbed(labels[case], 1), affine), str(preds / f"{case}.nii.gz"))
    code, out, err = run(["evaluate", "--pred", str(preds), "--gt", str(training), "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert f"1 of the 4 cases of {training} have no prediction and are not scored: patient002_frame12" in err
    rows = read_rows(tmp_path / "e" / "per_case.csv")
    assert sorted({r["case"] for r in rows}) == ["patient001_frame01", "patient001_frame12", "patient002_frame01"]
    expected = evaluate_case(perturbed(labels["patient001_frame12"], 1), labels["patient001_frame12"], 4, (1.5, 1.5, 10.0))
    ours = [r for r in rows if r["case"] == "patient001_frame12"]
    assert [float(r["dice"]) for r in ours] == pytest.approx([e["dice"] for e in expected], abs=1e-6)
    # one case in two patient folders is refused, naming both files
    (training / "copy").mkdir()
    nib.save(nib.Nifti1Image(labels["patient001_frame01"], affine), str(training / "copy" / "patient001_frame01_gt.nii.gz"))
    error = one_line_error(capsys, ["evaluate", "--pred", str(preds), "--gt", str(training), "--out", str(tmp_path / "e2")])
    assert error == (f"error: {training}: case patient001_frame01 has a label file in two subfolders, "
                     f"{training / 'copy' / 'patient001_frame01_gt.nii.gz'} and {training / 'patient001' / 'patient001_frame01_gt.nii.gz'} "
                     "(keep one file per case)")


def test_the_raw_acdc_release_scores_predictions_named_as_convert_acdc_names_the_frames(tmp_path, capsys):
    """The evaluation review: convert-acdc names the ES frame ``frame02`` whatever its number (docs/data.md), so the
    platform's own ES predictions found no ground truth in the raw release's training/ folder ("no ground truth for 10
    prediction(s): patient001_frame02, ..."). Info.cfg says which raw frame each converted id is."""
    rng = np.random.default_rng(2)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    training, preds, labels = tmp_path / "training", tmp_path / "preds", {}
    preds.mkdir()
    for patient, es in (("patient001", 12), ("patient002", 5)):
        folder = training / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: {es}\nGroup: DCM\n")
        for raw, converted in (("frame01", "frame01"), (f"frame{es:02d}", "frame02")):
            labels[converted, patient] = rng.integers(0, 4, size=(8, 9, 3)).astype(np.uint8)
            nib.save(nib.Nifti1Image(labels[converted, patient], affine), str(folder / f"{patient}_{raw}_gt.nii.gz"))
            nib.save(nib.Nifti1Image(perturbed(labels[converted, patient], 1), affine), str(preds / f"{patient}_{converted}.nii.gz"))
    code, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(training), "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert "no prediction" not in err  # every raw frame was matched
    rows = read_rows(tmp_path / "e" / "per_case.csv")
    assert sorted({r["case"] for r in rows}) == ["patient001_frame01", "patient001_frame02", "patient002_frame01", "patient002_frame02"]
    label = labels["frame02", "patient002"]
    expected = evaluate_case(perturbed(label, 1), label, 4, (1.5, 1.5, 10.0))
    ours = [r for r in rows if r["case"] == "patient002_frame02"]
    assert [float(r["dice"]) for r in ours] == pytest.approx([e["dice"] for e in expected], abs=1e-6)


def test_raw_acdc_frames_that_converted_ids_would_confuse_are_refused_not_scored_against_the_other_phase(tmp_path, capsys):
    """The diff review: an Info.cfg with ED at frame 2 makes patientNNN_frame02 a raw frame (ED) and convert-acdc's id
    of ES: a perfect ES prediction scored 0 against the ED label, unwarned. ED and ES at one frame crashed (KeyError)."""
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    label = np.random.default_rng(3).integers(0, 4, size=(8, 9, 3)).astype(np.uint8)
    training, preds = tmp_path / "training", tmp_path / "preds"
    preds.mkdir()
    for patient, info, frames in (("patient001", "ED: 2\nES: 9\n", ("frame02", "frame09")),
                                  ("patient002", "ED: 5\nES: 5\n", ("frame05",))):
        (training / patient).mkdir(parents=True)
        (training / patient / "Info.cfg").write_text(info)
        for frame in frames:
            nib.save(nib.Nifti1Image(label, affine), str(training / patient / f"{patient}_{frame}_gt.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(preds / "patient001_frame02.nii.gz"))
    error = one_line_error(capsys, ["evaluate", "--pred", str(preds), "--gt", str(training), "--out", str(tmp_path / "e")])
    assert error == (f"error: --gt {training}: prediction patient001_frame02 could be either frame: patient001's Info.cfg "
                     "makes it a raw frame of its own, while convert-acdc names the other phase (patient001_frame09) so; score "
                     "predictions of a converted dataset against its root (--gt CONVERTED_ROOT)")
    # the diff review: predictions named by the raw frames (medseg predict --images of the raw release) score against
    # their own stems, frame02 the ED label
    nib.save(nib.Nifti1Image(label, affine), str(preds / "patient001_frame09.nii.gz"))
    code, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(training), "--quiet", "--out", str(tmp_path / "e1")], capsys)
    assert code == 0, err
    assert {r["case"] for r in read_rows(tmp_path / "e1" / "per_case.csv")} == {"patient001_frame02", "patient001_frame09"}
    (preds / "patient001_frame09.nii.gz").unlink()
    # ED alone under its converted id meets raw frame 2; the ED == ES folder matches by its own stems, without a traceback
    (preds / "patient001_frame02.nii.gz").rename(preds / "patient001_frame01.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), str(preds / "patient002_frame05.nii.gz"))
    code, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(training), "--quiet", "--out", str(tmp_path / "e2")], capsys)
    assert code == 0, err
    rows = read_rows(tmp_path / "e2" / "per_case.csv")
    assert {r["case"] for r in rows} == {"patient001_frame01", "patient002_frame05"}
    assert all(float(r["dice"]) == 1.0 for r in rows if r["dice"] not in ("", "nan"))


def test_a_ground_truth_folder_of_both_namings_scores_both_and_skips_a_cine(tmp_path, capsys):
    """A label named <case> beside others named <case>_gt is still ground truth; a 4-D cine beside them is not (it was
    counted as a case without a prediction)."""
    rng = np.random.default_rng(1)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    gt, preds = tmp_path / "gt", tmp_path / "preds"
    gt.mkdir(), preds.mkdir()
    labels = {case: rng.integers(0, 4, size=(8, 9, 3)).astype(np.uint8) for case in ("caseA", "caseB")}
    nib.save(nib.Nifti1Image(labels["caseA"], affine), str(gt / "caseA.nii.gz"))
    nib.save(nib.Nifti1Image(labels["caseB"], affine), str(gt / "caseB_gt.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 3, 4), dtype=np.int16), affine), str(gt / "cine_4d.nii.gz"))
    for case, label in labels.items():
        nib.save(nib.Nifti1Image(perturbed(label, 2), affine), str(preds / f"{case}.nii.gz"))
    code, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(gt), "--quiet", "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert sorted({r["case"] for r in read_rows(tmp_path / "e" / "per_case.csv")}) == ["caseA", "caseB"]
    assert "no prediction" not in err


def test_a_failed_write_keeps_the_earlier_evaluation_whole(tiny_root, tmp_path, capsys, monkeypatch):
    """The security audit: a full disk after the first two files left per_case.csv and summary.csv of the new run beside
    the old run's summary.json (and a traceback)."""
    import medseg_platform.io as io

    write_h5_preds(tiny_root, tmp_path / "preds")
    out = tmp_path / "eval"
    assert run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--quiet", "--out", str(out)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []
    real_fsync = io.os.fsync

    def fsync(fd):  # the third file's fsync fails: no space left
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    rc, _, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--quiet", "--out", str(out),
                      "--empty-policy", "released"], capsys)
    assert rc == 2 and err.strip() == (f"error: --out {out}: the results could not be written (No space left on device); the files "
                                       "of an earlier evaluation there are intact: free space (or fix the folder) and run it again")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_predictions_that_span_a_roots_splits_are_named_in_a_warning(tiny_root, tmp_path, capsys):
    """The data walkthrough: `medseg predict --split all` printed an evaluate line against the dataset root, which then
    scored training cases with the test cases without a word (a training-set Dice read as a test result)."""
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in ("patient006_frame01", "patient005_frame01", "patient004_frame01", "patient004_frame02"):  # test, val, 2 train
        with h5py.File(preds / f"{case}.h5", "w") as fh:
            fh["pred"] = gt_label(tiny_root, case)
    rc, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(tiny_root), "--quiet"], capsys)
    assert rc == 0, err
    assert err.strip().splitlines() == [
        f"warning: the 4 predicted cases are not those of {tiny_root}'s test or val split alone: 1 test, 1 val, 2 in neither "
        "(training cases); a summary over them is no test result (score one split's predictions, e.g. medseg predict "
        "--split test)"]
    assert len({r["case"] for r in read_rows(preds / "evaluation" / "per_case.csv")}) == 4  # scored all the same


def test_a_num_classes_other_than_the_roots_is_refused(tiny_root, tmp_path, capsys):
    """The data walkthrough: --num-classes 6 against a 4-class dataset root added two always-empty classes to the table
    (and dropped the class names), where `medseg data check` calls the same mismatch a problem."""
    from medseg_platform.data.layout import write_manifest

    write_h5_preds(tiny_root, tmp_path / "preds")
    write_manifest(tiny_root, {"converter": "test"}, {}, class_names=["RV", "Myo", "LV"])
    error = one_line_error(capsys, ["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--num-classes", "6"])
    assert error == (f"error: --num-classes 6: the dataset root {tiny_root} records 4 classes, background included (its "
                     "manifest.json); drop --num-classes or give 4")
    assert not (tmp_path / "preds" / "evaluation").exists()
    rc, out, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--num-classes", "4", "--quiet"], capsys)
    assert rc == 0 and "2 cases, 3 foreground classes" in out, err
    error = one_line_error(capsys, ["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--label-suffix", "_seg"])
    assert error.startswith("error: --label-suffix _seg: names the label files of a ground-truth folder; the dataset root ")


def test_labels_named_with_another_suffix_are_read_with_label_suffix(tmp_path, capsys):
    """The data walkthrough: convert-nifti and predict take --label-suffix, evaluate did not; with labels named _seg it
    took the images beside them for the ground truth ("label values must lie in [0, 3] ... found range [-34, 554])."""
    rng = np.random.default_rng(3)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    raw, preds = tmp_path / "raw", tmp_path / "preds"
    raw.mkdir(), preds.mkdir()
    labels = {}
    for case in ("caseA", "caseB"):
        labels[case] = rng.integers(0, 4, size=(8, 9, 3)).astype(np.uint8)
        nib.save(nib.Nifti1Image(rng.integers(-40, 600, size=(8, 9, 3)).astype(np.int16), affine), str(raw / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(labels[case], affine), str(raw / f"{case}_seg.nii.gz"))
        nib.save(nib.Nifti1Image(perturbed(labels[case], 4), affine), str(preds / f"{case}.nii.gz"))
    error = one_line_error(capsys, ["evaluate", "--pred", str(preds), "--gt", str(raw), "--quiet", "--out", str(tmp_path / "e0")])
    assert error.startswith(f"error: {raw / 'caseA.nii.gz'}: label values must lie in [0, 3]")  # the images, read as labels
    assert error.endswith("; if it is an image and its label is named otherwise, pass --label-suffix (e.g. _seg; now _gt)")
    rc, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(raw), "--label-suffix", "_seg", "--quiet",
                      "--out", str(tmp_path / "e")], capsys)
    assert rc == 0, err
    rows = [r for r in read_rows(tmp_path / "e" / "per_case.csv") if r["case"] == "caseB"]
    expected = evaluate_case(perturbed(labels["caseB"], 4), labels["caseB"], 4, (1.5, 1.5, 10.0))
    assert [float(r["dice"]) for r in rows] == pytest.approx([e["dice"] for e in expected], abs=1e-6)
    # a released test_2D.py output folder as --pred keeps ignoring its _gt and _img files (the review)
    for case in ("caseA", "caseB"):
        (preds / f"{case}.nii.gz").rename(preds / f"{case}_pred.nii.gz")
        nib.save(nib.Nifti1Image(labels[case], affine), str(preds / f"{case}_gt.nii.gz"))
        nib.save(nib.Nifti1Image(labels[case] * 9, affine), str(preds / f"{case}_img.nii.gz"))
    rc, _, err = run(["evaluate", "--pred", str(preds), "--gt", str(raw), "--label-suffix", "_seg", "--quiet",
                      "--out", str(tmp_path / "e2")], capsys)
    assert rc == 0, err
    assert read_rows(tmp_path / "e2" / "per_case.csv") == read_rows(tmp_path / "e" / "per_case.csv")
    with pytest.raises(SystemExit):
        main(["evaluate", "--pred", str(preds), "--gt", str(raw), "--label-suffix", "a/b"])
    assert "the ending of a file name, not a path" in capsys.readouterr().err


def test_a_single_number_spacing_applies_to_every_axis_wherever_it_is_read(tiny_root, tmp_path, capsys):
    """A scalar spacing passed the manifest's and the h5 attribute's checks, then training's volume reader and
    `medseg evaluate` on a dataset root failed on it with a TypeError traceback (the metrics review). Now every reader
    takes it as the same number on the three axes, the result equal to the spacing written out in full."""
    from medseg_platform.data.layout import AcdcLayout

    preds = write_h5_preds(tiny_root, tmp_path / "preds")
    case = TEST_CASES[0]
    with h5py.File(tiny_root / "data" / f"{case}.h5", "r+") as fh:
        del fh.attrs["spacing"]  # the manifest's spacing then applies
    (tiny_root / "manifest.json").write_text(json.dumps({"cases": {case: {"patient": case.split("_")[0], "spacing": 2.0}}}))
    with h5py.File(tiny_root / "data" / f"{TEST_CASES[1]}.h5", "r+") as fh:
        fh.attrs["spacing"] = 3.0
    layout = AcdcLayout(tiny_root)
    assert layout.read_volume(case).spacing == (2.0, 2.0, 2.0)
    assert layout.read_volume(TEST_CASES[1]).spacing == (3.0, 3.0, 3.0)
    rc, _, err = run(["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--out", str(tmp_path / "ev"),
                      "--quiet"], capsys)
    assert rc == 0, err
    for r in read_rows(tmp_path / "ev" / "per_case.csv"):
        spacing = (2.0,) * 3 if r["case"] == case else (3.0,) * 3
        expected = evaluate_case(preds[r["case"]], gt_label(tiny_root, r["case"]), 4, spacing)[int(r["class"]) - 1]
        assert r["units"] == "mm" and float(r["hd95"]) == pytest.approx(expected["hd95"], abs=1e-12)


def test_an_implausible_number_of_classes_is_a_one_line_error_before_any_volume_is_read(tiny_root, tmp_path, capsys):
    """`--num-classes 50000` allocated a 50000**2 confusion histogram per case (18.6 GiB) and died with NumPy's memory
    error (the metrics review); training's data.num_classes is bounded by its 8-bit label maps."""
    from medseg_platform.config import TrialConfig
    from medseg_platform.errors import ConfigError
    from medseg_platform.evaluation.metrics import MAX_CLASSES

    write_h5_preds(tiny_root, tmp_path / "preds")
    msg = one_line_error(capsys, ["evaluate", "--pred", str(tmp_path / "preds"), "--gt", str(tiny_root), "--num-classes", "50000",
                                  "--out", str(tmp_path / "ev")])
    assert "--num-classes" in msg and f"[2, {MAX_CLASSES}]" in msg and not (tmp_path / "ev").exists()
    with pytest.raises(ConfigError, match=r"num_classes: expected an integer in \[2, "):
        evaluate_case(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.uint8), MAX_CLASSES + 1)
    assert len(evaluate_case(np.zeros((2, 3, 3), np.uint8), np.ones((2, 3, 3), np.uint8), 300)) == 299  # int32 labels still
    with pytest.raises(ConfigError, match="data.num_classes 300: need 2 to 256"):
        TrialConfig.from_dict({"data": {"num_classes": 300}}).validate()


def test_summarize_refuses_a_case_and_class_given_twice():
    """A repeated (case, class) row overwrote the earlier value without a word, and case ids 1 and "1" merged."""
    from medseg_platform.errors import DataError
    from medseg_platform.evaluation.metrics import summarize

    def row(case, dice):
        return {"case": case, "class": 1, "dice": dice, "jaccard": dice, "hd95": 1.0, "asd": 1.0, "assd": 1.0}

    assert summarize([row("a", 0.8), row("b", 0.6)])["classes"][1]["dice"]["mean"] == pytest.approx(0.7)
    for rows in ([row("a", 0.8), row("a", 0.2), row("b", 0.6)], [row(1, 0.8), row("1", 0.2)]):
        with pytest.raises(DataError, match=r"case '(a|1)' class 1 appears in two rows"):
            summarize(rows)
