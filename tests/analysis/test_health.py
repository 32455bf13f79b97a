"""Trial health: the verdict on a validation curve, reading it from a trial folder, the report section."""

from __future__ import annotations

import math

import pytest

from analysis import health
from analysis.health import (COLLAPSED, HEALTHY, NOT_LEARNED, STILL_RISING, UNDETERMINED, CurveHealth, TrialHealth, classify_curve,
                             health_problems, health_section)
from medseg_platform.results import scan_study
from tests.analysis.fakes import write_fake_trial


def test_thresholds_are_absolute_dice():
    assert health.RISING_MARGIN == 0.01 and health.COLLAPSE_DROP == 0.10 and health.LEARNED_FLOOR == 0.15


def test_a_curve_that_never_reaches_the_floor_did_not_learn():
    # released ACTION, seed 2, 500 quick steps: 1.8-12.9 val Dice points for 20 validations, best at step 225
    points = list(zip(range(25, 525, 25), [0.029, 0.040, 0.018, 0.117, 0.057, 0.114, 0.095, 0.085, 0.129, 0.121,
                                           0.095, 0.078, 0.097, 0.116, 0.082, 0.107, 0.095, 0.114, 0.094, 0.124]))
    verdict = classify_curve(points)
    assert verdict == CurveHealth(NOT_LEARNED, 0.124, 0.094, 0.129, 225, 20) and verdict.flagged
    # checked before the other rules: a low curve climbing to a new best, or dropping by more than 0.10
    assert classify_curve([(20, 0.02), (40, 0.14)]).verdict == NOT_LEARNED
    assert classify_curve([(20, 0.149), (40, 0.01)]).verdict == NOT_LEARNED
    # the floor is the best validation, not the last: a curve that reached it and fell is collapsed
    assert classify_curve([(20, 0.15), (40, 0.01)]).verdict == COLLAPSED
    assert classify_curve([(20, 0.10), (40, 0.184), (60, 0.171)]).verdict == HEALTHY  # supervised seed 2's end


def test_still_rising_when_the_last_validation_is_the_best_and_climbs():
    verdict = classify_curve([(20, 0.50), (40, 0.58), (60, 0.60)])
    assert verdict == CurveHealth(STILL_RISING, 0.60, 0.58, 0.60, 60, 3) and verdict.flagged


def test_a_small_last_gain_is_healthy():
    verdict = classify_curve([(20, 0.600), (40, 0.605)])  # best at the end but only 0.005 above the previous
    assert verdict.verdict == HEALTHY and not verdict.flagged and verdict.best_step == 40


def test_collapsed_when_the_last_validation_is_far_below_the_best():
    verdict = classify_curve([(20, 0.30), (40, 0.80), (60, 0.65)])
    assert verdict == CurveHealth(COLLAPSED, 0.65, 0.80, 0.80, 40, 3) and verdict.flagged


def test_a_moderate_drop_or_a_recovery_below_the_best_is_healthy():
    assert classify_curve([(20, 0.80), (40, 0.75)]).verdict == HEALTHY  # 0.05 below the best
    # climbs 0.05 at the end, but the best was earlier: neither rising to a new best nor collapsed
    assert classify_curve([(20, 0.70), (40, 0.60), (60, 0.65)]).verdict == HEALTHY
    # climbs 0.10 at the end, still 0.20 below the best: collapsed
    assert classify_curve([(20, 0.80), (40, 0.50), (60, 0.60)]).verdict == COLLAPSED


def test_a_change_of_exactly_the_margin_is_not_more_than_it():
    """0.8 - 0.7 is 0.10000000000000009 in floats: a drop of exactly 10 points was "collapsed" and a last gain of
    exactly 1 point "still rising", though both rules say "more than" (the test audit)."""
    assert 0.8 - 0.7 > health.COLLAPSE_DROP and 0.61 - 0.60 > health.RISING_MARGIN  # what the rounding guards against
    assert classify_curve([(20, 0.80), (40, 0.70)]).verdict == HEALTHY
    assert classify_curve([(20, 0.50), (40, 0.60), (60, 0.61)]).verdict == HEALTHY
    assert classify_curve([(20, 0.80), (40, 0.6999)]).verdict == COLLAPSED
    assert classify_curve([(20, 0.50), (40, 0.60), (60, 0.6101)]).verdict == STILL_RISING


def test_ties_keep_the_first_best_step_like_the_engine():
    verdict = classify_curve([(20, 0.70), (40, 0.70)])
    assert verdict.verdict == HEALTHY and verdict.best_step == 20


def test_order_duplicates_and_non_finite_values():
    # unsorted, a NaN validation (no class defined) dropped: 20 -> 0.50, 60 -> 0.62
    verdict = classify_curve([(60, 0.62), (20, 0.50), (40, math.nan)])
    assert verdict == CurveHealth(STILL_RISING, 0.62, 0.50, 0.62, 60, 2)
    assert classify_curve([(20, 0.9), (40, 0.5), (40, 0.85)]).verdict == HEALTHY  # a repeated step keeps its last value


def test_fewer_than_two_validations_are_undetermined_and_not_flagged():
    one = classify_curve([(20, 0.5)])
    assert one.verdict == UNDETERMINED and not one.flagged and one.n_validations == 1 and one.best_step == 20
    assert math.isnan(one.previous) and one.last == 0.5
    # ... unless the one validation is below the floor: a 20-step run validated every 25 scored 0 and read "Problems: none"
    failed = classify_curve([(20, 0.0)])
    assert failed.verdict == NOT_LEARNED and failed.flagged and failed.n_validations == 1 and math.isnan(failed.previous)
    none = classify_curve([(20, math.nan)])
    assert none.verdict == UNDETERMINED and none.n_validations == 0 and none.best_step is None


def test_record_health_reads_val_curve_csv(tmp_path):
    study = tmp_path / "study"
    write_fake_trial(study, row="MONA", order=0, patients=1, seed=1, dice=lambda case, cls: 0.7,
                     val_curve=[(20, 0.40), (40, 0.70)], qualitative_shift=None)
    write_fake_trial(study, row="MONA", order=0, patients=1, seed=2, dice=lambda case, cls: 0.7, qualitative_shift=None)
    records, _ = scan_study(study)
    verdicts = sorted((r.result["seed"], health.record_health(r).verdict) for r in records)
    assert verdicts == [(1, STILL_RISING), (2, HEALTHY)]  # the fakes' default curve plateaus
    rising = next(r for r in records if r.result["seed"] == 1)
    assert health.read_val_curve(rising.path) == [(20.0, 0.40), (40.0, 0.70)]
    # the report review: a missing or edited curve read as one with fewer validations, and the trial's flag was lost
    (rising.path / "val_curve.csv").write_text("step,val_dice\n20,abc\n40,0.7\n", encoding="utf-8")
    assert health.read_val_curve(rising.path) is None
    for cut_short in ("", "step,val_dice\n"):  # the health review: no row read as "not judged", not as a problem
        (rising.path / "val_curve.csv").write_text(cut_short, encoding="utf-8")
        assert health.read_val_curve(rising.path) is None
    (rising.path / "val_curve.csv").unlink()
    assert health.read_val_curve(rising.path) is None
    missing = health.record_health(rising)
    assert (missing.verdict, missing.n_validations, missing.best_step, missing.flagged) == (health.NO_CURVE, 0, None, False)
    trials = [TrialHealth(r.path.name, "MONA", "1 patient", r.result["seed"], health.record_health(r)) for r in records]
    section = "\n".join(health_section(trials))
    assert "All 1 judged trials plateaued" in section and "1 trial without a readable `val_curve.csv` was not judged" in section
    assert health_problems(trials) == [f"trial health: {rising.path.name} has no readable val_curve.csv, so it was not judged "
                                       "(rerun the study command after deleting its folder to train it again)"]


def _trial(key: str, points, row: str = "MONA", seed: int = 1) -> TrialHealth:
    return TrialHealth(key, row, "1 patient (1.4%)", seed, classify_curve(points))


def test_section_when_nothing_is_flagged():
    trials = [_trial("a", [(20, 0.6), (40, 0.6)]), _trial("b", [(20, 0.5), (40, 0.49)]), _trial("c", [(20, 0.5)])]
    lines = health.health_section(trials)
    assert lines[0] == "## Trial health" and lines[-1] == ""
    assert lines[-2] == ("All 2 judged trials plateaued (none still rising, collapsed or failing to learn). 1 trial with fewer than 2 "
                         "validation scores, none below the floor, was not judged. 1 unflagged trial ended at its best validation, gaining at "
                         "most 1.0 point at the last one: more steps might still move it.")
    assert health.health_problems(trials) == [] and health.health_section([]) == []


def test_section_lists_flagged_trials_with_their_numbers():
    trials = [_trial("mona-l1-s1-x", [(20, 0.50), (40, 0.62)]), _trial("mt|1", [(20, 0.3), (40, 0.8), (60, 0.65)], "Mean teacher", 2),
              _trial("ok", [(20, 0.6), (40, 0.6)]), _trial("action-l1-s2", [(20, 0.03), (40, 0.13), (60, 0.12)], "ACTION", 2)]
    text = "\n".join(health.health_section(trials))
    assert "more than 1.0 Dice points above the previous one" in text and "more than 10.0 points below its best" in text
    assert "A trial *did not learn* when its best validation stays below 15.0 Dice points" in text
    assert "3 of 4 judged trials flagged: 1 still rising, 1 collapsed, 1 did not learn." in text
    assert "| mona-l1-s1-x | MONA | 1 patient (1.4%) | 1 | still rising | 62.0 | 50.0 | 62.0 | 40 |" in text
    assert "| mt\\|1 | Mean teacher | 1 patient (1.4%) | 2 | collapsed | 65.0 | 80.0 | 80.0 | 40 |" in text
    assert "| action-l1-s2 | ACTION | 1 patient (1.4%) | 2 | did not learn | 12.0 | 13.0 | 13.0 | 40 |" in text
    assert "| ok |" not in text
    assert health.health_problems(trials) == [
        "trial health: 3 of 4 judged trials flagged (1 still rising, 1 collapsed, 1 did not learn); see Trial health"]
    # a verdict that does not occur is not counted
    assert health.health_problems(trials[:1]) == ["trial health: 1 of 1 judged trials flagged (1 still rising); see Trial health"]
    # a trial with one validation is not judged: the problem line counts as the section does
    unjudged = trials + [_trial("one", [(20, 0.5)])]
    assert "3 of 4 judged trials flagged" in "\n".join(health.health_section(unjudged))
    assert health.health_problems(unjudged)[0].startswith("trial health: 3 of 4 judged trials flagged")


def test_a_flagged_trials_numbers_show_its_verdict_at_the_threshold():
    """The health review: at one decimal a gain of 1.004 points read "51.0 | 50.0" beside a rule of "more than 1.0",
    a drop of 10.004 "60.0 | 70.0", a best of 14.96 "15.0"; the row takes the decimals that show its side."""
    trials = [_trial("a", [(3, 0.1496), (6, 0.1)]), _trial("b", [(3, 0.5), (6, 0.51004)]), _trial("c", [(3, 0.7), (6, 0.59996)]),
              _trial("d", [(3, 0.5), (6, 0.53)])]
    text = "\n".join(health.health_section(trials))
    assert "| a | MONA | 1 patient (1.4%) | 1 | did not learn | 10.00 | 14.96 | 14.96 | 3 |" in text
    assert "| b | MONA | 1 patient (1.4%) | 1 | still rising | 51.004 | 50.000 | 51.004 | 6 |" in text
    assert "| c | MONA | 1 patient (1.4%) | 1 | collapsed | 59.996 | 70.000 | 70.000 | 3 |" in text
    assert "| d | MONA | 1 patient (1.4%) | 1 | still rising | 53.0 | 50.0 | 53.0 | 6 |" in text  # one decimal shows it


def test_unflagged_trials_that_ended_at_their_best_are_counted():
    """A report review counted 9 of 24 trials best at their last validation where the section named the 6 flagged ones:
    the trials that gained at most the margin at the end are counted beside them, not listed or marked."""
    trials = [_trial("rising", [(20, 0.50), (40, 0.62)]), _trial("flat-top", [(20, 0.60), (40, 0.605)]),
              _trial("tie", [(20, 0.6), (40, 0.6)]), _trial("down", [(20, 0.6), (40, 0.58)])]
    text = "\n".join(health.health_section(trials))
    assert ("1 of 4 judged trials flagged: 1 still rising. 2 unflagged trials ended at their best validation, gaining at "
            "most 1.0 point at the last one: more steps might still move them (3 of the judged trials ended at their "
            "best). Tables mark") in text
    # a trial that did not learn and ended at its best counts in the total; "unflagged" whatever the flags are
    other = [_trial("flat-top", [(20, 0.60), (40, 0.605)]), _trial("failed", [(20, 0.01), (40, 0.05)]),
             _trial("collapsed", [(20, 0.8), (40, 0.6)])]
    assert ("1 unflagged trial ended at its best validation, gaining at most 1.0 point at the last one: more steps might "
            "still move it (2 of the judged trials ended at their best).") in "\n".join(health.health_section(other))
    assert "| flat-top |" not in text and "| tie |" not in text
    assert "ended at" not in "\n".join(health.health_section([trials[0], trials[3]]))


def test_collapse_text_follows_the_model_selection():
    trials = [_trial("mt", [(20, 0.3), (40, 0.8), (60, 0.65)])]
    assert "the test model is still the best one on val" in "\n".join(health.health_section(trials))
    final = "\n".join(health.health_section(trials, "final"))
    assert "the tested model is the last, collapsed one" in final and "still the best one on val" not in final
    assert "in trials that test their final weights" in health.criteria_sentence("mixed")


@pytest.mark.parametrize("points", [[], [(20, 0.5)]])
def test_section_with_no_judged_trial(points):
    lines = health.health_section([_trial("a", points)])
    assert lines[-2].startswith("No trial had 2 or more validations to judge (nor one below the floor).")
