from pathlib import Path

import h5py
import numpy as np

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
    # 5) the list names a missing case
    (tiny_root / "test.list").write_text("patient006_frame01\npatient006_frame02\npatient777_frame01\n")

    report = check_dataset(tiny_root)
    text = "\n".join(report.problems)
    assert len(report.problems) == 5, text
    assert f"{ds.train_slices[0]}.h5: missing dataset key(s) ['label']" in text
    assert f"{ds.train_slices[1]}.h5: 'label' has value(s) [7] outside 0..3" in text
    assert "patient005_frame01.h5: 'image' has 1 NaN/inf value(s)" in text
    assert "patient006_frame02.h5: unreadable HDF5 file" in text
    assert "patient777_frame01.h5: file is missing" in text
    assert all("\n" not in p for p in report.problems)
    # every readable file was still counted (all but the one without `label`)
    assert report.splits["train"].items == 23
    assert main(["data", "check", str(tiny_root)]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 5 and "5 problem(s)" in out


def test_missing_root_is_a_one_line_error(tmp_path: Path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err
