"""``medseg data convert-acdc`` / ``convert-nifti`` on tiny fake raw data (docs/data.md, 'ACDC layout')."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from analysis.console import main
from medseg_platform.data.acdc_split import (
    PUBLISHED_TEST,
    PUBLISHED_TRAIN,
    PUBLISHED_VAL,
    SplitSpec,
    published_split,
    random_split,
    split_counts,
)
from medseg_platform.data.convert import convert_acdc, convert_nifti, implausible_spacing_warning
from medseg_platform.data.layout import AcdcLayout
from medseg_platform.data.nifti import read_header, sanitize_case_id, source_affine, split_nifti_name
from medseg_platform.errors import ConfigError, DataError

SHAPE_XYZ = (16, 20, 3)  # nibabel (X, Y, Z) -> (D, H, W) = (3, 20, 16)
ZOOMS_XYZ = (1.5, 1.25, 10.0)  # -> spacing (D, H, W) = (10.0, 1.25, 1.5)
SHAPE_DHW = (3, 20, 16)
SPACING_DHW = (10.0, 1.25, 1.5)
# (patient, sub-folder, ES frame); published roles: 099, 038 train; 028 val; 011, 013 test; 101 unpublished
PATIENTS = [
    ("patient099", "training", 12),
    ("patient038", "training", 9),
    ("patient028", "testing", 14),
    ("patient011", "training", 7),
    ("patient013", "training", 11),
    ("patient101", "testing", 10),
]


# ---------------------------------------------------------------------------------- fake data
def save_nifti(path: Path, array: np.ndarray, zooms=ZOOMS_XYZ) -> None:
    """Write ``array`` (X, Y, Z) with voxel sizes ``zooms``."""
    spatial = list(zooms[:3])
    img = nib.Nifti1Image(array, affine=np.diag(spatial + [1.0] * (4 - len(spatial))))
    img.header.set_zooms(zooms[: array.ndim])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def fake_pair(rng: np.random.Generator, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An int16 (X, Y, Z) image with a non-zero minimum and a uint8 label of the same shape."""
    image = rng.integers(-50, 800, size=SHAPE_XYZ).astype(np.int16)
    label = rng.integers(0, num_classes, size=SHAPE_XYZ).astype(np.uint8)
    return image, label


def make_acdc(root: Path, patients=PATIENTS, seed: int = 0) -> dict[str, np.ndarray]:
    """A fake ACDC release; returns the raw (X, Y, Z) arrays keyed by ``<patient>_frameMM[_gt]``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for patient, sub, es in patients:
        folder = root / sub / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        for frame in (1, es):
            image, label = fake_pair(rng)
            stem = f"{patient}_frame{frame:02d}"
            save_nifti(folder / f"{stem}.nii.gz", image)
            save_nifti(folder / f"{stem}_gt.nii.gz", label)
            arrays[stem], arrays[f"{stem}_gt"] = image, label
        save_nifti(folder / f"{patient}_4d.nii.gz", np.zeros((4, 4, 3, 2), np.int16), (1.0, 1.0, 1.0, 1.0))
    return arrays


@pytest.fixture(scope="module")
def acdc_raw(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("raw") / "ACDC"
    return root, make_acdc(root)


@pytest.fixture(scope="module")
def converted(acdc_raw, tmp_path_factory) -> tuple[Path, int, str, str]:
    """The published-split conversion through the CLI: (out dir, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("out") / "acdc"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["data", "convert-acdc", str(acdc_raw[0]), str(out)])
    return out, rc, stdout.getvalue(), stderr.getvalue()


def expected_image(raw_xyz: np.ndarray) -> np.ndarray:
    """Min-max of the raw volume, transposed (X, Y, Z) -> (Z, Y, X)."""
    raw = raw_xyz.astype(np.float64)
    return ((raw - raw.min()) / (raw.max() - raw.min())).astype(np.float32).transpose(2, 1, 0)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["data", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ------------------------------------------------------------------------------ published ACDC
def test_published_split_lists_and_order(converted):
    out, rc, stdout, stderr = converted
    assert rc == 0, stderr
    layout = AcdcLayout(out)
    assert layout.train_patients == ["patient099", "patient038"]  # published order, not sorted
    assert layout.train_cases == ["patient099_frame01", "patient099_frame02", "patient038_frame01", "patient038_frame02"]
    assert layout.train_slices[:4] == ["patient099_frame01_slice_0", "patient099_frame01_slice_1",
                                       "patient099_frame01_slice_2", "patient099_frame02_slice_0"]
    assert len(layout.train_slices) == 4 * SHAPE_DHW[0]
    assert layout.val_cases == ["patient028_frame01", "patient028_frame02"]
    assert layout.test_cases == ["patient011_frame01", "patient011_frame02", "patient013_frame01", "patient013_frame02"]


def test_unpublished_patient_skipped_and_missing_warned(converted):
    out, _, stdout, stderr = converted
    assert not list((out / "data").glob("patient101*"))
    assert "95 of the 100 published patients" in stderr
    assert "patient101" in stderr and "--split random" in stderr
    for patient, _, _ in PATIENTS[:5]:  # progress: one line per converted patient
        assert sum(patient in line for line in stdout.splitlines()) == 1


def test_slices_only_for_training_volumes_for_all(converted):
    out = converted[0]
    slice_cases = {p.name.rsplit("_slice_", 1)[0] for p in (out / "data" / "slices").glob("*.h5")}
    assert slice_cases == {"patient099_frame01", "patient099_frame02", "patient038_frame01", "patient038_frame02"}
    volumes = {p.stem for p in (out / "data").glob("*.h5")}
    assert len(volumes) == 10 and "patient013_frame02" in volumes


def test_axis_order_spacing_and_minmax(converted, acdc_raw):
    out, arrays = converted[0], acdc_raw[1]
    layout = AcdcLayout(out)
    vol = layout.read_volume("patient099_frame02")  # ES = raw frame 12
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    assert vol.image.shape == SHAPE_DHW
    assert vol.spacing == SPACING_DHW
    np.testing.assert_array_equal(vol.image, expected_image(arrays["patient099_frame12"]))
    np.testing.assert_array_equal(vol.label, arrays["patient099_frame12_gt"].transpose(2, 1, 0))
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0
    image, label = layout.read_slice("patient099_frame02_slice_1")
    np.testing.assert_array_equal(image, vol.image[1])
    np.testing.assert_array_equal(label, vol.label[1])
    test_vol = layout.read_volume("patient013_frame01")
    np.testing.assert_array_equal(test_vol.image, expected_image(arrays["patient013_frame01"]))


def test_manifest_records_frames_and_source(converted):
    manifest = json.loads((converted[0] / "manifest.json").read_text())
    es = manifest["cases"]["patient038_frame02"]
    assert es["phase"] == "ES" and es["frame"] == 9 and es["group"] == "DCM"
    assert es["patient"] == "patient038" and es["split"] == "train"
    assert es["spacing"] == list(SPACING_DHW) and es["shape"] == list(SHAPE_DHW)
    assert es["source_image"] == "training/patient038/patient038_frame09.nii.gz"
    ed = manifest["cases"]["patient028_frame01"]
    assert ed["phase"] == "ED" and ed["frame"] == 1 and ed["split"] == "val"
    source = manifest["source"]
    assert source["split"] == "published" and source["seed"] is None and source["raw_dir"] == "ACDC"
    assert source["missing_published"] == 95 and source["skipped_patients"] == ["patient101"]


def test_conversion_is_deterministic(acdc_raw, converted, tmp_path):
    again = tmp_path / "again"
    convert_acdc(acdc_raw[0], again)
    first = json.loads((converted[0] / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    assert first["sha256"] == second["sha256"] and len(first["sha256"]) == 3 + 10 + 12
    assert all_files(converted[0]) == all_files(again)


# ------------------------------------------------------------------------------------- random
def test_random_split_reproducible_by_seed(acdc_raw, tmp_path):
    def lists(name, seed):
        convert_acdc(acdc_raw[0], tmp_path / name, SplitSpec(kind="random", seed=seed))
        layout = AcdcLayout(tmp_path / name)
        return layout.train_patients, layout.val_cases, layout.test_cases

    first, same = lists("a", 1), lists("b", 1)
    assert first == same
    assert len(first[0]) == 4 and len(first[1]) == 2 and len(first[2]) == 2  # 6 patients: 4/1/1, 101 included
    patients = set(first[0]) | {c.split("_")[0] for c in first[1] + first[2]}
    assert patients == {p for p, _, _ in PATIENTS}
    assert lists("c", 2) != first
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["source"]["split"] == "random" and manifest["source"]["seed"] == 1


def test_random_split_via_cli_with_counts(acdc_raw, tmp_path, capsys):
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], tmp_path / "o", "--split", "random", "--seed", "3",
                     "--val-count", "2", "--test-count", "1")
    assert rc == 0, err
    layout = AcdcLayout(tmp_path / "o")
    assert len(layout.train_patients) == 3 and len(layout.val_cases) == 4 and len(layout.test_cases) == 2


def test_published_rejects_random_only_options(acdc_raw, tmp_path, capsys):
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], tmp_path / "o", "--seed", "3")
    assert rc == 2 and "--seed" in err and "--split random" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- split helpers
def test_published_lists_are_a_partition_of_100_patients():
    everyone = PUBLISHED_TRAIN + PUBLISHED_VAL + PUBLISHED_TEST
    assert (len(PUBLISHED_TRAIN), len(PUBLISHED_VAL), len(PUBLISHED_TEST)) == (70, 10, 20)
    assert sorted(everyone) == [f"patient{i:03d}" for i in range(1, 101)]
    assert PUBLISHED_TRAIN[:4] == ("patient099", "patient038", "patient050", "patient100")


def test_split_counts_and_errors():
    assert split_counts(100, SplitSpec(kind="random")) == (70, 10, 20)
    assert split_counts(5, SplitSpec(kind="random")) == (3, 1, 1)
    with pytest.raises(DataError, match="cannot be split"):
        split_counts(2, SplitSpec(kind="random"))
    with pytest.raises(DataError, match="val split has no patient"):
        published_split(["patient099", "patient011"])
    with pytest.raises(ConfigError, match="--val-fraction"):
        SplitSpec(kind="random", val_fraction=0.6, test_fraction=0.5)
    # a count replaces its fraction: the default --val-fraction is not blamed (the split itself still must leave a train set)
    assert split_counts(100, SplitSpec(kind="random", val_count=2, test_fraction=0.95)) == (3, 2, 95)
    with pytest.raises(DataError, match="cannot be split into 2 val"):
        split_counts(40, SplitSpec(kind="random", val_count=2, test_fraction=0.95))
    ids = [f"p{i}" for i in range(10)]
    assert random_split(ids, SplitSpec(kind="random", seed=5)) == random_split(list(reversed(ids)), SplitSpec(kind="random", seed=5))


# ------------------------------------------------------------------------------ ACDC bad input
def _rewrite_info(raw: Path, patient: str, drop: str) -> None:
    info = next(raw.rglob(f"{patient}/Info.cfg"))
    info.write_text("".join(line + "\n" for line in info.read_text().splitlines() if not line.startswith(drop)))


def _replace(raw: Path, name: str, array: np.ndarray) -> None:
    save_nifti(next(raw.rglob(name)), array)


def _zero_slice_thickness(raw: Path, name: str) -> None:
    """pixdim[3] = 0 written into the file's bytes (nibabel's load would set it to 1 and say so on stderr)."""
    path = next(raw.rglob(name))
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[88:92] = struct.pack("<f", 0.0)  # NIfTI-1: pixdim (8 float32) at byte 76, pixdim[3] at 88
    path.write_bytes(gzip.compress(bytes(data)))


def _truncate(raw: Path, name: str) -> None:
    path = next(raw.rglob(name))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_ACDC = {
    "info_missing": (lambda raw: next(raw.rglob("patient099/Info.cfg")).unlink(), "patient099/Info.cfg"),
    "info_folder": (lambda raw: (lambda p: (p.unlink(), p.mkdir()))(next(raw.rglob("patient099/Info.cfg"))),
                    "patient099/Info.cfg: Info.cfg is not a file"),
    "info_without_es": (lambda raw: _rewrite_info(raw, "patient038", "ES"), "patient038/Info.cfg: no 'ES:'"),
    "info_without_ed": (lambda raw: _rewrite_info(raw, "patient011", "ED"), "patient011/Info.cfg: no 'ED:'"),
    "frame_missing": (lambda raw: next(raw.rglob("patient013_frame11_gt.nii.gz")).unlink(), "patient013_frame11_gt.nii.gz"),
    "gt_shape": (lambda raw: _replace(raw, "patient028_frame14_gt.nii.gz", np.zeros((16, 20, 4), np.uint8)),
                 "patient028_frame14_gt.nii.gz: label shape 4x20x16 differs"),
    "label_value": (lambda raw: _replace(raw, "patient013_frame01_gt.nii.gz", np.full(SHAPE_XYZ, 4, np.uint8)),
                    "patient013_frame01_gt.nii.gz: label value(s) 4 outside 0..3"),
    "nan_image": (lambda raw: _replace(raw, "patient011_frame07.nii.gz",
                                       np.where(np.arange(960).reshape(SHAPE_XYZ) == 5, np.nan, 1.0).astype(np.float32)),
                  "patient011_frame07.nii.gz: image has 1 NaN/inf"),
    "constant_image": (lambda raw: _replace(raw, "patient099_frame01.nii.gz", np.full(SHAPE_XYZ, 7, np.int16)),
                       "patient099_frame01.nii.gz: image is constant"),
    # these four used to convert silently (or end in a traceback), each now fails in the header pass or names the file
    "complex_image": (lambda raw: _replace(raw, "patient038_frame09.nii.gz", np.ones(SHAPE_XYZ, np.complex64)),
                      "patient038_frame09.nii.gz: complex voxel values (complex64)"),
    "zero_pixdim": (lambda raw: _zero_slice_thickness(raw, "patient013_frame11.nii.gz"),
                    "patient013_frame11.nii.gz: header voxel sizes (pixdim) must be non-zero numbers, got (1.5, 1.25, 0.0)"),
    "gt_grid": (lambda raw: save_nifti(next(raw.rglob("patient028_frame14_gt.nii.gz")), np.zeros(SHAPE_XYZ, np.uint8),
                                       zooms=(3.0, 3.0, 10.0)),
                "patient028_frame14_gt.nii.gz: label voxel size (10.0, 3.0, 3.0) mm differs from image"),
    "truncated_image": (lambda raw: _truncate(raw, "patient099_frame12.nii.gz"),
                        "patient099_frame12.nii.gz: voxel data unreadable (EOFError"),
}


@pytest.mark.parametrize("case", sorted(BAD_ACDC))
def test_bad_acdc_input_is_one_line_error_naming_the_file(case, acdc_raw, tmp_path, capsys):
    raw = tmp_path / "ACDC"
    shutil.copytree(acdc_raw[0], raw)
    mutate, expected = BAD_ACDC[case]
    mutate(raw)
    rc, _, err = run(capsys, "convert-acdc", raw, tmp_path / "out")
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ACDC"]  # no staging folder left behind


def test_no_patients_found(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "convert-acdc", tmp_path / "empty", tmp_path / "out")
    assert rc == 2 and "empty: no patientNNN folders found" in err
    (tmp_path / "empty" / "patient001").mkdir()  # RAW_DIR one level too deep
    rc, _, err = run(capsys, "convert-acdc", tmp_path / "empty" / "patient001", tmp_path / "out")
    assert rc == 2 and err.strip() == (f"error: {tmp_path / 'empty' / 'patient001'}: RAW_DIR is one patient's folder; point it at "
                                       f"the folder that holds the patientNNN folders (e.g. {tmp_path / 'empty'})")


def test_an_out_dir_that_cannot_be_one_is_a_one_line_error(acdc_raw, tmp_path, capsys):
    """An OUT_DIR under a file used to end in FileExistsError, an empty one meant the current folder."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], afile / "sub")
    assert rc == 2 and err.strip() == f"error: OUT_DIR {afile / 'sub'}: is inside {afile}, a file, not a folder; give a folder"
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], "")
    assert rc == 2 and err.strip() == "error: OUT_DIR '': give a folder path"
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_dir_protection_and_failed_overwrite_keeps_old(acdc_raw, converted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(converted[0], out)
    before = all_files(out)
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], out)
    assert rc == 2 and "not empty" in err and "--overwrite" in err
    raw = tmp_path / "ACDC"
    shutil.copytree(acdc_raw[0], raw)
    BAD_ACDC["label_value"][0](raw)  # a bad label in the last patient: found before any patient is converted
    rc, printed, err = run(capsys, "convert-acdc", raw, out, "--overwrite")
    assert rc == 2 and "outside 0..3" in err and "[1/" not in printed
    assert all_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ACDC", "out"]
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], out, "--overwrite")
    assert rc == 0, err
    assert all_files(out) == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], stranger, "--overwrite")
    assert rc == 2 and "does not look like a converted dataset" in err
    assert (stranger / "notes.txt").read_text() == "keep me"
    # a manifest.json alone does not make a folder a dataset (it used to be wiped with everything in it)
    (stranger / "manifest.json").write_text("{}")
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], stranger, "--overwrite")
    assert rc == 2 and "OUT_DIR holds entries a converted dataset does not have (notes.txt), which --overwrite would delete" in err
    (stranger / "notes.txt").unlink()
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], stranger, "--overwrite")
    assert rc == 2 and 'manifest.json: not the manifest of a converted dataset (no "format": "ssl4mis-acdc-h5/1")' in err
    assert (stranger / "manifest.json").read_text() == "{}"
    (out / ".DS_Store").write_bytes(b"\0")  # a folder-view file does not block --overwrite
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], out, "--overwrite")
    assert rc == 0, err
    assert all_files(out) == before
    (out / "my_notes.txt").write_text("keep me")  # a file a user added to a converted dataset
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], out, "--overwrite")
    assert rc == 2 and "(my_notes.txt)" in err and (out / "my_notes.txt").read_text() == "keep me"
    (out / "my_notes.txt").unlink()
    (out / "data" / "mine").mkdir()  # inside data/ too (it used to be deleted without a word)
    (out / "data" / "mine" / "keep.txt").write_text("keep me")
    (out / "data" / "slices" / "notes.md").write_text("keep me")
    (out / "data" / "manifest.json").write_text("{}")  # a top-level name is no excuse inside data/
    rc, _, err = run(capsys, "convert-acdc", acdc_raw[0], out, "--overwrite")
    assert rc == 2 and "(data/manifest.json, data/mine, data/slices/notes.md)" in err
    assert (out / "data" / "mine" / "keep.txt").is_file()


def test_a_ctrl_c_that_python_swallowed_still_keeps_the_old_dataset(acdc_raw, converted, tmp_path):
    """Python ignores a KeyboardInterrupt raised inside a weakref callback (h5py freeing an object): the conversion
    went on and replaced OUT_DIR after Ctrl-C. The interrupt is now recorded and checked before the swap."""
    import signal

    from medseg_platform.data.convert import staged_output

    out = tmp_path / "out"
    shutil.copytree(converted[0], out)
    before = all_files(out)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a command (a test runner may differ)
    try:
        with pytest.raises(KeyboardInterrupt):
            with staged_output(out) as staging:
                (staging / "new.txt").write_text("new")
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:  # swallowed, as Python does in a weakref callback
                    pass
                (staging / "more.txt").write_text("the work went on")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert all_files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_output(tmp_path / "next") as staging:  # the record ends with its block: the next write is not refused
        (staging / "new.txt").write_text("new")
    assert (tmp_path / "next" / "new.txt").is_file()


# ------------------------------------------------------------------------------- generic NIfTI
def make_generic(root: Path, names: list[str], num_classes: int = 3, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        image, label = fake_pair(rng, num_classes)
        save_nifti(root / f"{name}.nii.gz", image)
        save_nifti(root / f"{name}_gt.nii.gz", label)


GENERIC = ["a", "sub/b", "sub/deeper/c.v2", "pat1_frame01", "pat1_frame02", "d", "e", "f", "g"]


def test_generic_recursive_with_label_skipping_and_patients(tmp_path, capsys):
    raw = tmp_path / "mine"
    make_generic(raw, GENERIC)
    rc, out_text, err = run(capsys, "convert-nifti", raw, tmp_path / "out", "--image-glob", "**/*.nii.gz",
                            "--label-suffix", "_gt", "--num-classes", "3", "--seed", "4")
    assert rc == 0 and err == "", err  # every file used, every class present: no warning
    layout = AcdcLayout(tmp_path / "out", num_classes=3)
    cases = layout.train_cases + layout.val_cases + layout.test_cases
    assert sorted(cases) == ["a", "b", "c_v2", "d", "e", "f", "g", "pat1_frame01", "pat1_frame02"]
    splits = {name: [c for c in layout.cases(name) if c.startswith("pat1")] for name in ("train", "val", "test")}
    assert sorted(len(v) for v in splits.values()) == [0, 0, 2]  # one patient, one split
    # 8 patients: val round(0.8) = 1, test round(1.6) = 2, train 5
    assert len(layout.train_patients) == 5
    assert len({c.split("_frame")[0] for c in layout.val_cases}) == 1
    assert len({c.split("_frame")[0] for c in layout.test_cases}) == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["cases"]["c_v2"]["source_image"] == "sub/deeper/c.v2.nii.gz"
    assert manifest["cases"]["pat1_frame02"]["patient"] == "pat1"
    assert manifest["source"]["num_classes"] == 3 and manifest["source"]["seed"] == 4
    vol = layout.read_volume("b")
    assert vol.spacing == SPACING_DHW and vol.image.shape == SHAPE_DHW
    assert "c_v2" in out_text


def test_generic_non_recursive_glob_and_determinism(tmp_path):
    raw = tmp_path / "mine"
    make_generic(raw, GENERIC)
    warnings = []
    first = convert_nifti(raw, tmp_path / "o1", "*.nii.gz", "_gt", 3, SplitSpec(kind="random", seed=2), warn=warnings.append)
    convert_nifti(raw, tmp_path / "o2", "*.nii.gz", "_gt", 3, SplitSpec(kind="random", seed=2))
    assert first.num_cases == 7  # top level only: a, pat1 x2, d, e, f, g
    # the two subfolders' pairs are left out, and the warning says so (it used to be dropped without a word)
    assert warnings == [f"4 NIfTI file(s) under {raw} are not converted: neither an image that --image-glob '*.nii.gz' "
                        f"matches nor its label (e.g. {Path('sub/b.nii.gz')}); to include them, widen the glob "
                        "('**/*.nii.gz' also reads subfolders)"]
    assert all_files(tmp_path / "o1") == all_files(tmp_path / "o2")
    other = convert_nifti(raw, tmp_path / "o3", "*.nii.gz", "_gt", 3, SplitSpec(kind="random", seed=3))
    assert other.split != first.split


def test_a_class_in_no_label_is_a_warning_naming_num_classes(tmp_path, capsys):
    """--num-classes above the data's: the conversion goes on (a dataset may lack a class), with one warning line."""
    raw = tmp_path / "mine"
    make_generic(raw, ["a", "b", "c"], num_classes=3)
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "out", "--num-classes", "4", "--class-names", "RV,Myo,LV")
    assert rc == 0 and AcdcLayout(tmp_path / "out", num_classes=4).test_cases
    assert err == ("warning: label 3 (LV): in no label of the 3 volume(s): no trial learns to segment it. Check "
                   "--num-classes 4 (background included) if the data holds fewer classes\n")


def test_voxel_sizes_a_unit_error_away_from_millimetres_are_one_warning(tmp_path, capsys):
    """Sizes in metres written as mm (1.5 mm stored as 0.0015, unit code missing) converted without a word, and every
    HD95/ASD of the dataset came out 1000x too small (the data probe). Now one warning names the first such volume and
    counts them; the conversion goes on (the sizes may be right), and sizes of real scans stay silent."""
    raw = tmp_path / "mine"
    make_generic(raw, ["a", "b", "c"])
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "ok", "--num-classes", "3")
    assert rc == 0 and err == ""  # ZOOMS_XYZ: clinical sizes
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        image, label = fake_pair(rng, 3)
        save_nifti(raw / f"{name}.nii.gz", image, zooms=(0.0015, 0.0015, 0.01))
        save_nifti(raw / f"{name}_gt.nii.gz", label, zooms=(0.0015, 0.0015, 0.01))
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "out", "--num-classes", "3")
    assert rc == 0 and AcdcLayout(tmp_path / "out", num_classes=3).test_cases
    assert err == (f"warning: voxel sizes outside 0.01-100 mm: {raw / 'a.nii.gz'} has (dz, dy, dx) = (0.01, 0.0015, 0.0015) "
                   "mm and 1 more (2 of 3 volume(s)). HD95 and ASD are reported in mm and scale with these sizes: if the "
                   "header's pixdim is in metres or microns, set its unit (xyzt_units), which the conversion reads and "
                   "converts\n")
    assert implausible_spacing_warning({Path("x"): (10.0, 1.5, 1.5)}) is None
    assert implausible_spacing_warning({Path("x"): (150.0, 1.5, 1.5)}).startswith("voxel sizes outside 0.01-100 mm: x has")


def test_labels_without_foreground_in_the_training_patients_are_refused_before_writing(tmp_path, capsys):
    """All-background labels converted with exit 0 and a class warning; then `medseg data check` and every trial refused
    the dataset (the data probe)."""
    raw = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        save_nifti(raw / f"{name}.nii.gz", rng.integers(0, 500, SHAPE_XYZ).astype(np.int16))
        save_nifti(raw / f"{name}_gt.nii.gz", np.zeros(SHAPE_XYZ, np.uint8))
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "out")
    assert rc == 2 and not (tmp_path / "out").exists()
    assert err.strip().endswith("the labels of the 1 training patient(s) hold no foreground (every voxel is background), so "
                                "there is nothing to learn; check the label files and --label-suffix"), err
    # foreground in one patient only: the split decides, and --seed is the way out
    label = np.zeros(SHAPE_XYZ, np.uint8)
    label[1:3, 1:3, :] = 1
    save_nifti(raw / "a_gt.nii.gz", label)
    outcomes = {}
    for seed in (0, 1):  # train patient c, then a (medseg_platform.data.acdc_split.make_split)
        warnings = []
        try:
            result = convert_nifti(raw, tmp_path / f"o{seed}", "*.nii.gz", "_gt", 2, SplitSpec(kind="random", seed=seed),
                                   warn=warnings.append)
        except DataError as exc:
            outcomes["refused"] = str(exc)
            assert not (tmp_path / f"o{seed}").exists()
        else:
            assert result.split.train == ("a",)
            outcomes["converted"] = warnings
    assert outcomes["refused"].endswith("check the label files and --label-suffix, or draw another split (--seed)")
    assert outcomes["converted"] == [
        "the labels of the 1 val patient(s) hold no foreground: validation Dice cannot tell models apart (check the label "
        "files, or draw another split with --seed)",
        "the labels of the 1 test patient(s) hold no foreground: the test metrics score no structure (check the label "
        "files, or draw another split with --seed)"]


@pytest.mark.parametrize(
    "setup, argv, expected",
    [
        (lambda raw: make_generic(raw, ["x.y", "x_y", "z", "w"]), [], "case id 'x_y' is also the id of"),
        (lambda raw: (make_generic(raw, ["a", "b", "c"]), (raw / "b_gt.nii.gz").unlink()), [], "b_gt.nii.gz: label file for image b.nii.gz is missing"),
        (lambda raw: make_generic(raw, ["a", "b", "c"], num_classes=4), ["--num-classes", "2"], "converted with convert-nifti --num-classes 4)"),
        (lambda raw: make_generic(raw, []) or save_nifti(raw / "a_gt.nii.gz", np.zeros(SHAPE_XYZ, np.uint8)), [], "all labels ending in '_gt'"),
        (lambda raw: make_generic(raw, ["a", "b"]), ["--val-count", "1", "--test-count", "1"], "2 patient(s) cannot be split"),
        (lambda raw: make_generic(raw, ["a", "b", "c"]), ["--num-classes", "1"], "--num-classes 1"),
        # these three used to end in a ValueError traceback or read files outside RAW_DIR
        (lambda raw: make_generic(raw, ["a", "b", "c"]), ["--image-glob", ""], "--image-glob '': give a pattern relative to RAW_DIR"),
        (lambda raw: make_generic(raw, ["a", "b", "c"]), ["--label-suffix", "/gt"], "--label-suffix '/gt': a file-name suffix, not a path"),
        (lambda raw: make_generic(raw, ["a", "b", "c"]) or make_generic(raw.parent / "other", ["d", "e", "f"]),
         ["--image-glob", "../other/*.nii.gz"], "must stay inside RAW_DIR (no '..'"),
        # a label without its image used to be dropped silently (5 of 6 cases converted, exit 0)
        (lambda raw: make_generic(raw, ["a", "b", "c"]) or save_nifti(raw / "d_gt.nii.gz", np.zeros(SHAPE_XYZ, np.uint8)), [],
         "d_gt.nii.gz: a label without its image (1 such label(s) under"),
        # ... but where the image is there with another extension, the missing label is what is named
        (lambda raw: make_generic(raw, ["b", "c", "d"]) or save_nifti(raw / "a.nii", np.ones(SHAPE_XYZ, np.int16))
         or save_nifti(raw / "a_gt.nii.gz", np.zeros(SHAPE_XYZ, np.uint8)), ["--image-glob", "*.nii*"],
         "a_gt.nii: label file for image a.nii is missing"),
        # a glob that matched nothing said "all labels ending in '_gt'" and hid which files are there
        (lambda raw: None, [], "no file matches --image-glob '*.nii.gz'; the folder holds no .nii or .nii.gz file at any depth"),
        (lambda raw: make_generic(raw / "sub", ["a", "b", "c"]), [],
         "it holds 6 NIfTI file(s) (e.g. sub/a.nii.gz): try --image-glob '**/*.nii.gz'"),
        # the converter review: a negative label value was told to use a bare "--num-classes"; an RGB image was "corrupt"
        (lambda raw: make_generic(raw, ["a", "b", "c"]) or save_nifti(raw / "b_gt.nii.gz", np.full(SHAPE_XYZ, -1, np.int16)), [],
         "b_gt.nii.gz: label value(s) -1 outside 0..3 (fix the label file)"),
        (lambda raw: make_generic(raw, ["a", "b", "c"]) or save_nifti(
            raw / "b.nii.gz", np.zeros(SHAPE_XYZ, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])), [],
         "b.nii.gz: structured voxels (RGB or several channels"),
    ],
    ids=["duplicate_id", "label_missing", "label_range", "only_labels", "too_few", "num_classes", "empty_glob", "suffix_path",
         "glob_outside", "label_without_image", "label_of_another_extension", "empty_folder", "pairs_in_a_subfolder",
         "negative_label", "rgb_image"],
)
def test_generic_bad_input(setup, argv, expected, tmp_path, capsys):
    raw = tmp_path / "mine"
    raw.mkdir()
    setup(raw)
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "out", *argv)
    assert rc == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- nifti helpers
def test_nifti_name_helpers_and_2d_header(tmp_path):
    assert split_nifti_name("dir/case.v1.nii.gz") == ("case.v1", ".nii.gz")
    assert split_nifti_name("case.nii") == ("case", ".nii")
    with pytest.raises(DataError, match="not a NIfTI file name"):
        split_nifti_name("case.h5")
    assert sanitize_case_id("a b.c-d_e") == "a_b_c-d_e"
    # ids the lists refuse (a spreadsheet formula in per_case.csv) are never written: "-scan01" was (the diff review)
    assert [sanitize_case_id(stem) for stem in ("-scan01", "=x", "+x", "@x", "--x")] == ["_scan01", "_x", "_x", "_x", "_-x"]
    save_nifti(tmp_path / "flat.nii.gz", np.zeros((16, 20), np.int16), (0.7, 0.8))
    header = read_header(tmp_path / "flat.nii.gz")
    assert header.shape == (1, 20, 16) and header.spacing == (1.0, 0.8, 0.7)


def test_a_2d_label_fits_a_one_slice_image_whatever_its_slice_thickness(tmp_path):
    """A 2-D file has no slice thickness (read as 1 mm); along an axis of one voxel the sizes measure nothing, so a 2-D
    label on an 8 mm one-slice image used to be refused with a voxel size it never recorded."""
    from medseg_platform.data.nifti import check_same_grid

    save_nifti(tmp_path / "image.nii.gz", np.ones((16, 20, 1), np.int16), (1.5, 1.25, 8.0))
    save_nifti(tmp_path / "label.nii.gz", np.zeros((16, 20), np.uint8), (1.5, 1.25))
    save_nifti(tmp_path / "other.nii.gz", np.zeros((16, 20), np.uint8), (1.4, 1.25))
    check_same_grid(read_header(tmp_path / "image.nii.gz"), read_header(tmp_path / "label.nii.gz"))
    with pytest.raises(DataError, match=r"other.nii.gz: label voxel size \(1.0, 1.25, 1.4\) mm differs"):
        check_same_grid(read_header(tmp_path / "image.nii.gz"), read_header(tmp_path / "other.nii.gz"))


def test_an_info_cfg_saved_with_a_byte_order_mark_is_read(acdc_raw, tmp_path, capsys):
    """Windows editors save UTF-8 with a BOM; its first key used to read as '\ufeffED' ('no ED: line')."""
    raw = tmp_path / "ACDC"
    shutil.copytree(acdc_raw[0], raw)
    info = next(raw.rglob("patient099/Info.cfg"))
    info.write_bytes(b"\xef\xbb\xbf" + info.read_bytes())
    rc, _, err = run(capsys, "convert-acdc", raw, tmp_path / "out")
    assert rc == 0, err


def test_stored_voxel_sizes_negative_counts_as_magnitude_and_zero_only_along_one_voxel(tmp_path):
    """nibabel's loader repairs pixdim (|x|, 0 -> 1) and the header pass reads the stored bytes: a negative size stays
    accepted as its magnitude, as before; a zero is refused unless its axis has one voxel."""
    def patched(name: str, shape, index: int, value: float) -> Path:
        path = tmp_path / name
        save_nifti(path, np.zeros(shape, np.int16))
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[76 + 4 * index:80 + 4 * index] = struct.pack("<f", value)  # NIfTI-1 pixdim[index]
        path.write_bytes(gzip.compress(bytes(data)))
        return path

    assert read_header(patched("neg.nii.gz", SHAPE_XYZ, 1, -1.5)).spacing == (10.0, 1.25, 1.5)
    assert read_header(patched("one_slice.nii.gz", (16, 20, 1), 3, 0.0)).spacing == (1.0, 1.25, 1.5)
    with pytest.raises(DataError, match=r"pixdim\) must be non-zero numbers, got \(1.5, 0.0, 10.0\)"):
        read_header(patched("zero.nii.gz", SHAPE_XYZ, 2, 0.0))


def test_a_label_stored_in_another_orientation_is_refused_and_other_units_become_mm(tmp_path):
    """Voxels of a pair are matched by index: a label stored x-flipped (with an affine that says so) is the same anatomy
    in the world but a mirrored label map by index, and used to be converted as such. A header in microns used to be
    recorded as mm (1000x distances)."""
    image, label = fake_pair(np.random.default_rng(0))
    raw = tmp_path / "raw"
    for case in ("a", "b", "c"):
        save_nifti(raw / f"{case}.nii.gz", image)
    flipped = np.diag([*ZOOMS_XYZ, 1.0])
    flipped[0, 0], flipped[0, 3] = -ZOOMS_XYZ[0], (SHAPE_XYZ[0] - 1) * ZOOMS_XYZ[0]  # index i lies where the image's 15 - i does
    nib.save(nib.Nifti1Image(np.ascontiguousarray(label[::-1]), flipped), raw / "a_gt.nii.gz")
    save_nifti(raw / "b_gt.nii.gz", label)
    save_nifti(raw / "c_gt.nii.gz", label)
    with pytest.raises(DataError, match=r"a_gt.nii.gz: label is stored in another orientation than image a.nii.gz \(by their "
                                        r"affines, voxel axis i points the other way\)"):
        convert_nifti(raw, tmp_path / "out", "*.nii.gz", "_gt", 4, SplitSpec(kind="random", val_count=1, test_count=1))
    assert not (tmp_path / "out").exists()
    bare = nib.Nifti1Image(label, None)  # no orientation recorded (qform and sform codes 0): paired by index, as SSL4MIS did
    bare.header.set_zooms(ZOOMS_XYZ)
    nib.save(bare, raw / "a_gt.nii.gz")
    assert read_header(raw / "a_gt.nii.gz").world is None and read_header(raw / "a.nii.gz").world is not None
    convert_nifti(raw, tmp_path / "out", "*.nii.gz", "_gt", 4, SplitSpec(kind="random", val_count=1, test_count=1))
    micron = nib.load(raw / "b.nii.gz")
    micron.header.set_xyzt_units("micron")
    nib.save(micron, tmp_path / "micron.nii.gz")
    assert read_header(tmp_path / "micron.nii.gz").spacing == (0.01, 0.00125, 0.0015)
    # the affine medseg predict writes predictions with is in mm too (with units mm), so they overlay the source
    np.testing.assert_allclose(source_affine(tmp_path / "micron.nii.gz"), np.diag([0.0015, 0.00125, 0.01, 1.0]))
    micron.header["xyzt_units"] = 5  # a code nibabel does not name: a one-line error, not its KeyError
    nib.save(micron, tmp_path / "odd.nii.gz")
    with pytest.raises(DataError, match=r"odd.nii.gz: spatial unit 'code 5' in the header \(xyzt_units\) is not a length"):
        read_header(tmp_path / "odd.nii.gz")
    assert read_header(raw / "b.nii.gz").spacing == SPACING_DHW


def test_a_mask_saved_as_0_255_is_told_to_be_remapped_not_to_take_256_classes(tmp_path, capsys):
    """A label holding 255 beside a few classes was advised `--num-classes 256` (254 empty classes, a 256-way network;
    the converter review), and so were values 0, 4, 255 or a 0/128/255 mask (the diff review). The count is named only
    where the file looks like a dataset of more classes (half of the values 0..max occur in it)."""
    raw = tmp_path / "raw"
    make_generic(raw, ["a", "b", "c"])
    image = nib.load(str(raw / "c_gt.nii.gz"))
    label = np.asarray(image.dataobj).copy()
    label[0, 0, 0] = 255
    nib.save(nib.Nifti1Image(label.astype(np.uint8), image.affine), str(raw / "c_gt.nii.gz"))
    rc, _, err = run(capsys, "convert-nifti", raw, tmp_path / "out", "--num-classes", "3")
    assert rc == 2 and "a value 255 is usually a mask saved as 0/255 or an 'ignore' value: map it to its class" in err, err
    assert "--num-classes 256" not in err
    from medseg_platform.data.nifti import check_label
    from medseg_platform.errors import DataError

    for values, num_classes, hint in (([0, 4, 255], 4, "; a value 255 is usually a mask saved as 0/255"),
                                      ([0, 128, 255], 2, "; a value 255 is usually a mask saved as 0/255"),
                                      ([0, 200], 4, ")"),  # no hint: a mislabelled file, not 201 classes
                                      (list(range(40)), 4, "; a dataset with more classes is converted with convert-nifti "
                                                           "--num-classes 40)"),
                                      ([0, 255], 100, ")")):
        with pytest.raises(DataError) as raised:
            check_label(np.array(values), num_classes, "x")
        message = str(raised.value)
        assert message.startswith("x: label value(s) ") and f"outside 0..{num_classes - 1} (fix the label file{hint}" in message, message
