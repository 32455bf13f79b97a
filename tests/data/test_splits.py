import pytest

from medseg_platform.data.splits import resolve_patient_count, select_labelled
from medseg_platform.errors import ConfigError

ACDC_ORDER = ["099", "038", "050", "100", "058", "021", "049", "020"] + [f"{i:03d}" for i in range(200, 262)]
ACDC_SLICES = [f"patient{p}_frame{f}_slice_{k}" for p in ACDC_ORDER for f in ("01", "02") for k in range(8 if p == "099" else 10)]


@pytest.mark.parametrize("fraction, expected", [("1%", 1), ("5%", 3), ("10%", 7), ("100%", 70), ("3", 3), (7, 7), ("20%", 14)])
def test_published_percent_mapping_on_70_patients(fraction, expected):
    assert resolve_patient_count(fraction, 70).patients == expected


def test_percent_scales_to_smaller_training_sets():
    assert resolve_patient_count("10%", 14).patients == 1  # 14 * 7/70 = 1.4 -> 1
    assert resolve_patient_count("1%", 14).patients == 1  # never zero
    assert "published ACDC mapping" in resolve_patient_count("5%", 70).describe()


@pytest.mark.parametrize("bad, message", [("0", "0 labelled"), ("71", "only 70"), ("0%", "percent"), ("abc", "expected"),
                                          ("1.5", "whole number"), ("101%", "percent")])
def test_bad_fractions(bad, message):
    with pytest.raises(ConfigError, match=message):
        resolve_patient_count(bad, 70)


def test_published_takes_first_patients_in_file_order():
    subset = select_labelled(ACDC_SLICES, "5%")
    assert subset.patients == ("patient099", "patient038", "patient050")
    assert len(subset.labelled_slices) == 16 + 20 + 20
    assert set(subset.labelled_slices).isdisjoint(subset.unlabelled_slices)
    assert len(subset.labelled_slices) + len(subset.unlabelled_slices) == len(ACDC_SLICES)
    assert select_labelled(ACDC_SLICES, "3", seed=5).patients == subset.patients  # same for every seed


def test_random_is_seeded_and_differs_across_seeds():
    a = select_labelled(ACDC_SLICES, "7", "random", seed=1)
    b = select_labelled(ACDC_SLICES, "7", "random", seed=1)
    c = select_labelled(ACDC_SLICES, "7", "random", seed=2)
    assert a.patients == b.patients and len(set(a.patients)) == 7
    assert a.patients != c.patients
    assert all(s.split("_frame")[0] in a.patients for s in a.labelled_slices)
    with pytest.raises(ConfigError, match="seed is required"):
        select_labelled(ACDC_SLICES, "7", "random")


def test_released_slices_reproduces_partial_patient():
    subset = select_labelled(ACDC_SLICES, "1", "released_slices")
    assert len(subset.labelled_slices) == 23  # 16 slices of patient099 (8 + 8 here) + 7 of the next patient
    assert subset.labelled_slices == tuple(ACDC_SLICES[:23])
    assert subset.patients == ("patient099", "patient038")
    with pytest.raises(ConfigError, match="no released slice count"):
        select_labelled(ACDC_SLICES, "2", "released_slices")


def test_record_contains_patient_ids():
    record = select_labelled(ACDC_SLICES, "1%", "random", seed=3).to_dict()
    assert record["strategy"] == "random" and record["seed"] == 3
    assert len(record["patients"]) == 1 and record["num_patients"] == 1
    with pytest.raises(ConfigError, match="unknown"):
        select_labelled(ACDC_SLICES, "1", "nope")
