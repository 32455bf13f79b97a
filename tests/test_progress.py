"""The study's progress lines: cost-weighted ETA, heartbeat while trials run, progress reports from the engine.

The callback tests use fake Tune trials and a fake clock (no Ray); one short study checks that the engine's
progress reports reach the callback through Tune.
"""

import math
from types import SimpleNamespace

import pytest

from medseg_platform import progress as progress_module
from medseg_platform.config import TrialConfig
from medseg_platform.progress import ProgressCallback
from medseg_platform.step_costs import STEP_COST, cost_key, trial_plan
from tests.test_engine import quiet, small_cfg

ISD = {"objective": "isd_pretrain", "max_steps": 20}


def config(objective="supervised", steps=100, val_every=50, pretrain=(), seed=1, **data):
    """A trial config dict (``TrialConfig.to_dict()``) with the fields the cost model reads."""
    cfg = TrialConfig().to_dict()
    cfg.update(objective=objective, seed=seed, pretrain=[dict(stage) for stage in pretrain])
    cfg["optim"]["max_steps"], cfg["eval"]["val_every"] = steps, val_every
    cfg["data"].update(data)
    return cfg


def fake_trial(key, status="PENDING", **result):
    return SimpleNamespace(trial_id=f"id-{key}", status=status, config={"trial": {"key": key}}, last_result=result,
                           num_failures=0, max_failures=2)


def progress(phase, step, steps, per_s, objective, stage=0, stages=0, evaluations=0, cached=False):
    """A progress-only report as Tune hands it to the callback (the fields of engine.progress_fields)."""
    return {"phase": phase, "objective": objective, "stage": stage, "stages": stages, "phase_step": step, "phase_steps": steps,
            "steps_per_s": per_s, "stage_cached": cached, "evaluations": evaluations, "best_val_dice": math.nan}


def start(callback, trials, *started):
    for trial in started:
        callback.on_trial_start(0, trials, trial)  # Tune sets RUNNING after the hook
        trial.status = "RUNNING"


def finish(callback, trials, trial, **result):
    """The trial's final report (its test Dice: a trial ASHA stopped has none) unless ``result`` says otherwise."""
    trial.last_result = {"done": True, "test_dice": 0.5, **result}
    callback.on_trial_complete(0, trials, trial)
    trial.status = "TERMINATED"


#: Round priors the hand computations below use (the shipped STEP_COST / EVALUATION_COST are measured values).
HAND_PRIORS = {"supervised": 1.0, "mean_teacher": 2.0, "mona": 6.5, "arco": 6.5, "action": 5.5, "isd_pretrain": 9.0,
               "mona w/o contrast": 4.0}


@pytest.fixture(autouse=True)
def hand_priors(monkeypatch):
    for key, value in HAND_PRIORS.items():
        monkeypatch.setitem(STEP_COST, key, value)
    monkeypatch.setattr(progress_module, "EVALUATION_COST", 5.0)


def test_every_registered_objective_has_a_prior_cost():
    from methods.registry import OBJECTIVES

    missing = sorted(set(OBJECTIVES) - set(STEP_COST))
    assert not missing, (f"objective(s) {missing} have no STEP_COST entry in medseg_platform/step_costs.py: measure the step "
                         "with `python benchmarks/bench_methods.py --profile quick --steps 20 --methods supervised ID` "
                         "(ID: a method id of its recipe, medseg_platform/recipes.py) and add its multiple of a supervised step")
    assert {"mona w/o contrast", "arco w/o contrast", "action w/o anco"} <= set(STEP_COST)


def test_rows_without_the_contrast_term_have_their_own_cost_and_step_rate():
    without = config("mona", steps=100, val_every=50)
    without["objective_params"] = {"contrast_weight": 0.0}
    plans = [trial_plan(config("mona", steps=100, val_every=50), "m"), trial_plan(without, "w")]
    assert (plans[0].fine_tuning.objective, plans[1].fine_tuning.objective) == ("mona", "mona w/o contrast")
    assert (plans[0].fine_tuning.units, plans[1].fine_tuning.units) == (650.0, 400.0)
    callback = ProgressCallback(plans, clock=lambda: 0.0)
    m, w = trials = [fake_trial("m"), fake_trial("w")]
    start(callback, trials, m, w)
    callback.on_trial_result(0, trials, m, progress("fine-tuning", 50, 100, 0.1, "mona", evaluations=1))
    callback.on_trial_result(0, trials, w, progress("fine-tuning", 50, 100, 0.5, "mona", evaluations=1))
    assert callback.step_s == {"mona": 10.0, "mona w/o contrast": 2.0}  # the cheaper row does not overwrite MONA's rate


def test_mona_rows_without_more_terms_are_priced_by_the_work_they_skip():
    """studies/ablation_losses.py's rows: the dry run priced its L_sup-only row as a row without the contrast (3.9
    supervised steps a step, where it trains at 1.4) and its row without L_eqv as the full row."""
    def key(**params):
        return cost_key("arco", params)

    unlabelled = {"contrast_weight": 0.0, "unsup_weight": 0.0, "eqv_weight": 0.0, "nn_weight": 0.0}
    assert key() == "arco" and key(unsup_weight=0.0) == "arco"  # L_unsup alone skips no pass
    assert key(contrast_weight=0.0) == "arco w/o contrast" and key(eqv_weight=0.0) == "arco w/o eqv"
    assert key(contrast_weight=0.0, eqv_weight=0.0) == "arco w/o contrast and eqv"
    assert key(**unlabelled) == "arco L_sup only" and cost_key("mona", unlabelled) == "mona L_sup only"
    assert key(**{**unlabelled, "nn_weight": 1.0}) == "arco w/o contrast and eqv"  # L_nn's teacher pass still runs
    for objective in ("mona", "arco"):
        costs = [STEP_COST[f"{objective}{suffix}"] for suffix in ("", " w/o eqv", " w/o contrast", " w/o contrast and eqv", " L_sup only")]
        assert costs[0] > max(costs[1:3]) and min(costs[1:3]) > costs[3] > costs[4] > STEP_COST["supervised"], costs


def test_trial_plan_counts_phases_and_identifies_shared_stages():
    plan = trial_plan(config("mona", steps=100, val_every=30, pretrain=[ISD]), "m")
    assert (plan.fine_tuning.units, plan.evaluations, [s.units for s in plan.stages]) == (650.0, 5, [180.0])  # 4 validations + test
    # fine-tuning-only settings do not change the stage; the seed and the chain do
    same = trial_plan(config("arco", steps=10, pretrain=[ISD], labelled_batch=7, strong_mix="classmix"), "a")
    other_seed = trial_plan(config("mona", pretrain=[ISD], seed=2), "s")
    longer = trial_plan(config("mona", pretrain=[{**ISD, "max_steps": 21}]), "l")
    assert same.stages[0].stage == plan.stages[0].stage
    assert len({plan.stages[0].stage, other_seed.stages[0].stage, longer.stages[0].stage}) == 3
    # data.strong_mix: as in stage_key, a stage that mixes strong views is another stage under another mix (the ETA
    # charged two trials one stage that the engine trains twice); ISD's stage above is the same
    mona_stage = {**ISD, "objective": "mona", "objective_params": {}}
    chain = [config("mona", pretrain=[ISD, mona_stage], strong_mix=mix) for mix in ("cutout", "classmix")]
    plans = [trial_plan(cfg, f"m-{i}") for i, cfg in enumerate(chain)]
    assert plans[0].stages[0].stage == plans[1].stages[0].stage and plans[0].stages[1].stage != plans[1].stages[1].stage


def cost_study(clock):
    """A cheap supervised trial and three MONA trials, two of which share one ISD stage.

    Costs (supervised steps): sup 100 + 3 evaluations x 5 = 115; each MONA trial 100 x 6.5 + 15 = 665 plus its
    stage 20 x 9 = 180 (m1 and m2 share theirs: it is charged once).
    """
    plans = [trial_plan(config(), "sup"), trial_plan(config("mona", pretrain=[ISD]), "m1"),
             trial_plan(config("mona", pretrain=[ISD]), "m2"), trial_plan(config("mona", pretrain=[ISD], seed=2), "m3")]
    callback = ProgressCallback(plans, clock=clock)
    trials = [fake_trial(key) for key in ("sup", "m1", "m2", "m3")]
    return callback, trials


def test_cost_weighted_eta_after_a_cheap_trial_finishes(capsys):
    now = [0.0]
    callback, trials = cost_study(lambda: now[0])
    sup, m1, m2, m3 = trials
    start(callback, trials, sup)
    now[0] = 90.0
    start(callback, trials, m1)
    now[0] = 115.0
    finish(callback, trials, sup)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    # 115 s for 115 units: 1 s per unit. Left: m1 180 + 665 = 845 (it pays the shared stage), m2 665, m3 845;
    # (845 + 665 + 845) / 2 trials at once = 1177.5 s = 19.6 min (> the largest trial, 845 s)
    assert line == "[1/4] finished sup (1 finished, 1 running, 2 pending, 0 errored; 1.9 min elapsed, ETA 19.6 min)"
    mean_duration_eta = 115.0 * 3 / 2  # the old estimate: mean trial time x trials left / parallelism = 2.9 min
    assert callback.eta_s(trials) == 1177.5 > mean_duration_eta

    # reported step rates replace the priors: m1 trains the stage at 2 s per ISD step, halfway. Its start-up (25 s
    # since its start less the 20 s of the steps) is a cold one: it started before any trial reported
    callback.on_trial_result(0, trials, m1, progress("pretraining", 10, 20, 0.5, "isd_pretrain", stage=1, stages=1))
    assert callback.any_report_at == 115.0 and callback.warm_startups == []
    # m1: 10 x 2 + 665 x 1 = 685; m2: 665; m3: 20 x 2 + 665 = 705; 2055 / 2 = 1027.5
    assert callback.eta_s(trials) == 1027.5
    # m1 fine-tunes at 10 s per MONA step, after its first validation: the stage is done for m2 too
    callback.on_trial_result(0, trials, m1, progress("fine-tuning", 50, 100, 0.1, "mona", stages=1, evaluations=1))
    # m1: 50 x 10 + 2 evaluations x 5 = 510; m2: 100 x 10 + 15 = 1015; m3: 40 + 1015 = 1055; 2580 / 2 = 1290
    assert callback.eta_s(trials) == 1290.0
    assert callback._eta_text(trials) == "ETA 21.5 min"

    # the finished MONA trial paid for fine-tuning, evaluations and the stage it trained, 180 + 665 units, less the 10
    # ISD steps (90 units) before its first report, in its 1000 s after that report
    callback.on_trial_result(0, trials, m1, progress("fine-tuning", 100, 100, 0.1, "mona", stages=1, evaluations=2))
    now[0] = 1115.0
    finish(callback, trials, m1)
    # a trial stopped early (ASHA) at step 25 paid a quarter of its fine-tuning and evaluations, not the stage m1 trained,
    # less the tenth before its first report (at step 10, 105 s after its start: 5 s of a warm start-up, which m3, not
    # started yet, is charged with)
    start(callback, trials, m2)
    now[0] = 1220.0
    callback.on_trial_result(0, trials, m2, progress("fine-tuning", 10, 100, 0.1, "mona", stages=1, evaluations=0))
    assert callback.warm_startups == [(1115.0, 5.0)]
    # m2: 90 x 10 + 15 units x (1115 + 1000) s / (115 + 755) units; m3: 40 + 1000 + 15 units + 5 s (the largest)
    unit = (115 + 1000) / (115 + 755)
    assert math.isclose(callback.eta_s(trials), 40 + 1000 + 15 * unit + 5)
    now[0] = 1370.0
    callback.on_trial_result(0, trials, m2, progress("fine-tuning", 25, 100, 0.1, "mona", stages=1, evaluations=1))
    now[0] = 1380.0
    finish(callback, trials, m2)
    assert callback.finished_work[:2] == [(115.0, 115.0), (1000.0, 755.0)]
    seconds, units = callback.finished_work[2]
    assert seconds == 160.0 and math.isclose(units, 665 * (0.25 - 0.1))


def test_a_cached_stage_costs_nothing_and_results_that_existed_do_not_feed_the_rate(capsys):
    now = [0.0]
    plans = [trial_plan(config(), "old", existed=True), trial_plan(config("mona", pretrain=[ISD]), "m1"),
             trial_plan(config("mona", pretrain=[ISD]), "m2")]
    callback = ProgressCallback(plans, clock=lambda: now[0])
    old, m1, m2 = trials = [fake_trial(key) for key in ("old", "m1", "m2")]
    start(callback, trials, old, m1)
    now[0] = 1.0
    finish(callback, trials, old, skipped=True)
    err = capsys.readouterr().err
    assert "ETA ? (no step rate yet)" in err and callback.finished_work == []
    assert "started old" not in err and "finished (result existed) old" in err and "started m1" in err
    callback.on_trial_result(0, trials, m1, progress("pretraining", 20, 20, math.nan, "isd_pretrain", stage=1, stages=1, cached=True))
    callback.on_trial_result(0, trials, m1, progress("fine-tuning", 50, 100, 0.5, "mona", stages=1, evaluations=1))
    # 2 s per MONA step; seconds per unit from that rate alone: 2 / 6.5. m1: 50 x 2 + 10 / 3.25 = 103.08 s;
    # m2: 100 x 2 + 15 / 3.25 = 204.62 s (its stage is cached); (103.08 + 204.62) / 2 = 153.85 < 204.62
    assert callback.seconds_per_unit() == 2 / 6.5
    assert math.isclose(callback.eta_s(trials), 200 + 15 / 3.25)
    assert callback.doing(m1) == "fine-tuning step 50/100"
    assert m1.trial_id not in callback.trained  # loaded from the cache, not trained: not in its paid units


def test_a_finished_trial_scored_on_the_test_root_says_so_and_its_scoring_is_priced(capsys):
    """The progress review: a finished trial whose Tune trial scores it on --test-root printed only "finished (result
    existed)", no start line, and the ETA gave its scoring no cost."""
    plans = [trial_plan(config(), "old", existed=True, scoring_only=True), trial_plan(config(), "new")]
    callback = ProgressCallback(plans, clock=lambda: 0.0)
    old, new = trials = [fake_trial(key) for key in ("old", "new")]
    start(callback, trials, old)
    callback.on_trial_result(0, trials, new, progress("fine-tuning", 10, 100, 10.0, "supervised", evaluations=0))
    err = capsys.readouterr().err
    assert "started old, to score its weights on --test-root (trained earlier)" in err
    unit = callback.seconds_per_unit()
    states = callback._states(trials, None, None)
    assert math.isclose(callback._remaining_s(0, states, unit), progress_module.EVALUATION_COST * unit)
    finish(callback, trials, old, skipped=True)
    assert "finished (scored on --test-root; trained earlier) old" in capsys.readouterr().err
    assert callback.finished_work == []  # a scoring prices no training unit
    assert not trial_plan(config(), "x", scoring_only=True).scoring_only  # only a finished trial is scored alone


def test_heartbeat_lists_running_trials_after_the_interval_and_not_before(capsys):
    now = [0.0]
    plans = [trial_plan(config("mona", steps=300, val_every=100), "mona-l1"),
             trial_plan(config("action", steps=300, val_every=100, pretrain=[{**ISD, "max_steps": 80}] * 2), "action-l1")]
    callback = ProgressCallback(plans, clock=lambda: now[0], heartbeat_s=60)
    mona, action = trials = [fake_trial(key) for key in ("mona-l1", "action-l1")]
    start(callback, trials, mona, action)
    capsys.readouterr()
    now[0] = 30.0
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err == ""
    callback.on_trial_result(0, trials, mona, progress("fine-tuning", 120, 300, 0.5, "mona", evaluations=1))
    callback.on_trial_result(0, trials, action, progress("pretraining", 40, 80, 0.25, "isd_pretrain", stage=2, stages=2))
    assert callback.doing(action) == "pretraining stage 2/2 step 40/80"
    now[0] = 59.9
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err == ""  # 59.9 s since the last line (the starts at 0 s)
    now[0] = 60.0
    callback.on_step_end(0, trials)
    # seconds per unit = mean(2 s / 6.5, 4 s / 9) = 0.37607; MONA 180 x 2 + 3 evaluations x 5 units = 365.6 s;
    # ACTION 40 x 4 + (300 x 5.5 + 4 x 5) units = 160 + 1670 x 0.37607 = 788.0 s = 13.1 min (the largest trial)
    assert capsys.readouterr().err == ("[0/2] running: mona-l1 fine-tuning step 120/300, action-l1 pretraining stage 2/2 step 40/80 "
                                       "(60 s elapsed, ETA 13.1 min)\n")
    now[0] = 119.0
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err == ""
    now[0] = 120.0
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err.startswith("[0/2] running: mona-l1 fine-tuning step 120/300, ")
    now[0] = 150.0
    finish(callback, trials, mona)  # an event line also resets the interval
    capsys.readouterr()
    now[0] = 200.0
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err == ""
    now[0] = 210.0
    callback.on_step_end(0, trials)
    assert capsys.readouterr().err.startswith("[1/2] running: action-l1 pretraining stage 2/2 step 40/80 (3.5 min elapsed, ETA ")


def test_engine_reports_progress_during_pretraining_and_fine_tuning(tiny_root, tmp_path):
    from medseg_platform.engine import train_trial

    stage = {"objective": "supervised", "max_steps": 4, "checkpoint_every": 2, "labelled_batch": 2, "unlabelled_batch": 0}
    cfg = small_cfg(tiny_root, pretrain=[stage, stage])
    reports = []

    def where(metrics, ckpt):
        reports.append((metrics["phase"], metrics["stage"], metrics["phase_step"], metrics["stage_cached"], ckpt is not None))

    train_trial(cfg, tmp_path / "a", report=where, log=quiet, pretrain_cache=tmp_path / "cache")
    assert reports == [("pretraining", 1, 2, False, False), ("pretraining", 1, 4, False, False),
                       ("pretraining", 2, 2, False, False), ("pretraining", 2, 4, False, False),
                       ("fine-tuning", 0, 2, False, False), ("fine-tuning", 0, 4, False, True),
                       ("fine-tuning", 0, 6, False, False), ("fine-tuning", 0, 8, False, True)]
    reports.clear()
    train_trial(cfg.replace(**{"optim.max_steps": 2}), tmp_path / "b", report=where, log=quiet, pretrain_cache=tmp_path / "cache")
    assert reports[:2] == [("pretraining", 1, 4, True, False), ("pretraining", 2, 4, True, False)]


def test_progress_reports_reach_the_callback_through_tune(tiny_root, tmp_path, ray_address, monkeypatch):
    from medseg_platform.profiles import PROFILES
    from medseg_platform.study import Study, Variant

    seen = []
    original = ProgressCallback.on_trial_result

    def spy(self, iteration, trials, trial, result, **info):
        original(self, iteration, trials, trial, result, **info)
        seen.append((result.get("phase"), result.get("phase_step"), self.doing(trial)))

    monkeypatch.setattr(ProgressCallback, "on_trial_result", spy)  # the callback runs in this (the driver) process
    stage = {"objective": "supervised", "max_steps": 2, "checkpoint_every": 1, "labelled_batch": 2, "unlabelled_batch": 0}
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root), "data.labelled_batch": 2, "data.unlabelled_batch": 2,
                                              "data.labelled": "1", "eval.log_every": 1, "pretrain": [stage]})
    Study("progress", base, tmp_path / "results", variants=[Variant({"row": "Sup"}, {"objective": "supervised"})],
          dashboard=False).run()
    assert ("pretraining", 1, "pretraining stage 1/1 step 1/2") in seen
    assert ("fine-tuning", 2, "fine-tuning step 2/6") in seen  # between the validations at steps 3 and 6
    assert seen[-1][0] is None  # the final report (result files written) carries no progress


def test_asha_counts_validations_not_the_progress_reports_between_them(tmp_path):
    from ray import tune
    from ray.tune.schedulers import TrialScheduler

    from medseg_platform.study import ASHA_TIME, METRIC, Study
    from medseg_platform.study.runner import tune_config

    base = TrialConfig().replace(**{"optim.max_steps": 6, "eval.val_every": 3})  # 2 validations + the final report
    scheduler = tune_config(Study("s", base, tmp_path, search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, asha=True), "s").scheduler
    good, bad = fake_trial("good"), fake_trial("bad")
    for trial in (good, bad):
        scheduler.on_trial_add(None, trial)

    def result(trial, evaluations, dice):
        return scheduler.on_trial_result(None, trial, {ASHA_TIME: evaluations, METRIC: dice})

    assert result(good, 0, math.nan) == TrialScheduler.CONTINUE  # progress before any validation: no rung
    assert result(good, 1, 0.9) == TrialScheduler.CONTINUE  # its first validation: recorded at the first rung
    assert result(good, 1, 0.9) == TrialScheduler.CONTINUE  # a progress report after it changes nothing
    assert result(bad, 0, math.nan) == TrialScheduler.CONTINUE
    assert result(bad, 1, 0.1) == TrialScheduler.STOP  # ASHA decides at the validation, against the good trial
    rung = scheduler._trial_info[good.trial_id]._rungs[-1][1]
    assert rung == {good.trial_id: 0.9, bad.trial_id: 0.1}
    assert result(good, 3, 0.9) == TrialScheduler.STOP  # the final report reaches max_t (the trial ends anyway)


def test_a_sample_asha_stopped_is_named_so_not_finished(capsys):
    """The HPO probe's search printed "[6/6] finished" six times where the summary said 4 of them stopped early."""
    callback = ProgressCallback([trial_plan(config(), "a"), trial_plan(config(), "b")], clock=lambda: 0.0)
    a, b = trials = [fake_trial(key) for key in ("a", "b")]
    start(callback, trials, a, b)
    # its last report a validation (done=True: Tune sets it on a stopped trial too), or a replayed one of a sample scored
    # from a finished trial, which carries no progress fields
    a.last_result = {**progress("fine-tuning", 25, 100, 2.0, "supervised", evaluations=1), "step": 25, "done": True}
    callback.on_trial_complete(0, trials, a)
    a.status = "TERMINATED"  # as Tune sets it after the hook
    c = fake_trial("c")
    c.last_result = {"step": 50, "val_dice": 0.2, "best_val_dice": 0.2, "evaluations": 2, "done": True}
    callback.on_trial_complete(0, trials + [c], c)
    finish(callback, trials, b, step=100, best_val_dice=0.4, evaluations=3)  # the final report
    err = capsys.readouterr().err
    assert "stopped early (ASHA, step 25) a" in err and "stopped early (ASHA, step 50) c" in err
    assert "finished a" not in err and "finished b" in err
    # and counted apart from the finished ones (the search walkthrough: "3 finished" counted a stopped sample)
    assert "] stopped early (ASHA, step 25) a (0 finished, 1 stopped early, 1 running, " in err, err
    assert "] finished b (1 finished, 1 stopped early, 0 running, " in err, err
    # a restored experiment (Tune calls setup again): its stopped samples still count apart (the review)
    callback.setup()
    b.status = "TERMINATED"
    assert callback.counts(trials)["stopped early"] == 1 and callback.counts(trials)["finished"] == 1


def test_a_search_sample_is_named_as_one_with_the_id_its_history_lists():
    """The studies probe: a search's lines read "started 5eb5213d" where a grid study's name trial keys."""
    callback = ProgressCallback([trial_plan(config(), "base")], clock=lambda: 0.0)
    sample = fake_trial("base")
    sample.config = {"trial": {"key": "base"}, "search": {"optim.lr": 0.01}}
    assert " started sample id-base (" in callback.line("started", sample, [sample], now="running")
    assert " started base (" in callback.line("started", fake_trial("base"), [fake_trial("base")], now="running")


def test_a_trial_started_from_an_interrupted_checkpoint_says_where_it_resumes(tmp_path, capsys):
    """A rerun after Ctrl-C said only "started" though the trial went on from step 153 of 300 (the workflow probe)."""
    import torch

    from medseg_platform.results import checkpoint_path, trial_folder

    plans = [trial_plan(config(steps=300), "resumed"), trial_plan(config(steps=300), "fresh")]
    path = checkpoint_path(trial_folder(tmp_path, "resumed"))
    path.parent.mkdir(parents=True)
    torch.save({"step": 153, "val_curve": []}, path)
    callback = ProgressCallback(plans, clock=lambda: 0.0, study_dir=str(tmp_path))
    resumed, fresh = trials = [fake_trial("resumed"), fake_trial("fresh")]
    start(callback, trials, resumed, fresh)
    err = capsys.readouterr().err
    assert "] started resumed, resuming at step 153/300 (0 finished, " in err and "] started fresh (0 finished, " in err


def test_a_search_sample_started_from_its_checkpoint_says_where_it_resumes(tmp_path, capsys):
    """The search walkthrough: a resumed sample printed only "started sample ..." (its result.json said resumed_from_step
    24): the progress line looked for the plan's key, where a sample trains in the folder of its sampled config and
    Tune's trial id."""
    import torch

    from medseg_platform.results import checkpoint_path, search_trial_key, trial_folder

    base = config(steps=60)
    plans = [trial_plan(base, "base"), trial_plan(base, "base")]
    sampled = {"optim.lr": 0.05}
    folder_config = TrialConfig.from_dict({**base, **sampled}).to_dict()
    path = checkpoint_path(trial_folder(tmp_path, search_trial_key(folder_config, "id-resumed")))
    path.parent.mkdir(parents=True)
    torch.save({"step": 24, "val_curve": []}, path)
    callback = ProgressCallback(plans, clock=lambda: 0.0, study_dir=str(tmp_path))
    resumed, fresh = trials = [fake_trial("resumed"), fake_trial("fresh")]
    for sample in trials:
        sample.config = {"trial": {"key": "base", "config": base}, "search": sampled}
    start(callback, trials, resumed, fresh)
    err = capsys.readouterr().err
    assert "] started sample id-resumed, resuming at step 24/60 (0 finished, " in err, err
    assert "] started sample id-fresh (0 finished, " in err


def test_a_resumed_trial_is_left_out_of_the_seconds_per_unit(tmp_path):
    """A trial resumed at step 500 of 600 and finished in 100 s was credited with all 600 steps: the seconds per unit,
    hence every estimate priced with it, came out 6x too low (the runner review). Credited with the steps after its
    checkpoint only, its start-up and test fit no share: resumed at step 249 of 250, the ETA came out up to 20x too
    high (the progress review). Its seconds teach nothing about a unit; a fresh trial's do."""
    import torch

    from medseg_platform.results import checkpoint_path, trial_folder

    now = [0.0]
    plans = [trial_plan(config(steps=600, val_every=600), "resumed"), trial_plan(config(steps=600, val_every=600), "fresh")]
    path = checkpoint_path(trial_folder(tmp_path, "resumed"))
    path.parent.mkdir(parents=True)
    torch.save({"step": 599, "val_curve": []}, path)
    callback = ProgressCallback(plans, clock=lambda: now[0], study_dir=str(tmp_path))
    resumed, fresh = trials = [fake_trial("resumed"), fake_trial("fresh")]
    start(callback, trials, resumed)
    callback.on_trial_result(0, trials, resumed, progress("fine-tuning", 600, 600, 1.0, "supervised", evaluations=1))
    now[0] = 10.0  # start-up and the test: nothing to do with 1 step's share of the units
    finish(callback, trials, resumed)
    assert callback.finished_work == []
    assert callback.warm_startups == []  # nor its start-up: its first report's rate timed the steps after its checkpoint
    start(callback, trials, fresh)
    now[0] = 25.0  # 10 s of start-up, then 5 steps at 1 s
    callback.on_trial_result(0, trials, fresh, progress("fine-tuning", 5, 600, 1.0, "supervised", evaluations=0))
    callback.on_trial_result(0, trials, fresh, progress("fine-tuning", 600, 600, 1.0, "supervised", evaluations=1))
    now[0] = 625.0
    finish(callback, trials, fresh)
    (seconds, units), = callback.finished_work
    evaluations = plans[1].evaluations * progress_module.EVALUATION_COST
    assert callback.warm_startups == [(10.0, 10.0)] and seconds == 600.0 and math.isclose(units, (600 + evaluations) * 595 / 600)


def test_a_stage_in_the_pretraining_cache_costs_nothing_from_the_start(tmp_path):
    """Stages an interrupted run (or another study) left in the pretraining cache were charged to the trials sharing
    them until one reported it cached: the restored run's ETA was up to 5x too high (the runner review)."""
    from medseg_platform.results import STAGE_FINAL_FILE, pretrain_cache_dir

    plans = [trial_plan(config("mona", pretrain=[ISD]), "m1")]
    identity = plans[0].stages[0].stage
    folder = pretrain_cache_dir(tmp_path) / "stage0-isd_pretrain-0123456789abcdef"
    cold = ProgressCallback(plans, clock=lambda: 0.0, study_dir=str(tmp_path), stage_folders={identity: folder.name})
    assert cold.stage_done == set()
    folder.mkdir(parents=True)
    (folder / STAGE_FINAL_FILE).write_bytes(b"")
    cold.setup()  # Tune calls it again when it restores the experiment (the callback comes back unpickled)
    assert cold.stage_done == {identity}
    unaware = ProgressCallback(plans, clock=lambda: 0.0, study_dir=str(tmp_path))  # as before: the stage charged
    evaluations = plans[0].evaluations * progress_module.EVALUATION_COST
    assert cold._remaining_s(0, {}, 1.0) == 100 * HAND_PRIORS["mona"] + evaluations
    assert unaware._remaining_s(0, {}, 1.0) == ISD["max_steps"] * HAND_PRIORS["isd_pretrain"] + 100 * HAND_PRIORS["mona"] + evaluations


def test_start_up_is_priced_apart_so_the_cold_first_trials_do_not_inflate_every_estimate():
    """The progress review: a trial's seconds included its start-up, which the first trials of a run pay cold (Ray's
    first workers importing torch: 5.6 s in a smoke run, 0.1 s for later trials), so the seconds per unit learnt from
    the first finished trial priced every objective not seen yet several times too high (the smoke study's first ETA
    said 22 s; 6 s were left). A replay of that shape: two cold supervised trials, then two MONA trials (priced by the
    prior until one reports), every unit 0.01 s."""
    now = [0.0]
    plans = [trial_plan(config(), "s1"), trial_plan(config(), "s2"), trial_plan(config("mona"), "m1"),
             trial_plan(config("mona"), "m2")]
    callback = ProgressCallback(plans, clock=lambda: now[0])
    s1, s2, m1, m2 = trials = [fake_trial(key) for key in ("s1", "s2", "m1", "m2")]
    start(callback, trials, s1, s2)
    for trial, at in ((s1, 5.5), (s2, 5.6)):  # 5 s of cold start-up, then 50 steps at 100 per second
        now[0] = at
        callback.on_trial_result(0, trials, trial, progress("fine-tuning", 50, 100, 100.0, "supervised", evaluations=1))
    assert callback.warm_startups == []  # both started before any trial reported
    now[0] = 6.0
    callback.on_trial_result(0, trials, s1, progress("fine-tuning", 100, 100, 100.0, "supervised", evaluations=2))
    now[0] = 6.15
    finish(callback, trials, s1)
    # s1 worked 0.65 s after its first report for the 57.5 of its 115 units left then; counted from its start (6.15 s
    # for 115 units) a unit came out 4.7x too long
    (seconds, units), = callback.finished_work
    assert math.isclose(seconds, 0.65) and units == 57.5
    unit = seconds / units
    # left: s2's last 50 steps and 2 evaluations; m1 and m2, 665 units each at the prior (no warm start-up measured)
    expected = (0.5 + 10 * unit + 2 * 665 * unit) / 2
    assert math.isclose(callback.eta_s(trials), expected)
    # what is left in this replay: s2 ends at 6.25; m1 starts at 6.15 and m2 at 6.25, 0.1 s of warm start-up each, then
    # 665 units at 0.01 s: the last ends at 6.25 + 0.1 + 6.65 = 13.0
    truth = 13.0 - 6.15
    assert 0.9 < callback.eta_s(trials) / truth < 1.25
    start(callback, trials, m1)
    now[0] = 6.15 + 0.1 + 25 * 0.065  # its first report: 25 MONA steps at 0.065 s after 0.1 s of start-up
    callback.on_trial_result(0, trials, m1, progress("fine-tuning", 25, 100, 1 / 0.065, "mona", evaluations=0))
    (began, seconds), = callback.warm_startups
    assert began == 6.15 and math.isclose(seconds, 0.1)
    now[0] = 6.25
    finish(callback, trials, s2)
    # m2, started now, is charged m1's warm start-up: 0.1 s, then 100 steps at 0.065 s and 15 units
    states = callback._states(trials, None, None)
    assert math.isclose(callback._startup_left_s(3, states), 0.1)
    assert callback._startup_left_s(2, states) == 0.0  # m1 reported: its start-up is behind it


def test_a_retry_measures_its_start_up_from_its_own_attempt():
    """The diff review: a trial whose worker died before it reported, then retried, had its start-up measured from its
    first attempt's start: 305 s of a failed attempt charged as start-up to every trial not started yet (4x the ETA)."""
    now = [0.0]
    plans = [trial_plan(config(), key) for key in ("s1", "s2", "s3")]
    callback = ProgressCallback(plans, clock=lambda: now[0])
    s1, s2, s3 = trials = [fake_trial(key) for key in ("s1", "s2", "s3")]
    start(callback, trials, s1)
    now[0] = 10.0
    callback.on_trial_result(0, trials, s1, progress("fine-tuning", 10, 100, 2.0, "supervised", evaluations=0))  # cold
    now[0] = 20.0
    start(callback, trials, s2)
    now[0] = 320.0  # its worker dies before any report; Tune retries it
    s2.num_failures, s2.status = 1, "PENDING"
    callback.on_trial_recover(0, trials, s2)
    now[0] = 325.0
    start(callback, trials, s2)
    now[0] = 331.0  # 1 s of start-up, then 10 steps at 2 per second
    callback.on_trial_result(0, trials, s2, progress("fine-tuning", 10, 100, 2.0, "supervised", evaluations=0))
    assert callback.warm_startups == [(325.0, 1.0)]
    states = callback._states(trials, None, None)
    assert callback._startup_left_s(2, states) == 1.0  # s3, not started: the retry's start-up, not 305 s
