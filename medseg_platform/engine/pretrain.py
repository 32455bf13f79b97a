"""Pretraining stages before fine-tuning (``TrialConfig.pretrain``, e.g. ACTION's two ISD stages), cached.

The stages run in order, each cached by :func:`stage_key` so the trials of a sweep that share a pretraining reuse
it; a stage's folder ``<cache>/<stage_key>/`` holds ``checkpoint.pt`` while training (a crashed chain resumes
inside the stage it reached) and ``final.pt`` ({"objective", "student", "curves", "train_s"}) when done. A stage
runs without validation, with its own batch sizes and SGD optimiser (``StageConfig``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import torch

from medseg_platform.config import MAX_SEED, TrialConfig
from medseg_platform.data.splits import LabelledSubset
from medseg_platform.engine.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from medseg_platform.engine.ddp import DistContext, agree, broadcast_state
from medseg_platform.engine.loop import TrainLoop, build_trial_model, data_generator, logs_after
from medseg_platform.engine.reports import Reporter, progress_fields
from medseg_platform.engine.training_data import TrainingData
from medseg_platform.io import write_json_atomic
from medseg_platform.results import CHECKPOINT_FILE, STAGE_DATA_FILE, STAGE_FINAL_FILE, dataset_identity_record, stage_folder
from medseg_platform.seeding import seed_everything
from methods.registry import build_objective

#: Part of every stage key: bump it when a change to the engine or the pretraining objectives changes what a stage
#: trains, so that stages cached before it are not reused. 2: the released learning-rate step index
#: (``StageConfig.lr_step``) and the released ISD views (one jitter and one blur decision per batch, the blur on 8-bit
#: grey levels: ``isd_pretrain``'s ``view_coins``).
STAGE_CACHE_VERSION = 2


def stage_key(cfg: TrialConfig, index: int, subset: LabelledSubset) -> str:
    """Cache key of pretraining stage ``index``: the chain up to it, model, data, labelled patients, seed, workers and
    mixed precision (``optim.amp``, which the stage trains under; named only when it is not "off", so full-precision
    stages keep the keys they had before it was part of the key). Not the convolution kernels: every stage runs
    oneDNN's (docs/methods.md, 'CPU convolution kernels')."""
    data = dataclasses.asdict(cfg.data)
    for fine_tune_only in ("labelled_batch", "unlabelled_batch", "strong_mix"):
        data.pop(fine_tune_only)
    payload = {"version": STAGE_CACHE_VERSION, "stages": cfg.to_dict()["pretrain"][: index + 1], "model": dataclasses.asdict(cfg.model),
               "data": data, "labelled_patients": list(subset.patients), "labelled_slices": len(subset.labelled_slices), "seed": cfg.seed,
               "workers": cfg.workers, **({"amp": cfg.optim.amp} if cfg.optim.amp != "off" else {})}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"stage{index}-{cfg.pretrain[index].objective}-{digest}"


@contextlib.contextmanager
def _exclusive(path: Path, enabled: bool, on_wait: Callable[[], None] | None = None):
    """An advisory file lock so concurrent trials on one machine train a shared stage once; ``on_wait()`` is called
    when another process holds it (before waiting for it)."""
    if not enabled:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_pretraining(cfg: TrialConfig, data: TrainingData, cache_dir: Path, device: torch.device, dist: DistContext | None,
                    log: Callable[[str], None], report: Reporter | None = None) -> dict | None:
    """Run (or load from the cache) every pretraining stage; returns the last stage's final state or None.

    ``report`` (optional) receives a progress-only report (:func:`~medseg_platform.engine.reports.progress_fields`)
    for each cached stage and at every curve row of a trained stage, on every rank.
    """
    previous: dict | None = None
    for index, stage in enumerate(cfg.pretrain):
        folder = stage_folder(cache_dir, stage_key(cfg, index, data.subset))
        final_path = folder / STAGE_FINAL_FILE
        def waiting(index=index, stage=stage, folder=folder) -> None:
            log(f"pretraining stage {index} ({stage.objective}): waiting for another trial that holds {folder / '.lock'} "
                "(it trains this stage; this trial then reads it from the cache)")

        with _exclusive(folder / ".lock", enabled=dist is None or dist.is_main, on_wait=waiting):  # other ranks wait in agree()
            if agree(final_path.is_file(), dist, device):
                log(f"pretraining stage {index} ({stage.objective}): cached at {folder}")
                previous = load_checkpoint(final_path)
                if report is not None:
                    report(_stage_progress(cfg, index, stage.max_steps, math.nan, math.nan, cached=True), None)
                continue
            previous = _train_stage(cfg, index, data, folder, previous, device, dist, log, report)
    return previous


def _stage_progress(cfg: TrialConfig, index: int, step: int, loss: float, steps_per_s: float, cached: bool = False) -> dict:
    """A progress-only report of pretraining stage ``index`` (no validation metric yet: NaN)."""
    stage = cfg.pretrain[index]
    return {"step": 0, "val_dice": math.nan, "best_val_dice": math.nan, "loss": loss, "done": False,
            **progress_fields(stage.objective, "pretraining", index + 1, len(cfg.pretrain), step, stage.max_steps, steps_per_s, 0, cached)}


def _train_stage(cfg: TrialConfig, index: int, data: TrainingData, folder: Path, previous: dict | None,
                 device: torch.device, dist: DistContext | None, log: Callable[[str], None], report: Reporter | None = None) -> dict:
    stage = cfg.pretrain[index]
    main = dist is None or dist.is_main
    seed_everything((cfg.seed + index) % (MAX_SEED + 1))  # stage i's seed; wraps at 2**32 as the generators do
    model = build_trial_model(cfg, device)
    same_objective = index > 0 and cfg.pretrain[index - 1].objective == stage.objective
    if previous is not None and not same_objective:
        model.load_state_dict(previous["student"])
    objective = build_objective(stage.objective, model, dict(stage.objective_params)).to(device)
    if previous is not None and same_objective:
        hand_off = getattr(objective, "load_student_and_teacher", None)  # as released: only the two networks carry over
        hand_off(previous["objective"]) if hand_off is not None else objective.load_state_dict(previous["objective"])
    params = list(objective.trainable_parameters())
    optimizer = torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay,
                                nesterov=stage.nesterov and stage.momentum > 0)
    stage_seed = cfg.seed + 7919 * (index + 1)
    generator = data_generator(stage_seed, dist)
    loop = TrainLoop(cfg, objective, optimizer, data, generator, device, dist, stage.max_steps, stage.labelled_batch,
                     stage.unlabelled_batch, stage.lr, stage.poly_power, f"pretrain[{index}]", lr_step=stage.lr_step)
    row_every = (cfg.eval.log_every, stage.checkpoint_every)
    objective.logged_steps = lambda step, max_steps: logs_after(step, max_steps, *row_every)
    ckpt_path = folder / CHECKPOINT_FILE
    start, curves = 0, []
    if agree(ckpt_path.is_file(), dist, device):
        state = load_checkpoint(ckpt_path)
        start = restore_training_state(state, objective, optimizer, generator, stage_seed, dist, scaler=loop.scaler)
        curves = list(state["curves"])
        log(f"pretraining stage {index}: resumed at step {start}")
    if dist is not None:
        broadcast_state(objective)
    log(f"pretraining stage {index} ({stage.objective}): {stage.max_steps} steps -> {folder}")
    for step in range(start, stage.max_steps):
        loop.step(step)
        done = step + 1 == stage.max_steps
        if logs_after(step, stage.max_steps, *row_every):
            curves.append(loop.curve_row(step + 1))
            if report is not None:
                report(_stage_progress(cfg, index, step + 1, curves[-1]["loss"], curves[-1]["steps_per_s"]), None)
        if main and ((step + 1) % stage.checkpoint_every == 0 and not done):
            save_checkpoint(ckpt_path, training_state(step + 1, objective, optimizer, generator, scaler=loop.scaler, curves=curves))
    if dist is not None:
        broadcast_state(objective)
    final = {"objective": objective.state_dict(), "student": objective.eval_model().state_dict(), "curves": curves,
             "train_s": loop.train_s}
    if main:
        identity = dataset_identity_record(cfg.to_dict())  # a study refuses the stage once the dataset changes
        write_json_atomic(folder / STAGE_DATA_FILE, {"root": str(Path(cfg.data.root).expanduser().resolve()), **identity})
        save_checkpoint(folder / STAGE_FINAL_FILE, final)
        ckpt_path.unlink(missing_ok=True)
    log(f"pretraining stage {index} done: loss {curves[-1]['loss']:.4f}")
    return final
