"""The single-process training loop: learning, exact resume, non-finite losses, result files."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from medseg_platform.config import TrialConfig
from medseg_platform.engine import NonFiniteLossError, train_trial
from medseg_platform.results import read_trial, write_trial_results


def small_cfg(root: Path, **overrides) -> TrialConfig:
    base = {"data.root": str(root), "data.patch_size": [32, 32], "data.labelled": "2", "data.labelled_batch": 2,
            "data.unlabelled_batch": 2, "model.channels": [4, 8, 16, 32, 64], "optim.max_steps": 8,
            "eval.val_every": 4, "eval.log_every": 2, "seed": 3}
    return TrialConfig.from_dict({**base, **overrides})


def quiet(_msg):
    pass


class Interrupt(Exception):
    """A trial stopped at one of its reports, as a killed worker's is."""


def interrupted_at_first_validation(cfg: TrialConfig, trial_dir: Path) -> None:
    """Train ``cfg`` into ``trial_dir`` until its first validation has written its checkpoint, and stop it there."""

    def stop_at_first_validation(metrics, ckpt):
        if ckpt is not None:  # the first validation (progress-only reports come before it)
            raise Interrupt

    with pytest.raises(Interrupt):
        train_trial(cfg, trial_dir, report=stop_at_first_validation, log=quiet)


@pytest.mark.parametrize("objective", ["supervised", "mean_teacher"])
def test_trial_trains_validates_and_writes_results(tiny_root, tmp_path, objective):
    cfg = small_cfg(tiny_root, objective=objective)
    reports = []
    outcome = train_trial(cfg, tmp_path / "t", report=lambda m, c: reports.append((m, c)), log=quiet)
    assert [m["step"] for m, c in reports if c is not None] == [4, 8]  # validations, with the checkpoint
    assert all((c / "checkpoint.pt").is_file() for _, c in reports if c is not None)
    # progress-only reports at the curve rows between validations: no checkpoint, the last known metric
    progress = [m for m, c in reports if c is None]
    assert [(m["phase"], m["phase_step"], m["phase_steps"], m["evaluations"]) for m in progress] == [("fine-tuning", 2, 8, 0), ("fine-tuning", 6, 8, 1)]
    assert math.isnan(progress[0]["best_val_dice"]) and progress[1]["best_val_dice"] == reports[1][0]["best_val_dice"]
    assert outcome.best_step in (4, 8) and 0.0 <= outcome.best_val_dice <= 1.0
    assert [row["step"] for row in outcome.curves] == [2, 4, 6, 8]
    assert outcome.curves[-1]["loss"] < outcome.curves[0]["loss"]  # it learns something in 8 steps
    assert {r["case"] for r in outcome.test_rows} == {"patient006_frame01", "patient006_frame02"}
    assert len(outcome.test_rows) == 2 * 3
    record = write_trial_results(tmp_path / "t", config=cfg.to_dict(), tags={"row": objective}, outcome=outcome, seed=cfg.seed)
    back = read_trial(tmp_path / "t")
    assert len(back.per_case) == 6
    for key in ("best_step", "best_val_dice", "seed", "labelled", "trial_key", "status"):
        assert back.result[key] == record[key]
    assert back.result["test"]["mean"]["dice"] == pytest.approx(record["test"]["mean"]["dice"], nan_ok=True)
    assert TrialConfig.from_dict(back.result["config"]) == cfg
    assert back.result["labelled"]["patients"] == ["patient004", "patient001"]


def test_interrupted_trial_resumes_exactly(tiny_root, tmp_path):
    cfg = small_cfg(tiny_root, objective="mean_teacher")
    straight = train_trial(cfg, tmp_path / "straight", log=quiet)
    interrupted_at_first_validation(cfg, tmp_path / "resumed")
    resumed = train_trial(cfg, tmp_path / "resumed", log=quiet)
    assert resumed.resumed_from_step == 4
    assert [r["loss"] for r in resumed.curves] == pytest.approx([r["loss"] for r in straight.curves], rel=1e-5)
    assert resumed.best_val_dice == pytest.approx(straight.best_val_dice, rel=1e-6)
    assert [r["dice"] for r in resumed.test_rows] == pytest.approx([r["dice"] for r in straight.test_rows], rel=1e-6, nan_ok=True)


def test_the_first_curve_row_after_a_resume_times_its_steps_not_the_resume(tiny_root, tmp_path):
    """The multi-worker review: the first row's step rate counted the checkpoint's load and the validations sent to
    Tune again (about 2 s each through Ray Train), 0.08 steps/s where the steps ran at 1.5; the ETA learns from it."""
    cfg = small_cfg(tiny_root, objective="supervised")
    interrupted_at_first_validation(cfg, tmp_path / "t")
    replayed = []

    def slow_replay(metrics, ckpt):  # the validation of step 4, sent again before the steps: 1 s
        if not replayed:
            replayed.append(metrics["step"])
            time.sleep(1.0)

    resumed = train_trial(cfg, tmp_path / "t", report=slow_replay, log=quiet)
    assert resumed.resumed_from_step == 4 and replayed == [4]
    first = next(row for row in resumed.curves if row["step"] == 6)  # 2 steps of a few milliseconds
    assert first["steps_per_s"] > 4.0, first


def test_a_resumed_trials_timing_adds_the_attempts_before_it_and_rates_leave_out_validations(tiny_root, tmp_path, monkeypatch):
    """The timing review: a resumed trial's result.json timing was its last attempt's alone (train_s half the steps of
    a trial resumed half-way), and the curve row after each validation counted the validation, checkpoint and report
    as steps. Each step here takes at least 50 ms (a sleep inside the timed step) and each validation 0.5 s more."""
    from medseg_platform.engine import loop as engine_loop
    from medseg_platform.engine import trial as engine_trial
    from medseg_platform.engine.checkpoint import load_checkpoint
    from medseg_platform.results import checkpoint_path

    weak, validation_dice = engine_loop.TrainLoop._weak, engine_trial.validation_dice
    monkeypatch.setattr(engine_loop.TrainLoop, "_weak", lambda self, *args: time.sleep(0.05) or weak(self, *args))
    monkeypatch.setattr(engine_trial, "validation_dice", lambda *args: time.sleep(0.5) or validation_dice(*args))
    cfg = small_cfg(tiny_root, objective="supervised", **{"optim.max_steps": 12})  # validations at 4, 8 and 12
    interrupted_at_first_validation(cfg, tmp_path / "t")
    saved = load_checkpoint(checkpoint_path(tmp_path / "t"))["timing"]
    assert saved["train_s"] >= 4 * 0.05 and saved["val_s"] >= 0.5 and saved["total_s"] >= saved["train_s"] + saved["val_s"]
    resumed = train_trial(cfg, tmp_path / "t", log=quiet)
    assert resumed.resumed_from_step == 4
    assert resumed.timing["train_s"] >= 12 * 0.05 and resumed.timing["val_s"] >= 3 * 0.5  # both attempts' steps
    assert resumed.timing["total_s"] >= resumed.timing["train_s"] + resumed.timing["val_s"]
    after_validation = next(row for row in resumed.curves if row["step"] == 10)  # 2 steps after the validation of 8
    assert 2 / after_validation["steps_per_s"] < 0.5, after_validation  # the 0.5 s validation is not in it
    # nor a progress report's time (Tune's through Ray Train take seconds): a report of 0.5 s at each curve row
    reports = lambda metrics, ckpt: time.sleep(0.5)  # noqa: E731
    slow = train_trial(cfg, tmp_path / "reported", report=reports, log=quiet)
    assert all(2 / row["steps_per_s"] < 0.5 for row in slow.curves), [row["steps_per_s"] for row in slow.curves]


def test_a_resumed_trial_reports_its_recorded_validations_again_before_it_trains_on(tiny_root, tmp_path):
    """A driver stopped between a trial's checkpoint at a validation and its handling of that report never passed it
    to ASHA: the resumed trial's first report used to be its next validation, recorded at the earlier rung with a later
    value (the HPO probe). Now the validations reported by the resumed trial are the uninterrupted trial's, one per
    evaluation, in order."""
    cfg = small_cfg(tiny_root, objective="mean_teacher", **{"optim.max_steps": 12, "optim.lr": 0.1})

    def validations(reports):  # the first report at each evaluation count: (evaluations, step, val, selected)
        out, seen = [], set()
        for metrics in reports:
            k = metrics.get("evaluations", 0)
            if k and k not in seen:
                seen.add(k)
                out.append((k, metrics["step"], metrics["val_dice"], metrics["best_val_dice"]))
        return out

    straight = []
    train_trial(cfg, tmp_path / "straight", report=lambda metrics, ckpt: straight.append(metrics), log=quiet)

    checkpoints = []

    def stop_at_second_validation(metrics, ckpt):
        if ckpt is not None:
            checkpoints.append(metrics["step"])
            if len(checkpoints) == 2:  # the checkpoint is written; the report is lost with the driver
                raise Interrupt

    with pytest.raises(Interrupt):
        train_trial(cfg, tmp_path / "resumed", report=stop_at_second_validation, log=quiet)
    resumed = []
    outcome = train_trial(cfg, tmp_path / "resumed", report=lambda metrics, ckpt: resumed.append(metrics), log=quiet)
    assert outcome.resumed_from_step == checkpoints[1] == 8
    assert [m["evaluations"] for m in resumed[:2]] == [1, 2] and all(m.get("replayed") for m in resumed[:2])
    assert validations(resumed) == validations(straight)  # exact resume: the same numbers
    assert len(validations(straight)) == 3 and len({v[2] for v in validations(straight)}) == 3  # three distinct val Dice


def test_non_finite_loss_names_step_and_term(tiny_root, tmp_path, monkeypatch):
    from tests.conftest import poison_supervised_loss

    poison_supervised_loss(monkeypatch, from_step=3)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss is NaN/inf in term\(s\) ce"):
        train_trial(small_cfg(tiny_root), tmp_path / "nan", log=quiet)


def pretrain_cfg(root: Path, **overrides) -> TrialConfig:
    stage = {"objective": "supervised", "max_steps": 4, "checkpoint_every": 2, "labelled_batch": 2, "unlabelled_batch": 0}
    return small_cfg(root, pretrain=[stage, {**stage, "objective_params": {"sup_weight": 0.5}}], **overrides)


def test_pretraining_chain_is_cached_and_shared_between_trials(tiny_root, tmp_path):
    cfg = pretrain_cfg(tiny_root)
    cache = tmp_path / "cache"
    messages = []
    first = train_trial(cfg, tmp_path / "a", log=messages.append, pretrain_cache=cache)
    assert sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()) == ["stage0", "stage1"]
    assert all((p / "final.pt").is_file() and not (p / "checkpoint.pt").exists() for p in cache.iterdir() if p.is_dir())
    assert first.timing["pretrain_s"] > 0
    assert not any("cached" in m for m in messages)
    keys = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert [(s["stage"], s["key"], s["cached"]) for s in first.extra["pretrain_stages"]] == [(0, keys[0], False), (1, keys[1], False)]

    messages.clear()
    other_fine_tune = cfg.replace(**{"optim.lr": 0.02})  # same pretraining, different fine-tuning: stages are reused
    second = train_trial(other_fine_tune, tmp_path / "b", log=messages.append, pretrain_cache=cache)
    assert sum("cached" in m for m in messages) == 2
    assert [s["cached"] for s in second.extra["pretrain_stages"]] == [True, True]  # result.json's pretrain_stages

    messages.clear()
    other_seed = cfg.replace(seed=4)  # the seed is part of the key
    train_trial(other_seed, tmp_path / "c", log=messages.append, pretrain_cache=cache)
    assert not any("cached" in m for m in messages)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 4


def test_a_retried_trial_records_the_stages_an_earlier_attempt_trained(tiny_root, tmp_path):
    from medseg_platform.results import read_attempts, start_attempt

    cfg = pretrain_cfg(tiny_root)
    cache, trial_dir = tmp_path / "cache", tmp_path / "a"
    trial_dir.mkdir()
    start_attempt(trial_dir)
    first = train_trial(cfg, trial_dir, log=quiet, pretrain_cache=cache)
    assert [s["cached"] for s in first.extra["pretrain_stages"]] == [False, False]
    assert [s["cached"] for s in read_attempts(trial_dir)["history"][0]["pretrain_stages"]] == [False, False]

    # a retry that finds its fine-tuning checkpoint resumes it and runs no stage: the first attempt's record stands
    start_attempt(trial_dir)
    resumed = train_trial(cfg, trial_dir, log=quiet, pretrain_cache=cache)
    # (its timing carries the first attempt's pretraining, to which this attempt added nothing)
    assert resumed.resumed_from_step == cfg.optim.max_steps and resumed.timing["pretrain_s"] == first.timing["pretrain_s"] > 0
    assert resumed.extra["pretrain_stages"] == first.extra["pretrain_stages"]

    # a retry that died before its first fine-tuning checkpoint reads its own stages from the cache: still trained
    (trial_dir / "checkpoint" / "checkpoint.pt").unlink()
    start_attempt(trial_dir)
    messages = []
    retried = train_trial(cfg, trial_dir, log=messages.append, pretrain_cache=cache)
    assert sum("cached" in m for m in messages) == 2  # this attempt did read them from the cache
    assert [s["cached"] for s in read_attempts(trial_dir)["history"][2]["pretrain_stages"]] == [True, True]
    assert [(s["key"], s["cached"]) for s in retried.extra["pretrain_stages"]] == \
        [(s["key"], False) for s in first.extra["pretrain_stages"]]

    # another trial of the same chain, with attempts of its own, read them from the cache
    other_dir = tmp_path / "b"
    other_dir.mkdir()
    start_attempt(other_dir)
    other = train_trial(cfg.replace(**{"optim.lr": 0.02}), other_dir, log=quiet, pretrain_cache=cache)
    assert [s["cached"] for s in other.extra["pretrain_stages"]] == [True, True]


def test_a_trial_whose_worker_died_in_a_later_stage_records_the_stages_it_had_trained(tiny_root, tmp_path, monkeypatch):
    from medseg_platform.engine import pretrain
    from medseg_platform.results import read_attempts, start_attempt

    train_stage = pretrain._train_stage

    def dies_in_stage_1(cfg, index, *args, **kwargs):
        if index == 1:
            raise RuntimeError("worker died")  # what a retry sees of a killed worker: stage 1 never finished
        return train_stage(cfg, index, *args, **kwargs)

    cfg, cache, trial_dir = pretrain_cfg(tiny_root), tmp_path / "cache", tmp_path / "a"
    trial_dir.mkdir()
    start_attempt(trial_dir)
    monkeypatch.setattr(pretrain, "_train_stage", dies_in_stage_1)
    with pytest.raises(RuntimeError, match="worker died"):
        train_trial(cfg, trial_dir, log=quiet, pretrain_cache=cache)
    assert [s["stage"] for s in read_attempts(trial_dir)["history"][0]["pretrain_stages"]] == [0]  # only what finished
    monkeypatch.setattr(pretrain, "_train_stage", train_stage)
    start_attempt(trial_dir)
    retried = train_trial(cfg, trial_dir, log=quiet, pretrain_cache=cache)
    assert [s["cached"] for s in read_attempts(trial_dir)["history"][1]["pretrain_stages"]] == [True, False]
    assert [(s["stage"], s["cached"]) for s in retried.extra["pretrain_stages"]] == [(0, False), (1, False)]
    # an entry edited by hand (a key that is not a text) is bookkeeping: it counts for no stage and breaks nothing
    from medseg_platform.results import stages_over_attempts

    history = read_attempts(trial_dir)["history"]
    (trial_dir / "attempts.json").write_text(json.dumps({"attempts": 2, "history": [
        {**history[0], "pretrain_stages": [{"stage": 0, "key": ["x"], "cached": False}]}, history[1]]}))
    assert [s["cached"] for s in stages_over_attempts(trial_dir, [])] == [True, False]


def test_fine_tuning_starts_from_the_pretrained_student(tiny_root, tmp_path, monkeypatch):
    import medseg_platform.engine as engine
    from medseg_platform.engine import pretrain, trial

    cfg = pretrain_cfg(tiny_root)
    seen = {}
    original = trial.build_objective

    def spy(name, model, params):
        seen[len(seen)] = {k: v.clone() for k, v in model.state_dict().items()}
        return original(name, model, params)

    monkeypatch.setattr(pretrain, "build_objective", spy)
    monkeypatch.setattr(trial, "build_objective", spy)
    final = engine.run_pretraining(cfg, engine.load_training_data(cfg, quiet), tmp_path / "cache", torch.device("cpu"), None, quiet)
    seen.clear()
    train_trial(cfg, tmp_path / "t", log=quiet, pretrain_cache=tmp_path / "cache")
    fine_tune_init = seen[0]
    assert all(torch.equal(fine_tune_init[k], final["student"][k]) for k in final["student"])


def test_a_stage_of_the_same_objective_with_other_parameters_starts_from_its_student_alone(tiny_root, tmp_path, monkeypatch):
    # the ACTION review: a stage without L_anco builds no head, the next one with it does; the strict hand-off failed at
    # stage 1's start, after stage 0 had trained. Loading only what fitted left a bank's counters, or an NN pool's
    # pointer, over fresh rows (the diff reviews): with other parameters the student alone carries over
    import medseg_platform.engine as engine
    from medseg_platform.engine import pretrain

    loaded = []
    original = pretrain.build_objective

    def spy(name, model, params):
        objective = original(name, model, params)
        load = objective.load_state_dict
        objective.load_state_dict = lambda state, *a, **k: loaded.append(len(state)) or load(state, *a, **k)
        return objective

    monkeypatch.setattr(pretrain, "build_objective", spy)
    stage = {"objective": "action", "max_steps": 1, "checkpoint_every": 1, "labelled_batch": 2, "unlabelled_batch": 2,
             "objective_params": {"num_queries": 8, "num_negatives": 8, "repr_dim": 8, "anco_weight": 0.0}}
    other = {**stage, "objective_params": {**stage["objective_params"], "anco_weight": 0.01}}
    for chain, whole in (([stage, other], False), ([stage, stage], True)):
        messages, loaded[:] = [], []
        cfg = small_cfg(tiny_root, objective="action", pretrain=chain)
        final = engine.run_pretraining(cfg, engine.load_training_data(cfg, quiet), tmp_path / f"cache-{whole}",
                                       torch.device("cpu"), None, messages.append)
        said = [m for m in messages if "with other parameters" in m]
        if whole:  # the same parameters: the whole objective's state (student, teacher, ...) carries over
            assert not said and len(loaded) == 1 and loaded[0] > len(final["student"])
        else:
            assert len(said) == 1 and said[0].startswith("pretraining stage 1: stage 0 trained action with other parameters")
            assert loaded == []  # the student's weights went into the model before the objective was built
        assert final["student"]


def test_a_stage_asking_for_its_own_epoch_gets_it(tiny_root, tmp_path, monkeypatch):
    # the ACTION review: steps_per_epoch 0 ("the trial's own epoch") passed validation in a stage, which then failed at its
    # first step saying the engine had not resolved it; a stage resolves it as fine-tuning does, from its own B_u
    import medseg_platform.engine as engine
    from medseg_platform.data.splits import epoch_steps
    from medseg_platform.engine import pretrain

    built = []
    original = pretrain.build_objective
    monkeypatch.setattr(pretrain, "build_objective", lambda name, model, params: built.append(params) or original(name, model, params))
    stage = {"objective": "mona", "max_steps": 1, "checkpoint_every": 1, "labelled_batch": 2, "unlabelled_batch": 2,
             "objective_params": {"steps_per_epoch": 0, "num_anchors": 8, "num_negatives": 8, "nn_pool_resolution": 8}}
    cfg = small_cfg(tiny_root, objective="supervised", pretrain=[stage])
    data = engine.load_training_data(cfg, quiet)
    engine.run_pretraining(cfg, data, tmp_path / "cache", torch.device("cpu"), None, quiet)
    assert [params["steps_per_epoch"] for params in built] == [epoch_steps(data.subset, 2)]
    assert built[0]["steps_per_epoch"] >= 1


def test_crashed_pretraining_stage_resumes_where_it_stopped(tiny_root, tmp_path, monkeypatch):
    import medseg_platform.engine as engine

    cfg = pretrain_cfg(tiny_root)
    original = engine.TrainLoop.step

    def crash_at_step_3(self, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(engine.TrainLoop, "step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_trial(cfg, tmp_path / "t", log=quiet, pretrain_cache=tmp_path / "cache")
    stage0 = next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("stage0"))
    assert (stage0 / "checkpoint.pt").is_file() and not (stage0 / "final.pt").exists()
    monkeypatch.setattr(engine.TrainLoop, "step", original)
    messages = []
    train_trial(cfg, tmp_path / "t", log=messages.append, pretrain_cache=tmp_path / "cache")
    assert "pretraining stage 0: resumed at step 2" in messages


def test_each_pretraining_stage_draws_from_streams_of_its_own(tiny_root, tmp_path, monkeypatch):
    """Stage i seeded the global generators with seed + i, the seed of another trial's first stage and fine-tuning (the
    default study's seeds 1, 2, 3: ACTION's two stages); each stage's global and data streams are now its own
    (``seeding.stream_seed``), the fine-tuning's the trial seed's, as before."""
    from medseg_platform.engine import loop, pretrain, trial
    from medseg_platform.seeding import DATA_RNG, GLOBAL_RNG, stream_seed

    cfg = pretrain_cfg(tiny_root, seed=2)
    global_seeds, data_seeds = [], []
    for module in (pretrain, trial):
        monkeypatch.setattr(module, "seed_everything", lambda seed, original=module.seed_everything: global_seeds.append(seed) or original(seed))
        monkeypatch.setattr(module, "data_generator", lambda *a, original=loop.data_generator, **k: (
            data_seeds.append(original(*a, **k).initial_seed()) or original(*a, **k)))
    train_trial(cfg, tmp_path / "t", log=quiet, pretrain_cache=tmp_path / "cache")
    assert global_seeds == [stream_seed(2, 1, GLOBAL_RNG), stream_seed(2, 2, GLOBAL_RNG), 2]
    assert data_seeds == [stream_seed(2, 1, DATA_RNG), stream_seed(2, 2, DATA_RNG), 2]
    assert not {3, 4} & set(global_seeds + data_seeds) and len(set(global_seeds[:2] + data_seeds[:2])) == 4


@pytest.mark.parametrize("lr_step, shift", [("released", 0), ("aligned", 1)])
def test_lr_step_sets_the_poly_rate_of_the_released_or_the_next_step_index(tiny_root, tmp_path, lr_step, shift):
    """Released: after step s (0-based) the rate is poly(s), so steps 0 and 1 both train at the base rate; "aligned":
    poly(s + 1). The same flag for fine-tuning (optim.lr_step) and each pretraining stage (lr_step of the stage)."""
    from medseg_platform.engine import poly_lr, run_pretraining, load_training_data

    cfg = pretrain_cfg(tiny_root, **{"optim.lr_step": lr_step})
    cfg = cfg.replace(pretrain=[{**cfg.to_dict()["pretrain"][0], "lr_step": lr_step}])
    outcome = train_trial(cfg, tmp_path / "t", log=quiet, pretrain_cache=tmp_path / "cache")
    o = cfg.optim
    assert [row["lr"] for row in outcome.curves] == pytest.approx([poly_lr(o.lr, s - 1 + shift, o.max_steps, o.poly_power) for s in (2, 4, 6, 8)])
    stage = cfg.pretrain[0]
    final = run_pretraining(cfg, load_training_data(cfg, quiet), tmp_path / "cache", torch.device("cpu"), None, quiet)  # cached
    assert [row["lr"] for row in final["curves"]] == pytest.approx([poly_lr(stage.lr, s - 1 + shift, stage.max_steps, stage.poly_power)
                                                                    for s in (2, 4)])


@pytest.mark.parametrize("selection, selected_step", [("best_val", 4), ("final", 8)])
def test_eval_selection_tests_the_best_val_or_the_final_state(tiny_root, tmp_path, monkeypatch, selection, selected_step):
    from medseg_platform.engine import load_selected_model, trial

    val_dice = iter([0.9, 0.5])  # the first validation (step 4) is the best on val
    monkeypatch.setattr(trial, "validation_dice", lambda *args: next(val_dice))
    cfg = small_cfg(tiny_root, **{"eval.selection": selection})
    outcome = train_trial(cfg, tmp_path / "t", log=quiet)
    assert outcome.best_step == selected_step and outcome.best_val_dice == {4: 0.9, 8: 0.5}[selected_step]
    checkpoint = torch.load(tmp_path / "t" / "checkpoint" / "checkpoint.pt", weights_only=True)
    final = {k.removeprefix("student."): v for k, v in checkpoint["objective"].items() if k.startswith("student.")}
    selected = load_selected_model(cfg, tmp_path / "t", torch.device("cpu"), outcome.best_step).state_dict()
    same = all(torch.equal(selected[k], final[k]) for k in final)
    assert same == (selection == "final")


@pytest.mark.parametrize("override, message", [
    ({"optim.lr_step": "next"}, "optim.lr_step 'next': choose 'released' or 'aligned'"),
    ({"eval.selection": "best_test"}, "eval.selection 'best_test': choose 'best_val' or 'final'"),
    ({"pretrain": [{"objective": "supervised", "lr_step": "late"}]}, r"pretrain\[0\].lr_step 'late': choose 'released' or 'aligned'"),
])
def test_protocol_flags_are_validated(override, message):
    from medseg_platform.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_dict(override).validate(check_data=False)


def test_steps_per_epoch_0_is_filled_with_the_labelled_sets_own_epoch(tiny_root, tmp_path, monkeypatch):
    from medseg_platform.data.splits import epoch_steps
    from medseg_platform.engine import load_training_data, trial

    seen = []
    original = trial.build_objective

    def spy(name, model, params):  # records what the engine passes, trains a supervised objective
        seen.append(dict(params))
        return original("supervised", model, {})

    monkeypatch.setattr(trial, "build_objective", spy)
    cfg = small_cfg(tiny_root, objective="mona", objective_params={"steps_per_epoch": 0}, **{"optim.max_steps": 2, "eval.val_every": 2})
    outcome = train_trial(cfg, tmp_path / "t", log=quiet)
    expected = epoch_steps(load_training_data(cfg, quiet).subset, cfg.data.unlabelled_batch)
    assert seen == [{"steps_per_epoch": expected}] and outcome.extra["steps_per_epoch"] == expected
    assert expected == len(outcome.labelled.unlabelled_slices) // 2 > 1
    seen.clear()
    train_trial(cfg.replace(**{"objective_params.steps_per_epoch": 7}), tmp_path / "u", log=quiet)
    assert seen == [{"steps_per_epoch": 7}]  # a number is kept


def test_distance_units_voxel_measures_distances_in_voxels(tiny_root, monkeypatch):
    import numpy as np

    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.engine import evaluate
    from medseg_platform.evaluation.metrics import evaluate_case

    volume = AcdcLayout(tiny_root, 4).read_volume("patient006_frame01")
    prediction = np.roll(volume.label, 2, axis=2)
    monkeypatch.setattr(evaluate, "predict_case", lambda model, image, cfg, device: prediction)
    rows = {units: evaluate.evaluate_volumes(torch.nn.Identity(), [volume], small_cfg(tiny_root, **{"eval.distance_units": units}), torch.device("cpu"))
            for units in ("mm", "voxel")}
    assert [r["dice"] for r in rows["mm"]] == [r["dice"] for r in rows["voxel"]]
    assert [r["hd95"] for r in rows["mm"]] == [r["hd95"] for r in evaluate_case(prediction, volume.label, 4, volume.spacing)]
    assert [r["hd95"] for r in rows["voxel"]] == [r["hd95"] for r in evaluate_case(prediction, volume.label, 4, None)]
    assert [r["hd95"] for r in rows["mm"]] != [r["hd95"] for r in rows["voxel"]]


@pytest.mark.parametrize("empty_policy", ["nan", "released"])
def test_validation_dice_is_the_mean_dice_of_the_full_evaluation(tiny_root, empty_policy):
    """Validation skips the surface distances (``validation_dice``) and must score exactly what the full
    evaluation's mean Dice scores, or model selection would change."""
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.engine import evaluate_volumes, mean_dice, validation_dice
    from methods.registry import build_model

    cfg = small_cfg(tiny_root, **{"eval.empty_policy": empty_policy})
    layout = AcdcLayout(tiny_root, 4)
    volumes = [layout.read_volume(c) for c in layout.val_cases + layout.test_cases]
    torch.manual_seed(1)  # an untrained network that predicts some foreground here (seed 0's predicts none)
    model = build_model("unet", num_classes=4, channels=cfg.model.channels).eval()
    expected = mean_dice(evaluate_volumes(model, volumes, cfg, torch.device("cpu")))
    assert validation_dice(model, volumes, cfg, torch.device("cpu")) == expected
    assert 0.0 < expected < 1.0  # a model that predicts some of every volume: the comparison is not vacuous


def test_the_loop_logs_monas_deferred_nn_term_at_every_curve_row(tiny_root, tmp_path):
    """The loop sets ``defer_logged_terms`` and calls ``after_backward``: MONA's gradient-free L_nn, computed there
    (docs/methods.md, 'L_nn after the backward pass'), reaches every curve row, finite and positive; a loop
    that skipped the call would stop at the next step (the term stays pending)."""
    params = {"steps_per_epoch": 2, "nn_pool_capacity": 4, "nn_topk": 2, "nn_pool_resolution": "full",
              "num_anchors": 8, "num_negatives": 16, "bank_capacity_background": 64, "bank_capacity_foreground": 32}
    cfg = small_cfg(tiny_root, objective="mona", objective_params=params, **{"optim.max_steps": 6, "eval.val_every": 6})
    outcome = train_trial(cfg, tmp_path / "t", log=quiet)
    assert [row["step"] for row in outcome.curves] == [2, 4, 6]
    assert all(math.isfinite(row["nn"]) and row["nn"] > 0 for row in outcome.curves), outcome.curves


def test_a_stage_lock_held_elsewhere_is_reported_before_waiting(tmp_path):
    """A trial that waits for another one training the same stage used to wait without a word."""
    import fcntl
    import threading

    lock = tmp_path / "stage" / ".lock"
    lock.parent.mkdir()
    events = []
    with open(lock, "a+") as other:  # another trial holds the lock
        fcntl.flock(other, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: _run_locked(lock, events))
        waiter.start()
        deadline = time.monotonic() + 10
        while "waiting" not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events == ["waiting"]  # told, and not yet inside
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert events == ["waiting", "inside"]
    events.clear()
    _run_locked(lock, events)  # a free lock: no message
    assert events == ["inside"]


def _run_locked(lock, events):
    from medseg_platform.engine.pretrain import _exclusive

    with _exclusive(lock, None, torch.device("cpu"), on_wait=lambda: events.append("waiting"), poll_s=0.05):
        events.append("inside")


def test_a_stage_lock_on_a_filesystem_without_flock_runs_unlocked(tmp_path, monkeypatch):
    """The cluster audit: on NFS without a lock daemon ``flock`` raises ENOLCK, which failed every trial with a
    pretraining stage (retried as an infrastructure error), while a study folder's lock runs unlocked there."""
    import errno
    import fcntl

    from medseg_platform.engine.pretrain import _exclusive

    def no_locks(fh, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    said, events = [], []
    with _exclusive(tmp_path / "stage" / ".lock", None, torch.device("cpu"), log=said.append):
        events.append("inside")
    assert events == ["inside"] and len(said) == 1
    assert said[0].endswith("no file locks on this filesystem (No locks available); this stage runs unlocked, so another "
                            "trial may train it at the same time")


def test_a_stage_folder_that_cannot_be_made_is_one_line_not_a_retried_crash(tmp_path):
    """The cache review: a pretrain-cache that is a file (or a folder this user cannot write in) gave a traceback,
    which Ray retried twice as a crashed worker."""
    from medseg_platform.engine.pretrain import _exclusive
    from medseg_platform.errors import ConfigError

    (tmp_path / "pretrain-cache").write_text("")
    with pytest.raises(ConfigError, match=r"pretrain-cache/stage0-x: cannot create this pretraining stage's folder \(.*\); "
                                          r"check that .*pretrain-cache is a folder this user can write in"):
        with _exclusive(tmp_path / "pretrain-cache" / "stage0-x" / ".lock", None, torch.device("cpu")):
            pass


def test_one_labelled_subset_written_two_ways_is_one_stage():
    """The cache review: --labelled 1 and --labelled 25% of a 4-patient dataset label the same patient, and trained each
    stage twice under two keys; the key has the resolved patients and slices (another subset: another key)."""
    from types import SimpleNamespace

    from medseg_platform.engine import stage_key
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import method_overrides

    smoke = PROFILES["smoke"]
    cfg = smoke.trial.replace(**{**method_overrides("action", smoke), "data.root": "/data/x"})
    one = SimpleNamespace(patients=("patient002",), labelled_slices=("a", "b"))
    for index in (0, 1):
        assert stage_key(cfg.replace(**{"data.labelled": "25%"}), index, one) == stage_key(cfg, index, one)
        assert stage_key(cfg, index, SimpleNamespace(patients=("patient003",), labelled_slices=("a", "b"))) != stage_key(cfg, index, one)
        assert stage_key(cfg, index, SimpleNamespace(patients=("patient002",), labelled_slices=("a",))) != stage_key(cfg, index, one)


def test_a_pretraining_stage_trained_under_mixed_precision_has_its_own_cache_key():
    """A bf16 stage was reused by a full-precision trial of the same key (and the reverse); full-precision stages keep
    the key they had before amp was part of it (the pinned value, of the current STAGE_CACHE_VERSION)."""
    from types import SimpleNamespace

    from medseg_platform.engine import stage_key
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import method_overrides

    smoke = PROFILES["smoke"]
    cfg = smoke.trial.replace(**{**method_overrides("mona", smoke), "data.root": "/data/x"})
    subset = SimpleNamespace(patients=("patient001",), labelled_slices=("a", "b"))
    assert stage_key(cfg, 0, subset) == "stage0-isd_pretrain-3d0e646ce65fe10c"  # (STAGE_CACHE_VERSION 4, model.upsample)
    assert stage_key(cfg.replace(**{"optim.amp": "bf16"}), 0, subset) != stage_key(cfg, 0, subset)
    from unittest import mock

    from medseg_platform.engine import pretrain

    bf16 = cfg.replace(**{"optim.amp": "bf16"})
    with mock.patch.object(pretrain, "AMP_STAGE_REVISION", 0):  # the ISD logits in full precision under autocast
        earlier = stage_key(bf16, 0, subset)
    assert stage_key(bf16, 0, subset) != earlier and stage_key(cfg, 0, subset) == "stage0-isd_pretrain-3d0e646ce65fe10c"
    # the engine review: data.strong_mix changes a stage that mixes strong views; ISD's views never read it. The thread
    # count is left out (docstring): the paper profile's stages (4 threads) keep their keys
    assert stage_key(cfg.replace(**{"data.strong_mix": "cutout"}), 0, subset) == stage_key(cfg, 0, subset)
    assert stage_key(cfg.replace(threads=4), 0, subset) == stage_key(cfg, 0, subset)
    mona_stage = cfg.replace(pretrain=[{**cfg.to_dict()["pretrain"][0], "objective": "mona", "objective_params": {}}])
    assert stage_key(mona_stage.replace(**{"data.strong_mix": "cutout"}), 0, subset) != stage_key(mona_stage, 0, subset)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_on_the_multi_tensor_kernels_gives_the_per_tensor_loops_numbers_bit_for_bit(nesterov):
    """make_sgd's foreach=True (every trial's and stage's SGD) against torch's per-tensor SGD: the same parameters and
    momentum buffers over steps where one parameter has no gradient (skipped by both)."""
    from medseg_platform.engine.loop import make_sgd
    from methods.registry import build_model

    states = []
    for multi_tensor in (False, True):
        torch.manual_seed(0)
        model = build_model("unet", num_classes=4, channels=(4, 8, 16, 32, 64))
        params = list(model.parameters())
        optimizer = (make_sgd(params, 0.1, 0.9, 1e-4, nesterov) if multi_tensor else
                     torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov, foreach=False))
        assert optimizer.param_groups[0]["foreach"] is multi_tensor
        generator = torch.Generator().manual_seed(1)
        for step in range(4):
            for index, p in enumerate(params):
                p.grad = None if (index == 3 and step % 2) else torch.randn(p.shape, generator=generator)
            optimizer.step()
        states.append([p.detach().clone() for p in params] + [optimizer.state[p]["momentum_buffer"] for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*states))


def test_a_checkpoint_of_other_data_is_not_resumed(tiny_root, tmp_path):
    """A trial stopped after its checkpoint, its dataset then converted again into the same folder: the rerun resumed on
    the new data and recorded only that (the engine review). It now refuses, naming what changed."""
    from medseg_platform.engine.checkpoint import TRAINED_ON, check_trained_on, load_checkpoint, trained_on
    from medseg_platform.errors import MedsegError

    cfg = small_cfg(tiny_root, objective="supervised")
    interrupted_at_first_validation(cfg, tmp_path / "t")
    state = load_checkpoint(tmp_path / "t" / "checkpoint" / "checkpoint.pt")
    assert state[TRAINED_ON]["labelled_patients"] and state[TRAINED_ON]["data_identity"]
    test_list = tiny_root / "test.list"  # the lists are part of the identity: one case fewer is another dataset
    test_list.write_text("".join(test_list.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(MedsegError, match="its steps trained on another version of its dataset .*resuming would mix two datasets"):
        train_trial(cfg, tmp_path / "t", log=quiet)
    other = {**state[TRAINED_ON], "labelled_patients": ["patient999"]}
    with pytest.raises(MedsegError, match=r"labelled patients patient999 \(now "):
        check_trained_on({TRAINED_ON: other}, trained_on(cfg, state[TRAINED_ON]["labelled_patients"]), Path("c.pt"), Path("t"))
    check_trained_on({}, {"labelled_patients": []}, Path("c.pt"), Path("t"))  # a checkpoint from before: resumed
