"""One training trial in one process: [pretraining stages] -> fine-tuning -> validation -> test.

:func:`train_trial` takes a :class:`TrialConfig`, a trial folder and an optional ``report(metrics, checkpoint_dir)``
callback. Every ``val_every`` steps (and after the last) the student is evaluated on the **val** split (mean
foreground Dice) and a state is selected (``eval.selection``): the best on val (the default), or the final one as
the released scripts report it (``docs/evaluation.md``, 'Model selection'). Model selection never looks at the test
split (the released scripts swept checkpoints on the test set). At the end the selected state is
evaluated on the test split, per case and per class. A checkpoint is written at each validation; a crashed trial
resumes from it.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

from medseg_platform.config import TrialConfig
from medseg_platform.data.splits import LabelledSubset, epoch_steps
from medseg_platform.engine.conv_kernels import set_conv_kernels, trial_conv_kernels, using_conv_kernels
from medseg_platform.engine.checkpoint import (TRAINED_ON, check_trained_on, load_checkpoint, remove_rank_state,
                                               restore_training_state, save_checkpoint, save_rank_state, trained_on,
                                               training_state)
from medseg_platform.engine.ddp import DistContext, agree, broadcast_state, meet, replica_max_difference
from medseg_platform.engine.evaluate import QualitativeSlices, evaluate_volumes, validation_dice
from medseg_platform.engine.loop import TrainLoop, build_trial_model, make_optimizer, autocast_dtype, data_generator, logs_after, pick_device
from medseg_platform.engine.pretrain import run_pretraining
from medseg_platform.engine.reports import Reporter, progress_fields
from medseg_platform.engine.training_data import load_training_data
from medseg_platform.environment import code_version, trial_environment
from medseg_platform.errors import MedsegError
from medseg_platform.recipes import LABELLED_SET_EPOCH, with_epoch_length
from medseg_platform.results import (OWN_PRETRAIN_DIR, QUALITATIVE_FILE, checkpoint_path, record_attempt_stages,
                                     stages_over_attempts)
from medseg_platform.seeding import seed_everything
from methods.heap import keep_freed_blocks
from methods.mona import UnreachableNegativesWarning
from methods.registry import build_objective


@dataclass
class TrialOutcome:
    """What a finished trial produced (the results writer turns it into files).

    ``best_step`` / ``best_val_dice``: the selected state's step and val Dice (``eval.selection``). ``timing``: seconds
    per phase (``setup_s``, ``pretrain_s``, ``train_s``, ``val_s``, ``checkpoint_s``, ``test_s``, ``total_s``) summed
    over the attempts the result rests on: a resumed trial adds the time its checkpoint recorded for the attempts
    before, up to that checkpoint (not its own write, nor their steps after it, redone; a pretraining stage resumed
    mid-way counts its last attempt). It recorded the last attempt alone, half the steps of a trial resumed half-way (the
    timing review).
    """

    labelled: LabelledSubset
    best_step: int
    best_val_dice: float
    test_rows: list[dict]
    curves: list[dict]
    val_curve: list[dict]
    timing: dict[str, float]
    resumed_from_step: int = 0
    extra: dict = field(default_factory=dict)


def build_trial_objective(name: str, model: torch.nn.Module, params: Mapping):
    """:func:`methods.registry.build_objective` without the :class:`~methods.mona.UnreachableNegativesWarning` that
    the study's preflight printed once for every such row (``medseg_platform.study.runner.warn_unreachable_negatives``;
    ``medseg train --in-process`` printed it twice, the second time pointing into the platform)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreachableNegativesWarning)
        return build_objective(name, model, params)


def train_trial(cfg: TrialConfig, trial_dir: Path, report: Reporter | None = None, log: Callable[[str], None] | None = None,
                dist: DistContext | None = None, device: torch.device | None = None, pretrain_cache: Path | None = None) -> TrialOutcome:
    """Pretrain (cached), fine-tune and evaluate one configuration; resumes from ``trial_dir/checkpoint/checkpoint.pt``.

    ``pretrain_cache``: where finished pretraining stages are kept and shared between trials (default
    ``trial_dir/pretrain``). With ``dist`` this is one rank of a data-parallel trial (see
    :class:`~medseg_platform.engine.ddp.DistContext`); only rank 0's outcome carries validation and test results,
    and every rank's ``extra`` has ``replica_param_max_diff``, the largest parameter difference between the ranks
    after the last step, measured before the final broadcast of rank 0's state.
    An objective parameter ``steps_per_epoch`` of 0 (MONA/ARCO's α_t epoch: the trial's own, floor(N_u / B_u) of the
    unlabelled slices its labelled subset leaves) is replaced by the released epoch of the trial's labelled subset (:func:`medseg_platform.data.splits.epoch_steps` with the effective
    unlabelled batch) and recorded in ``extra["steps_per_epoch"]``.
    ``report(metrics, checkpoint_dir)`` gets one report with the checkpoint at each validation and progress-only
    reports (``checkpoint_dir`` None) at the curve rows between and during pretraining
    (:func:`~medseg_platform.engine.reports.progress_fields`).
    On the CPU, fine-tuning, validation and test run the convolution kernels of ``conv_kernels``
    (:func:`~medseg_platform.engine.conv_kernels.resolve_conv_kernels`, recorded in ``extra["conv_kernels"]``) and the
    pretraining stages oneDNN's; the process's previous setting is restored at the end.
    ``extra["environment"]``: the processor, accelerator and versions of the process that finished the trial
    (:func:`~medseg_platform.environment.trial_environment`; a trial resumed elsewhere trained partly on the machine
    before it, which ``attempts.json`` names).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    device = device or pick_device()
    code_version()  # read now, cached for the environment below: the code this process imported, not a later commit's
    kernels = trial_conv_kernels(cfg, device.type)
    with using_conv_kernels("onednn"):  # the stages; _train_trial switches to `kernels` after them
        outcome = _train_trial(cfg, Path(trial_dir), report, log, dist, device, pretrain_cache, kernels)
    outcome.extra["conv_kernels"] = kernels
    outcome.extra["environment"] = trial_environment(device)
    return outcome


def _train_trial(cfg: TrialConfig, trial_dir: Path, report: Reporter | None, log: Callable[[str], None], dist: DistContext | None,
                 device: torch.device, pretrain_cache: Path | None, kernels: str) -> TrialOutcome:
    """The body of :func:`train_trial`, on ``device``: the stages on oneDNN's kernels (set by :func:`train_trial`), then
    fine-tuning, validation and test on ``kernels``."""
    if (dist.world_size if dist else 1) != cfg.workers:
        raise MedsegError(f"workers {cfg.workers}: the trial runs on {dist.world_size if dist else 1} process(es); set workers to match")
    t_start = time.perf_counter()
    timing = {"setup_s": 0.0, "pretrain_s": 0.0, "train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0, "test_s": 0.0}
    torch.set_num_threads(cfg.threads)
    autocast_dtype(cfg.optim.amp, device)  # fp16 without CUDA: a ConfigError before any data is read
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch and batch sizes: let cuDNN pick its fastest kernels
    else:
        keep_freed_blocks()  # every step reuses the last step's freed blocks instead of faulting in new ones
    main = dist is None or dist.is_main
    ckpt_path = checkpoint_path(trial_dir)

    data = load_training_data(cfg, log)
    layout = data.layout
    val_cases = layout.val_cases[: cfg.eval.val_cases] if cfg.eval.val_cases else layout.val_cases
    val_volumes = [layout.read_volume(c) for c in val_cases] if main else []
    if main and cfg.eval.selection == "best_val" and not any(volume.label.any() for volume in val_volumes):
        # every val Dice would be NaN (0 or 1 under the released policy): the first validated state would be tested
        raise MedsegError(f"{layout.root}: no val case the trial validates on has a foreground label, so validation Dice "
                          "cannot select a model; label them (val.list names them), or test the final weights with "
                          "--set eval.selection=final")
    timing["setup_s"] = time.perf_counter() - t_start

    resuming = agree(ckpt_path.is_file(), dist, device)
    pretrained, pretrain_stages = None, []
    if cfg.pretrain and not resuming:  # a resumed fine-tune has the pretrained weights in its checkpoint already
        t0 = time.perf_counter()
        def record(stages: list) -> None:  # after each stage: a retry then knows which stages this attempt trained
            try:
                record_attempt_stages(trial_dir, stages)
            except OSError as exc:  # bookkeeping only: the trial goes on
                log(f"warning: {trial_dir}: the pretraining stages of this attempt could not be recorded ({exc})")

        pretrained = run_pretraining(cfg, data, pretrain_cache or trial_dir / OWN_PRETRAIN_DIR, device, dist, log, report,
                                     stages=pretrain_stages, on_stage=record if main else None)
        timing["pretrain_s"] = time.perf_counter() - t0

    set_conv_kernels(kernels)  # the trial's own training and evaluation (train_trial restores the setting)
    if device.type == "cpu":
        log(f"convolution kernels of fine-tuning: {kernels} (conv_kernels {cfg.conv_kernels!r})")
    seed_everything(cfg.seed)
    model = build_trial_model(cfg, device)
    if pretrained is not None:
        model.load_state_dict(pretrained["student"])  # student and (by copy) teacher start from the pretrained student
    # "the trial's own epoch" (docs/mona.md, 'Entropy masks and the alpha schedule')
    params, epoch_filled = dict(cfg.objective_params), False
    if params.get("steps_per_epoch") == LABELLED_SET_EPOCH:  # only MONA/ARCO rows ask; a supervised row may have no B_u
        params, epoch_filled = with_epoch_length(params, epoch_steps(data.subset, cfg.data.unlabelled_batch * cfg.workers))
    filled = {"steps_per_epoch": params["steps_per_epoch"]} if epoch_filled else {}
    if epoch_filled:
        log(f"alpha_t epoch: {params['steps_per_epoch']} steps (floor(N_u / B_u), at least 1; as released)")
    objective = build_trial_objective(cfg.objective, model, params).to(device)
    optimizer = make_optimizer(cfg, list(objective.trainable_parameters()))
    generator = data_generator(cfg.seed, dist)
    o = cfg.optim
    loop = TrainLoop(cfg, objective, optimizer, data, generator, device, dist, o.max_steps, cfg.data.labelled_batch,
                     cfg.data.unlabelled_batch, o.lr, o.poly_power, "fine-tuning", lr_step=o.lr_step)
    row_every = (cfg.eval.log_every, cfg.eval.val_every)
    objective.logged_steps = lambda step, max_steps: logs_after(step, max_steps, *row_every)

    start_step, best = 0, {"step": -1, "val_dice": -math.inf, "state": None}
    earlier: dict[str, float] = {}

    def over_attempts(now: dict) -> dict:  # this attempt's timing plus that of the attempts its checkpoint continues
        return {key: earlier.get(key, 0.0) + now.get(key, 0.0) for key in dict.fromkeys([*now, *earlier])}

    curves: list[dict] = []
    val_curve: list[dict] = []
    data_record = trained_on(cfg, data.subset.patients)  # in every checkpoint; a resume checks it
    if resuming:
        state = load_checkpoint(ckpt_path)
        check_trained_on(state, data_record, ckpt_path, trial_dir)
        start_step = restore_training_state(state, objective, optimizer, generator, cfg.seed, dist, scaler=loop.scaler,
                                            rank_folder=trial_dir, max_steps=o.max_steps)
        best = {"step": int(state["best_step"]), "val_dice": float(state["best_val_dice"]), "state": state["best_state"]}
        curves, val_curve = list(state["curves"]), list(state["val_curve"])
        earlier = {str(k): float(v) for k, v in (state.get("timing") or {}).items()}  # the attempts before, to its step
        log(f"resumed from step {start_step} ({ckpt_path})")
    else:  # an earlier run's, whose checkpoint was removed to start over: never a part of this run's checkpoints
        remove_rank_state(trial_dir, dist)
    if dist is not None:
        broadcast_state(objective)

    def progress(step: int) -> dict:  # where fine-tuning is, for every report (see progress_fields)
        return {"step": step, "loss": curves[-1]["loss"], "done": False,
                **progress_fields(cfg.objective, "fine-tuning", 0, len(cfg.pretrain), step, o.max_steps, curves[-1]["steps_per_s"], len(val_curve))}

    if resuming and report is not None:
        replay_validations(val_curve, curves, cfg, report)

    replica_diff = None
    for step in range(start_step, o.max_steps):
        loop.step(step)
        last = step + 1 == o.max_steps
        validate = (step + 1) % cfg.eval.val_every == 0 or last
        if logs_after(step, o.max_steps, *row_every):
            curves.append(loop.curve_row(step + 1))
            if report is not None and not validate:  # progress only: the last known val Dice, no checkpoint
                known = best["step"] >= 0
                report({**progress(step + 1), "val_dice": val_curve[-1]["val_dice"] if known else math.nan,
                        "best_val_dice": best["val_dice"] if known else math.nan}, None)
        if not validate:
            continue
        if dist is not None:
            if last:  # the evidence that averaged gradients kept the replicas equal: before the broadcast equalises them
                replica_diff = replica_max_difference(objective)
            broadcast_state(objective)  # BN running statistics: rank 0's are the model
        if not main:
            save_rank_state(trial_dir, dist, step + 1, objective, generator)  # its part of rank 0's checkpoint
            meet(dist, device)  # on disk before rank 0's checkpoint of this step names it
            if report is not None:
                report({**progress(step + 1), "val_dice": float("nan"), "best_val_dice": float("nan")}, None)
            continue
        t0 = time.perf_counter()
        val_dice = validation_dice(objective.eval_model(), val_volumes, cfg, device)
        timing["val_s"] += time.perf_counter() - t0
        val_curve.append({"step": step + 1, "val_dice": val_dice})
        if selects(cfg.eval.selection, val_dice, best):
            best = {"step": step + 1, "val_dice": val_dice, "state": copy.deepcopy(objective.eval_model().state_dict())}
        t0 = time.perf_counter()
        meet(dist, device)  # every other rank's own state of this step is on disk (save_rank_state)
        so_far = over_attempts({**timing, "train_s": loop.train_s, "total_s": time.perf_counter() - t_start})
        save_checkpoint(ckpt_path, training_state(step + 1, objective, optimizer, generator, scaler=loop.scaler, best_step=best["step"],
                                                  best_val_dice=best["val_dice"], best_state=best["state"],
                                                  curves=curves, val_curve=val_curve, timing=so_far, **{TRAINED_ON: data_record}))
        timing["checkpoint_s"] += time.perf_counter() - t0
        log(f"step {step + 1}/{o.max_steps}: loss {curves[-1]['loss']:.4f}, val Dice {val_dice:.4f} (selected {best['val_dice']:.4f} @ {best['step']})")
        if report is not None:
            report({**progress(step + 1), "val_dice": val_dice, "best_val_dice": best["val_dice"]}, ckpt_path.parent)
    timing["train_s"] = loop.train_s
    meet(dist, device)  # after rank 0's last checkpoint (until then a stop resumes from the one before and these)
    remove_rank_state(trial_dir, dist)

    extra = dict(filled)
    stages = stages_over_attempts(trial_dir, pretrain_stages) if main else pretrain_stages  # over the retries
    if stages:
        extra["pretrain_stages"] = stages
    if dist is not None:
        if replica_diff is None:  # resumed after the last step: the replicas hold rank 0's broadcast checkpoint state
            replica_diff = replica_max_difference(objective)
        extra.update(world_size=dist.world_size, replica_param_max_diff=replica_diff)
        if loop.first_grad_norms is not None:
            extra["first_step_grad_norm_per_rank"] = loop.first_grad_norms
    if not main:
        return TrialOutcome(data.subset, best["step"], best["val_dice"], [], curves, val_curve, over_attempts(timing), start_step,
                            extra)
    t0 = time.perf_counter()
    model_for_test = objective.eval_model()
    if best["state"] is not None:
        model_for_test.load_state_dict(best["state"])
    qualitative = QualitativeSlices(layout.test_cases)
    test_rows = evaluate_volumes(model_for_test, [layout.read_volume(c) for c in layout.test_cases], cfg, device,
                                 on_prediction=qualitative.keep)
    qualitative.save(trial_dir / QUALITATIVE_FILE)
    timing["test_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start
    return TrialOutcome(data.subset, best["step"], best["val_dice"], test_rows, curves, val_curve, over_attempts(timing),
                        start_step, extra)


def recorded_validations(val_curve: Iterable[Mapping], selection: str) -> Iterator[tuple[int, int, float, float]]:
    """``(evaluations, step, val Dice, selected val Dice so far)`` of each recorded validation (``val_curve.csv`` rows or
    a checkpoint's), in order, the selection by the engine's own rule (:func:`selects`, ``eval.selection``)."""
    selected = {"state": None, "val_dice": math.nan}
    for count, row in enumerate(val_curve, start=1):
        value = float(row["val_dice"])
        if selects(selection, value, selected):
            selected = {"state": count, "val_dice": value}
        yield count, int(row["step"]), value, selected["val_dice"]


def replay_validations(val_curve: list[dict], curves: list[dict], cfg: TrialConfig, report: Reporter) -> None:
    """Report a resumed trial's recorded validations again, before it trains on: each with its val Dice, the selected
    one so far and ``evaluations`` 1, 2, ... (no checkpoint), as the uninterrupted trial reported them.

    A study's driver stopped between a trial's checkpoint at a validation and its own handling of that report (one
    Ctrl-C) never passed the report to ASHA or Optuna; without the replay the resumed trial's first report was its
    next validation, which ASHA recorded at the earlier rung with a later value (the HPO probe's sample 4: step 50's
    0.1158 where the uninterrupted search recorded step 25's 0.1013). A scheduler that did see them skips them: Ray's
    ASHA records a trial once per rung (:mod:`medseg_platform.study.asha`)."""
    for count, step, value, selected in recorded_validations(val_curve, cfg.eval.selection):
        logged = [r for r in curves if r["step"] <= step] or curves[:1]
        report({"step": step, "loss": logged[-1]["loss"] if logged else math.nan, "done": False, "replayed": True,
                **progress_fields(cfg.objective, "fine-tuning", 0, len(cfg.pretrain), step, cfg.optim.max_steps,
                                  logged[-1]["steps_per_s"] if logged else math.nan, count),
                "val_dice": value, "best_val_dice": selected}, None)


def selects(selection: str, val_dice: float, selected: dict) -> bool:
    """Whether the state just validated with ``val_dice`` replaces the ``selected`` one (``eval.selection``).

    ``"best_val"``: when its val Dice is higher (a NaN Dice, nothing defined, never wins against a number, but is
    kept when nothing is selected yet); ``"final"``: always, so the last step's state is the one tested.
    """
    if selection == "final" or selected["state"] is None:
        return True
    return math.isfinite(val_dice) and (not math.isfinite(selected["val_dice"]) or val_dice > selected["val_dice"])
