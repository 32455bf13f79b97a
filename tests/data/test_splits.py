import pytest

from medseg_platform.data.splits import epoch_steps, has_released_slices, resolve_patient_count, select_labelled
from medseg_platform.errors import ConfigError

from medseg_platform.data.acdc_split import PUBLISHED_TRAIN

ACDC_ORDER = [p.removeprefix("patient") for p in PUBLISHED_TRAIN]  # SSL4MIS's order: 099, 038, 050, 100, ...
ACDC_SLICES = [f"patient{p}_frame{f}_slice_{k}" for p in ACDC_ORDER for f in ("01", "02") for k in range(8 if p == "099" else 10)]
# shaped like the SSL4MIS ACDC list: 1312 slices of 70 patients; slices per frame of the first seven patients such that
# 23 = all 16 of patient099_frame01 + 7 of frame02, 68 = 32 + 16 + 20 (099, 038, 050) and 136 = 7 whole patients
_FRAME_SLICES = [16, 8, 10, 9, 8, 8, 9] + [10] * 21 + [9] * 42
SSL4MIS_SLICES = [f"patient{p}_frame{f}_slice_{k}" for p, n in zip(ACDC_ORDER, _FRAME_SLICES) for f in ("01", "02")
                  for k in range(n)]


@pytest.mark.parametrize("fraction, expected", [("1%", 1), ("5%", 3), ("10%", 7), ("100%", 70), ("3", 3), (7, 7), ("20%", 14)])
def test_published_percent_mapping_on_70_patients(fraction, expected):
    assert resolve_patient_count(fraction, 70).patients == expected


def test_percent_scales_to_smaller_training_sets():
    assert resolve_patient_count("10%", 14).patients == 1  # 14 * 7/70 = 1.4 -> 1
    assert resolve_patient_count("1%", 14).patients == 1  # never zero
    assert "published ACDC mapping" in resolve_patient_count("5%", 70).describe()


@pytest.mark.parametrize("bad, message", [("0", "0 labelled"), ("71", "only 70"), ("0%", "percent"), ("abc", "expected"),
                                          ("1.5", "whole number"), ("101%", "percent"),
                                          ("9" * 400, "too large a number")])  # was an OverflowError
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
    # recorded in file order (train_slices.list's), not in the order drawn: the record of a seed is one text
    ordering = list(dict.fromkeys(s.split("_frame")[0] for s in ACDC_SLICES))
    assert list(a.patients) == sorted(a.patients, key=ordering.index)
    assert all(s.split("_frame")[0] in a.patients for s in a.labelled_slices)
    with pytest.raises(ConfigError, match="seed is required"):
        select_labelled(ACDC_SLICES, "7", "random")
    for seed in (-1, 2.5, "3"):  # -1 was numpy's ValueError
        with pytest.raises(ConfigError, match=r"labelled strategy random: the seed must be a whole number >= 0, got "):
            select_labelled(ACDC_SLICES, "7", "random", seed=seed)


def test_splits_cli_rejects_a_seed_the_strategy_would_ignore(tiny_root, capsys):
    from analysis.console import main

    assert main(["data", "splits", str(tiny_root), "--labelled", "1", "--seed", "5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seed: only used with --strategy random (the published strategy has no randomness)"
    assert main(["data", "splits", str(tiny_root), "--labelled", "1", "--strategy", "random", "--seed", "5"]) == 0
    capsys.readouterr()
    # several fractions after one flag, as the study scripts take them (argparse refused '5%' as an unrecognized argument)
    assert main(["data", "splits", str(tiny_root), "--labelled", "1", "50%", "--labelled", "3"]) == 0
    assert [line.split(";")[0] for line in capsys.readouterr().out.splitlines()] == [
        "label fraction 1 -> 1 of 4 training patients (25.0%", "label fraction 50% -> 2 of 4 training patients (50.0%",
        "label fraction 3 -> 3 of 4 training patients (75.0%"]


def test_released_slices_reproduces_partial_patient():
    assert len(SSL4MIS_SLICES) == 1312 and has_released_slices(SSL4MIS_SLICES)
    subset = select_labelled(SSL4MIS_SLICES, "1", "released_slices")
    assert subset.labelled_slices == tuple(SSL4MIS_SLICES[:23])  # patient099's ED frame (16) + 7 of its ES frame
    assert subset.labelled_slices[-1] == "patient099_frame02_slice_6" and subset.patients == ("patient099",)
    for patients in ("3", "7"):  # whole patients: the same as published
        assert select_labelled(SSL4MIS_SLICES, patients, "released_slices").labelled_slices == \
            select_labelled(SSL4MIS_SLICES, patients).labelled_slices
    with pytest.raises(ConfigError, match="no released slice count"):
        select_labelled(SSL4MIS_SLICES, "2", "released_slices")


def test_released_slices_need_the_released_list():
    # any other list (a phantom, another dataset): the released counts do not apply
    assert not has_released_slices(ACDC_SLICES) and not has_released_slices(SSL4MIS_SLICES[:-1])
    with pytest.raises(ConfigError, match=r"released_slices: the released slice counts belong to the SSL4MIS ACDC list "
                                          r"\(1312 slices of 70 patients\), this train_slices.list has 1396 slices of 70 "
                                          r"patients \(use strategy 'published'\)"):
        select_labelled(ACDC_SLICES, "1", "released_slices")


def test_epoch_steps_are_the_released_unlabelled_loader_lengths():
    steps = [epoch_steps(select_labelled(SSL4MIS_SLICES, n, "released_slices"), 4) for n in ("1", "3", "7")]
    assert steps == [322, 311, 294]  # floor((1312 - 23 / 68 / 136) / 4)
    published = select_labelled(SSL4MIS_SLICES, "1")  # all 32 slices of patient099: 1280 unlabelled
    assert (epoch_steps(published, 4), epoch_steps(published, 8), epoch_steps(published, 2000)) == (320, 160, 1)
    with pytest.raises(ConfigError, match="epoch_steps: unlabelled_batch must be an int >= 1"):
        epoch_steps(published, 0)


def test_record_contains_patient_ids():
    record = select_labelled(ACDC_SLICES, "1%", "random", seed=3).to_dict()
    assert record["strategy"] == "random" and record["seed"] == 3
    assert len(record["patients"]) == 1 and record["num_patients"] == 1
    with pytest.raises(ConfigError, match="unknown"):
        select_labelled(ACDC_SLICES, "1", "nope")


def test_a_released_cut_inside_a_frame_of_another_order_is_a_warning(tmp_path):
    """convert-acdc writes a frame's slices in index order, the release in another: both lists pass has_released_slices,
    and the 1-patient cut (16 + 7 slices) labels other ES slices of patient099 (the data review). The cuts of 3 and 7
    patients end on a patient and need no warning."""
    from medseg_platform.data.splits import RELEASED_LIST_HEAD, released_cut_note
    from medseg_platform.protocol import released_cut_warnings

    released = list(RELEASED_LIST_HEAD) + SSL4MIS_SLICES[32:]  # the release's own patient099 order
    assert has_released_slices(released) and released_cut_note(released) == ""
    converted = SSL4MIS_SLICES  # patient099's slices 0..15 of each frame, in index order
    note = released_cut_note(converted)
    assert note.startswith("the released 23-slice cut of 1 patient ends inside patient099_frame02")
    assert ("the run labels its slices 0, 1, 2, 3, 4, 5, 6 (this list's ids), the release slices 5, 9, 11, 2, 3, 10, 1 "
            "there (SSL4MIS's ids, 1-based)") in note
    assert released_cut_note(converted, 3) == released_cut_note(converted, 7) == ""
    assert released_cut_note(ACDC_SLICES) == ""  # not a released list: released_slices refuses it anyway
    root = tmp_path / "acdc"
    root.mkdir()
    (root / "train_slices.list").write_text("\n".join(converted) + "\n")
    for name in ("val.list", "test.list"):
        (root / name).write_text("patient101_frame01\n")
    assert released_cut_warnings(root, ["1", "3", "5%"]) == [note]  # "5%" of 70 is 3 patients


def test_half_up_rounding_is_done_on_the_decimal_as_written():
    """Binary floating point rounded some exact halves down: 14.5% and 28.5% of 100 patients gave 14 and 28, a val
    fraction 0.35 of 90 patients 31 (the data review)."""
    from medseg_platform.data.acdc_split import SplitSpec, split_counts

    assert [resolve_patient_count(f"{p}%", 100).patients for p in ("14.5", "28.5", "0.5", "2.5")] == [15, 29, 1, 3]
    assert split_counts(90, SplitSpec(kind="random", seed=0, val_fraction=0.35, test_fraction=0.2))[1:] == (32, 18)
    assert split_counts(170, SplitSpec(kind="random", seed=0, val_fraction=0.35, test_fraction=0.2))[1] == 60


def test_a_fraction_is_read_as_the_decimal_written_in_ascii_digits():
    """The splits review: "1.0000000000000001%" took the published mapping (its float is 1.0) though the trial key keeps
    it apart from "1%"; "3.0000000000000001" passed as 3 patients; a fullwidth "３" trained a second trial of 3."""
    assert resolve_patient_count("1.0000000000000001%", 200).patients == 2  # 200 x 1% rounded, not 1/70 of 200
    assert resolve_patient_count("1%", 200).patients == 3  # the published 1/70
    with pytest.raises(ConfigError, match="a patient count must be a whole number"):
        resolve_patient_count("3.0000000000000001", 70)
    assert resolve_patient_count("3.0", 70).patients == 3
    with pytest.raises(ConfigError, match="expected a patient count like '3'"):
        resolve_patient_count("\uff13", 70)


def test_released_slices_need_the_release_s_patients_in_its_order():
    """The splits review: any list of 1312 slices of 70 patients passed, and the released cuts labelled other patients'
    slices than the published order the report named."""
    renamed = [s.replace("patient099", "patient999") for s in SSL4MIS_SLICES]
    assert has_released_slices(SSL4MIS_SLICES) and not has_released_slices(renamed)
    with pytest.raises(ConfigError, match="released_slices: the released slice counts belong to the SSL4MIS ACDC list"):
        select_labelled(renamed, "1", "released_slices")
