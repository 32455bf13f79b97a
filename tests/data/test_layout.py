from pathlib import Path

import h5py
import numpy as np
import pytest

from medseg_platform.data import layout
from medseg_platform.errors import DataError


def test_ids_round_trip():
    assert layout.slice_id("patient099_frame01", 3) == "patient099_frame01_slice_3"
    assert layout.case_of_slice("patient099_frame01_slice_13") == "patient099_frame01"
    assert layout.patient_of_case("patient099_frame02") == "patient099"
    assert layout.patient_of_case("liver_7") == "liver_7"
    with pytest.raises(DataError, match="not a slice id"):
        layout.case_of_slice("patient099_frame01")


def test_reader_orders_and_reads(tiny_root: Path):
    ds = layout.AcdcLayout(tiny_root)
    assert ds.train_patients == ["patient004", "patient001", "patient003", "patient002"]  # file order, not sorted
    assert len(ds.train_slices) == 4 * 2 * 3
    assert ds.train_cases[:2] == ["patient004_frame01", "patient004_frame02"]
    assert ds.val_cases == ["patient005_frame01", "patient005_frame02"]
    image, label = ds.read_slice(ds.train_slices[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == (12, 10)
    vol = ds.read_volume("patient006_frame02")
    assert vol.image.shape == vol.label.shape == (3, 12, 10)
    assert vol.spacing == (5.0, 1.5, 1.25)
    # a slice file equals the matching plane of its volume
    vol4 = ds.read_volume("patient004_frame01")
    np.testing.assert_array_equal(vol4.label[2], ds.read_slice("patient004_frame01_slice_2")[1])
    assert ds.slices_of_patients(["patient003"]) == [s for s in ds.train_slices if s.startswith("patient003")]


def test_writer_is_deterministic(tmp_path: Path):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(2, 8, 8)).astype(np.float32)
    label = rng.integers(0, 4, (2, 8, 8)).astype(np.uint8)
    a = layout.write_volume(tmp_path / "a", "c", image, label, (1, 1, 1))
    b = layout.write_volume(tmp_path / "b", "c", image, label, (1, 1, 1))
    assert a.read_bytes() == b.read_bytes()


def test_writer_rejects_bad_arrays(tmp_path: Path):
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        layout.write_slice(tmp_path, "c", 0, np.full((4, 4), 2.0), np.zeros((4, 4)))
    with pytest.raises(DataError, match="equal"):
        layout.write_slice(tmp_path, "c", 0, np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(DataError, match="spacing"):
        layout.write_volume(tmp_path, "c", np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), (1, 0, 1))
    assert not list(tmp_path.rglob("*.h5"))


def test_reader_arguments_of_the_wrong_kind_are_config_errors(tiny_root: Path):
    from medseg_platform.errors import ConfigError

    with pytest.raises(ConfigError, match="num_classes 'four': a whole number >= 2"):
        layout.AcdcLayout(tiny_root, "four")
    with pytest.raises(ConfigError, match="dataset root None: give a folder path"):
        layout.AcdcLayout(None)
    assert layout.AcdcLayout(tiny_root, np.int64(4)).num_classes == 4


def test_reader_errors_name_the_file(tiny_root: Path, tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        layout.AcdcLayout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train_slices.list"):
        layout.AcdcLayout(tmp_path / "empty")

    ds = layout.AcdcLayout(tiny_root)
    sid = ds.train_slices[0]
    path = ds.slice_path(sid)
    with h5py.File(path, "w") as fh:  # an h5 without `label`
        fh["image"] = np.zeros((12, 10), np.float32)
    with pytest.raises(DataError, match=r"slice_0\.h5: missing dataset key\(s\) \['label'\]"):
        ds.read_slice(sid)

    vol_path = ds.volume_path("patient005_frame01")
    vol_path.write_bytes(vol_path.read_bytes()[:200])  # truncated h5
    with pytest.raises(DataError, match="patient005_frame01.h5: unreadable HDF5 file"):
        ds.read_volume("patient005_frame01")
    with pytest.raises(DataError, match="file is missing"):
        ds.read_volume("patient999_frame01")
