"""ASHA's rungs across a resumed search (medseg_platform/study/asha.py)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402

from medseg_platform.study.asha import STATE_SUFFIX, ResumableASHA, bind_state_file  # noqa: E402

ARGS = dict(metric="val_dice", mode="max", time_attr="evaluations", max_t=11, grace_period=1)


def report(scheduler, trial, evaluations: int, dice: float, final: bool = False):
    result = {"evaluations": evaluations, "val_dice": dice}
    if final:
        return scheduler.on_trial_complete(None, trial, result)
    return scheduler.on_trial_result(None, trial, result)


def interrupted_search(scheduler_at_start) -> str:
    """Sample A is restored at its 7th validation (its 1st scored 0.0, like every sample's) and finishes at 0.11; a new
    sample C then reaches its 1st validation at 0.0. Returns ASHA's decision for C."""
    a, c = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="c")
    resumed = pickle.loads(scheduler_at_start)  # Tuner.restore: the scheduler as pickled when the experiment started
    resumed.on_trial_add(None, a)
    report(resumed, a, 7, 0.11)
    report(resumed, a, 11, 0.11, final=True)
    resumed.on_trial_add(None, c)
    return report(resumed, c, 1, 0.0)


def test_a_resumed_search_meets_the_rungs_an_uninterrupted_one_would(tmp_path):
    """Before the interruption A and B recorded 0.0 at rung 1. Ray's ASHA forgets that on a restore and records A's late
    0.11 there instead, so C (0.0, as A and B had scored at that rung) is stopped; with the rungs kept, it goes on."""
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    plain, ours = ASHAScheduler(**ARGS), ResumableASHA("exp", **ARGS)
    bind_state_file("exp", tmp_path / f"exp{STATE_SUFFIX}")
    at_start = {"plain": pickle.dumps(plain), "ours": pickle.dumps(ours)}
    for scheduler in (plain, ours):
        for trial in (a, b):
            scheduler.on_trial_add(None, trial)
            assert report(scheduler, trial, 1, 0.0) == TrialScheduler.CONTINUE
        for step in range(2, 8):
            report(scheduler, a, step, 0.02 * step)
    assert (tmp_path / f"exp{STATE_SUFFIX}").is_file()
    assert interrupted_search(at_start["plain"]) == TrialScheduler.STOP  # Ray's behaviour: the decision changed
    assert interrupted_search(at_start["ours"]) == TrialScheduler.CONTINUE
    restored = pickle.loads(at_start["ours"])
    restored.on_trial_add(None, a)
    rungs = dict(restored._brackets[0]._rungs)
    assert rungs[1] == {"a": 0.0, "b": 0.0, "c": 0.0} and rungs[4] == {"a": pytest.approx(0.08)}  # from the file, not pickled


def test_without_a_bound_file_it_is_rays_asha(tmp_path):
    ours = ResumableASHA("unbound", **ARGS)
    a = SimpleNamespace(trial_id="a")
    ours.on_trial_add(None, a)
    assert report(ours, a, 1, 0.5) == TrialScheduler.CONTINUE
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("validations, rungs", [(4, [1]), (10, [4, 1]), (16, [4, 1]), (30, [16, 4, 1])])
def test_no_rung_on_the_last_validation(validations, rungs):
    """With 4 (or 16) validations Ray's ASHA has a rung at the last one: a sample below the cutoff there was stopped
    after training fully, before its test (the search review). Ours keeps only the rungs before the last validation."""
    args = {**ARGS, "max_t": validations + 1}  # the validations and the final report (study.runner.tune_config)
    ours, plain = ResumableASHA("unbound", **args), ASHAScheduler(**args)
    assert [milestone for milestone, _ in ours._brackets[0]._rungs] == rungs
    last = {}
    for scheduler in (ours, plain):  # every sample scores 0.5 until its last validation, where they differ
        for name, final in (("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.3)):
            trial = SimpleNamespace(trial_id=name)
            scheduler.on_trial_add(None, trial)
            assert all(report(scheduler, trial, t, 0.5) == TrialScheduler.CONTINUE for t in range(1, validations))
            last[scheduler is ours, name] = report(scheduler, trial, validations, final)
    assert last[True, "d"] == TrialScheduler.CONTINUE  # ours: d goes on to its test
    assert last[False, "d"] == (TrialScheduler.STOP if validations in (4, 16) else TrialScheduler.CONTINUE)  # Ray's
