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
from typing import Callable, Mapping, Sequence

import torch

from medseg_platform.config import TrialConfig, labelled_subset
from medseg_platform.data.splits import LabelledSubset, epoch_steps
from medseg_platform.engine.checkpoint import (TRAINED_ON, check_trained_on, load_checkpoint, remove_rank_state,
                                               restore_training_state, save_checkpoint, save_rank_state,
                                               trained_on, training_state)
from medseg_platform.engine.ddp import DistContext, agree, broadcast_state, meet
from medseg_platform.engine.loop import TrainLoop, build_trial_model, data_generator, logs_after, make_sgd
from medseg_platform.engine.reports import Reporter, progress_fields
from medseg_platform.engine.training_data import TrainingData
from medseg_platform.errors import ConfigError
from medseg_platform.io import open_lock_file, write_json_atomic
from medseg_platform.recipes import LABELLED_SET_EPOCH, with_epoch_length
from medseg_platform.results import (AMP_STAGE_REVISION, CHECKPOINT_FILE, STAGE_DATA_FILE, STAGE_FINAL_FILE, dataset_identity_record,
                                     stage_folder)
from medseg_platform.seeding import GLOBAL_RNG, seed_everything, stream_seed
from methods.registry import OBJECTIVES, build_objective

#: Part of every stage key: bump it when a change to the engine or the pretraining objectives changes what a stage
#: trains, so that stages cached before it are not reused. 2: the released learning-rate step index
#: (``StageConfig.lr_step``) and the released ISD views (one jitter and one blur decision per batch, the blur on 8-bit
#: grey levels: ``isd_pretrain``'s ``view_coins``). 3: that blur is Pillow's, as released (it was an exact Gaussian). 4
#: (2026-12-07): a stage's random streams are its own (``medseg_platform.seeding.stream_seed``; stage i ran seed + i),
#: and the key has the labelled subset only as its patients and slices.
STAGE_CACHE_VERSION = 4


def stage_data(data: Mapping, chain: Sequence[str]) -> dict:
    """The fields of ``data`` (a ``TrialConfig.data`` as a dict) that the last stage of ``chain`` (its objectives' names,
    the first stage first) depends on: all but the fine-tuning batches, and ``strong_mix`` only where a stage of the
    chain mixes strong views (``mixes_strong_views``). :func:`stage_key` and the ETA's stage identity
    (``medseg_platform.step_costs.trial_plan``) read it, so that the two agree on which trials share a stage."""
    dropped = {"labelled_batch", "unlabelled_batch"}
    if not any(getattr(OBJECTIVES.get(objective), "mixes_strong_views", False) for objective in chain):
        dropped.add("strong_mix")
    return {name: value for name, value in data.items() if name not in dropped}


def stage_key(cfg: TrialConfig, index: int, subset: LabelledSubset) -> str:
    """Cache key of pretraining stage ``index``: the chain up to it, model, data (the labelled subset as its patients and
    slice count, not as ``data.labelled`` and ``data.labelled_seed`` were written), seed, workers and
    mixed precision (``optim.amp``, which the stage trains under; named only when it is not "off", so full-precision
    stages keep the keys they had before it was part of the key; with it
    :data:`~medseg_platform.results.AMP_STAGE_REVISION`). ``data.strong_mix`` only where a stage of the chain mixes
    strong views (``mixes_strong_views``: a MONA/ARCO/ACTION stage; ISD's views never read it): it changed such a
    stage's weights under one key (the engine review), and the recipes' ISD stages keep their keys. Not the thread
    count: a stage trained with other ``threads`` (the paper profile's 4) is read from the cache by a trial of another
    count, and differs from what that count would train by float rounding only (1e-4 after 6 steps on the CPU: ISD
    flushes denormals on one thread only, and reductions split differently), which keeps the paper profile's costly
    stages shared. Not the convolution kernels either: every stage runs oneDNN's (docs/methods.md, 'CPU convolution
    kernels')."""
    data = stage_data(dataclasses.asdict(cfg.data), [stage.objective for stage in cfg.pretrain[: index + 1]])
    for written_as in ("labelled", "labelled_seed"):  # the subset enters as its patients and slices, however written:
        data.pop(written_as, None)  # "1" and "25%" of one patient trained the same stage twice (the cache review)
    payload = {"version": STAGE_CACHE_VERSION, "stages": cfg.to_dict()["pretrain"][: index + 1], "model": dataclasses.asdict(cfg.model),
               "data": data, "labelled_patients": list(subset.patients), "labelled_slices": len(subset.labelled_slices), "seed": cfg.seed,
               "workers": cfg.workers,
               **({"amp": cfg.optim.amp, "amp_revision": AMP_STAGE_REVISION} if cfg.optim.amp != "off" else {})}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"stage{index}-{cfg.pretrain[index].objective}-{digest}"


def chain_keys(cfg: TrialConfig, train_slices: dict | None = None) -> list[str]:
    """The cache keys of ``cfg``'s pretraining stages (:func:`stage_key`), its labelled subset read from its dataset's
    list without loading the data (``train_slices``: a cache of each root's list, shared by the calls that pass it)."""
    subset = labelled_subset(cfg, train_slices) if cfg.pretrain else None
    return [stage_key(cfg, i, subset) for i in range(len(cfg.pretrain))]


#: Seconds between two tries of a stage's lock while another trial holds it: a data-parallel trial's ranks meet in one
#: short collective per try (:func:`_exclusive`).
LOCK_POLL_S = 2.0


@contextlib.contextmanager
def _exclusive(path: Path, dist: DistContext | None, device: torch.device, on_wait: Callable[[], None] | None = None,
               log: Callable[[str], None] | None = None, poll_s: float = LOCK_POLL_S):
    """An advisory file lock so that concurrent trials on one machine (or on a shared filesystem) train a shared stage
    once; ``on_wait()`` is called when another process holds it, before waiting for it.

    Rank 0 of a data-parallel trial takes the lock and tries again every ``poll_s`` seconds; each try ends in one
    broadcast of whether it holds the lock (:func:`~medseg_platform.engine.ddp.agree`), so that the other ranks wait
    in short collectives. They used to wait in one broadcast for as long as another trial trained the stage, and Ray
    Train's collective timeout (30 minutes) failed them. Where the filesystem has no ``flock`` (``ENOLCK`` on NFS
    without a lock daemon), the stage runs unlocked, as a study folder does (:func:`medseg_platform.io.folder_lock`):
    two trials may then train it at the same time, which wastes work but loses nothing (``final.pt`` is written
    atomically)."""
    import fcntl
    import time

    handle = None
    if dist is None or dist.is_main:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a traceback, retried by Ray as a crashed worker (the cache review)
            raise ConfigError(f"{path.parent}: cannot create this pretraining stage's folder ({exc.strerror or exc}); "
                              f"check that {path.parent.parent} is a folder this user can write in") from None
        handle = open_lock_file(path)
    try:
        held, told = handle is None, False  # ranks > 0 hold nothing: rank 0's answer decides
        while True:
            if handle is not None and not held:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                except BlockingIOError:
                    if not told and on_wait is not None:
                        on_wait()
                    told = True
                except OSError as exc:
                    if log is not None:
                        log(f"{path}: no file locks on this filesystem ({exc.strerror or exc}); this stage runs unlocked, so "
                            "another trial may train it at the same time")
                    handle.close()
                    handle, held = None, True
            if agree(held, dist, device):
                break
            time.sleep(poll_s)
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def run_pretraining(cfg: TrialConfig, data: TrainingData, cache_dir: Path, device: torch.device, dist: DistContext | None,
                    log: Callable[[str], None], report: Reporter | None = None, stages: list | None = None,
                    on_stage: Callable[[list], None] | None = None) -> dict | None:
    """Run (or load from the cache) every pretraining stage; returns the last stage's final state or None.

    ``report`` (optional) receives a progress-only report (:func:`~medseg_platform.engine.reports.progress_fields`)
    for each cached stage and at every curve row of a trained stage, on every rank. ``stages`` (optional) gets one
    ``{"stage", "objective", "key", "cached"}`` per stage once the stage is done: whether this call read it from the
    cache (trained by another trial, an earlier run, or an earlier attempt of this trial) or trained it; ``on_stage``
    (optional) is then called with the list so far (the trial records it in ``attempts.json``, so that a retry after a
    worker died in a later stage knows which stages it trained). ``result.json``'s ``pretrain_stages`` merges the
    trial's attempts (:func:`medseg_platform.results.stages_over_attempts`) and the report counts them.
    """
    stages = [] if stages is None else stages
    previous: dict | None = None
    for index, stage in enumerate(cfg.pretrain):
        folder = stage_folder(cache_dir, stage_key(cfg, index, data.subset))
        final_path = folder / STAGE_FINAL_FILE
        def waiting(index=index, stage=stage, folder=folder) -> None:
            log(f"pretraining stage {index} ({stage.objective}): waiting for another trial that holds {folder / '.lock'} "
                "(it trains this stage; this trial then reads it from the cache)")

        with _exclusive(folder / ".lock", dist, device, on_wait=waiting, log=log):
            cached = agree(final_path.is_file(), dist, device)
            if cached:
                log(f"pretraining stage {index} ({stage.objective}): cached at {folder}")
                remove_rank_state(folder, dist)  # left by a run stopped after the final file, before its ranks removed them
                previous = load_checkpoint(final_path)
                if report is not None:
                    report(_stage_progress(cfg, index, stage.max_steps, math.nan, math.nan, cached=True), None)
            else:
                previous = _train_stage(cfg, index, data, folder, previous, device, dist, log, report)
        stages.append({"stage": index, "objective": stage.objective, "key": folder.name, "cached": bool(cached)})
        if on_stage is not None:
            on_stage(stages)
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
    phase = index + 1  # stage i's own random streams (seeding.stream_seed), not another seed's
    seed_everything(stream_seed(cfg.seed, phase, GLOBAL_RNG))
    model = build_trial_model(cfg, device)
    before = cfg.pretrain[index - 1] if index > 0 else None
    same_objective = before is not None and before.objective == stage.objective
    # the whole objective's state carries over only where the two stages build the same modules: ISD's own hand-off
    # (its networks, as released), or the same parameters. Another objective, or the same one with other parameters
    # (a head L_anco adds, a bank of another capacity, an NN pool of another size), starts from the previous stage's
    # student weights alone: a strict load of the objective's state failed there after the previous stage had trained
    # (the ACTION review), and loading what fitted left counters and pointers over fresh rows (the diff reviews)
    whole = same_objective and (hasattr(OBJECTIVES[stage.objective], "load_student_and_teacher")
                                or dict(before.objective_params) == dict(stage.objective_params))
    if previous is not None and not whole:
        model.load_state_dict(previous["student"])
        if same_objective:
            log(f"pretraining stage {index}: stage {index - 1} trained {stage.objective} with other parameters; its "
                "student's weights carry over, the objective's other state (teacher, heads, banks, pools) starts fresh")
    params = dict(stage.objective_params)
    if params.get("steps_per_epoch") == LABELLED_SET_EPOCH:  # "the stage's own epoch", as fine-tuning resolves its own
        params, _ = with_epoch_length(params, epoch_steps(data.subset, stage.unlabelled_batch * cfg.workers))
    objective = build_objective(stage.objective, model, params).to(device)
    if previous is not None and whole:
        hand_off = getattr(objective, "load_student_and_teacher", None)  # as released: only the two networks carry over
        hand_off(previous["objective"]) if hand_off is not None else objective.load_state_dict(previous["objective"])
    params = list(objective.trainable_parameters())
    optimizer = make_sgd(params, stage.lr, stage.momentum, stage.weight_decay, stage.nesterov)
    generator = data_generator(cfg.seed, dist, phase)
    loop = TrainLoop(cfg, objective, optimizer, data, generator, device, dist, stage.max_steps, stage.labelled_batch,
                     stage.unlabelled_batch, stage.lr, stage.poly_power, f"pretrain[{index}]", lr_step=stage.lr_step)
    row_every = (cfg.eval.log_every, stage.checkpoint_every)
    objective.logged_steps = lambda step, max_steps: logs_after(step, max_steps, *row_every)
    ckpt_path = folder / CHECKPOINT_FILE
    start, curves = 0, []
    data_record = trained_on(cfg, data.subset.patients)  # in every checkpoint of the stage; a resume checks it
    if agree(ckpt_path.is_file(), dist, device):
        state = load_checkpoint(ckpt_path)
        check_trained_on(state, data_record, ckpt_path, folder)
        start = restore_training_state(state, objective, optimizer, generator, cfg.seed, dist, scaler=loop.scaler, phase=phase,
                                       rank_folder=folder)
        curves = list(state["curves"])
        log(f"pretraining stage {index}: resumed at step {start}")
    else:  # an earlier run's, whose checkpoint was removed to start over: never a part of this run's checkpoints
        remove_rank_state(folder, dist)
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
        if (step + 1) % stage.checkpoint_every == 0 and not done:
            save_rank_state(folder, dist, step + 1, objective, generator)  # the other ranks' parts of rank 0's checkpoint,
            meet(dist, device)  # on disk before the checkpoint names them
            if main:
                save_checkpoint(ckpt_path, training_state(step + 1, objective, optimizer, generator, scaler=loop.scaler,
                                                          curves=curves, **{TRAINED_ON: data_record}))
    if dist is not None:
        broadcast_state(objective)
    final = {"objective": objective.state_dict(), "student": objective.eval_model().state_dict(), "curves": curves,
             "train_s": loop.train_s}
    if main:
        identity = dataset_identity_record(cfg.to_dict())  # a study refuses the stage once the dataset changes
        write_json_atomic(folder / STAGE_DATA_FILE, {"root": str(Path(cfg.data.root).expanduser().resolve()), **identity})
        save_checkpoint(folder / STAGE_FINAL_FILE, final)
        ckpt_path.unlink(missing_ok=True)
    meet(dist, device)  # after rank 0's final file (until then a stop resumes from the checkpoint and these)
    remove_rank_state(folder, dist)
    log(f"pretraining stage {index} done: loss {curves[-1]['loss']:.4f}")
    return final
