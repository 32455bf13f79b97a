"""Training-state checkpoints: what a resumed stage or trial needs to continue exactly, and the selected weights.

A checkpoint (objective, optimiser, every RNG state, the fp16 loss scaler's state, and for fine-tuning the selected
state and the curves) is written atomically (:func:`medseg_platform.io.atomic_path`) at each validation of a
fine-tuning run (``<trial>/checkpoint/checkpoint.pt``) and every ``checkpoint_every`` steps of a pretraining stage
(``<stage folder>/checkpoint.pt``); :func:`medseg_platform.engine.train_trial` resumes from it. Checkpoints are read
with ``weights_only=True``.

In a multi-worker run rank 0 writes the checkpoint and every other rank writes its own part at the same steps
(:func:`save_rank_state`: ``<trial>/rank<r>_state-<step>.pt``, ``<stage folder>/rank<r>_state-<step>.pt``): its
objective's state (memory banks, queues, NN pools, the teacher's and BatchNorm's statistics, which each rank keeps)
and its random streams, so that each rank resumes from its own state. A rank removes its files when its stage or
fine-tuning ends.
"""

from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path

import torch

from medseg_platform.config import TrialConfig
from medseg_platform.engine.ddp import DistContext
from medseg_platform.engine.loop import build_trial_model
from medseg_platform.errors import MedsegError
from medseg_platform.io import atomic_path
from medseg_platform.results import checkpoint_path
from medseg_platform.seeding import DATA_RNG, FINE_TUNING, stream_seed


def _cuda_rng_states() -> list[torch.Tensor]:
    """The RNG state of every CUDA device (samplers, dropout and warps draw there); [] where this process has not
    started CUDA: a CPU trial on a GPU machine (Ray shows it the GPUs) would start a CUDA context on GPU 0 just to read
    them (``get_rng_state_all`` initialises CUDA), outside Ray's accounting."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []


def _set_cuda_rng_states(states: list[torch.Tensor] | None) -> None:
    """Restore :func:`_cuda_rng_states` where this process trains on CUDA (its model is there, so CUDA is started).

    Where the process sees another number of devices than the one that saved them (a trial checkpointed under Ray with
    one visible GPU, resumed in-process on a machine with several), the device it trains on gets the saved state of
    the same index, or of the last saved device, and a warning says the draws after the resume may differ; that case
    used to restore nothing without a word (the GPU-path review)."""
    if not (states and torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    if len(states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states)
        return
    import warnings

    current = torch.cuda.current_device()
    saved = min(current, len(states) - 1)
    torch.cuda.set_rng_state(states[saved], current)
    warnings.warn(f"the checkpoint holds the CUDA random states of {len(states)} device(s), this process sees "
                  f"{torch.cuda.device_count()}: only device {current}'s state is restored (from the saved device "
                  f"{saved}), so the random draws after this resume may differ from an uninterrupted run's", stacklevel=2)


def training_state(step: int, objective, optimizer, generator: torch.Generator, scaler=None, **extra) -> dict:
    """Everything a resumed run needs to continue exactly (objective, optimiser, every RNG, the fp16
    ``GradScaler``'s plain-dict state or None) plus ``extra``."""
    return {"step": step, "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": _cuda_rng_states(), "data_rng": generator.get_state(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None, **extra}


#: The ``training_state`` entry that records what a checkpoint's steps trained on (:func:`trained_on`).
TRAINED_ON = "trained_on"


def trained_on(cfg: TrialConfig, patients) -> dict:
    """What a checkpoint's steps trained on: the labelled patients (``LabelledSubset.patients``) and the dataset's
    identity (:func:`medseg_platform.results.dataset_identity_record`; none for a folder that is gone)."""
    from medseg_platform.results import dataset_identity_record

    return {"labelled_patients": [str(p) for p in patients], **dataset_identity_record(cfg.to_dict())}


def check_trained_on(state: dict, now: dict, path: Path, folder: Path) -> None:
    """A one-line :class:`MedsegError` when a checkpoint about to be resumed trained on other data than the run would
    continue on (:func:`trained_on`: the dataset converted again into its folder, another labelled subset): the resumed
    steps would mix two datasets, and the result would record only the second (the engine review). A checkpoint
    written before this was recorded passes."""
    saved = state.get(TRAINED_ON)
    if saved is None or saved == now:
        return
    if saved.get("labelled_patients") != now.get("labelled_patients"):
        what = f"labelled patients {', '.join(saved.get('labelled_patients') or [])} (now {', '.join(now.get('labelled_patients') or [])})"
    else:
        what = "another version of its dataset (its files' checksums, or lists and sizes, differ: converted or generated again)"
    raise MedsegError(f"{path}: its steps trained on {what}; resuming would mix two datasets. Restore the data it trained on, "
                      f"or remove {folder} to train it again from the start")


def rank_state_path(folder: Path, rank: int, step: int) -> Path:
    """Where rank ``rank`` (> 0) of a multi-worker run keeps its part of the checkpoint at ``step`` of the trial or
    stage in ``folder``: not in the trial's ``checkpoint/`` folder, which rank 0 hands to Ray Train (it copies that
    folder while the other ranks may be writing)."""
    return folder / f"rank{rank}_state-{step}.pt"


def _rank_state_files(folder: Path, rank: int) -> dict[int, Path]:
    """Step -> file of every :func:`rank_state_path` of ``rank`` in ``folder``."""
    files = {}
    for path in folder.glob(f"rank{rank}_state-*.pt"):
        step = path.name[len(f"rank{rank}_state-"):-len(".pt")]
        if step.isdigit():
            files[int(step)] = path
    return files


def rank_state(step: int, objective, generator: torch.Generator) -> dict:
    """A rank's own part of a multi-worker checkpoint at ``step``: what differs between the ranks (the objective's
    state: memory banks, queues, NN pools and their generators, the teacher's and BatchNorm's statistics; the torch,
    CUDA and data random streams). The optimiser's state and the parameters are the same on every rank (averaged
    gradients) and are rank 0's checkpoint's."""
    return {"step": step, "objective": objective.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": _cuda_rng_states(), "data_rng": generator.get_state()}


def save_rank_state(folder: Path, dist: DistContext | None, step: int, objective, generator: torch.Generator) -> None:
    """On a rank other than 0 of a multi-worker run, write its :func:`rank_state` at ``step`` to
    :func:`rank_state_path` (atomically); nothing on rank 0 or in a single-process run.

    The ranks write theirs before rank 0 writes its checkpoint of ``step`` (a collective orders them), and in
    fine-tuning while rank 0 still validates, so the file of the checkpoint before stays until this one's successor:
    once this rank has taken a step after ``step`` with rank 0 (each step's gradient all-reduce waits for it), rank
    0's checkpoint of ``step`` is on disk and the earlier files are removed here (a stop during rank 0's validation
    lost the state of the checkpoint it resumed from: the diff review)."""
    if dist is None or dist.is_main:
        return
    save_checkpoint(rank_state_path(folder, dist.rank, step), rank_state(step, objective, generator))
    files = _rank_state_files(folder, dist.rank)
    older = sorted(s for s in files if s < step)
    for earlier in older[:-1]:  # the latest earlier one is the checkpoint on disk until rank 0 writes this step's
        files[earlier].unlink(missing_ok=True)


def remove_rank_state(folder: Path, dist: DistContext | None) -> None:
    """This rank's :func:`save_rank_state` files, removed once its stage or fine-tuning has ended (nothing resumes
    them) and before a run that starts over (an earlier run's are never a part of its checkpoints)."""
    if dist is not None and not dist.is_main:
        for path in _rank_state_files(folder, dist.rank).values():
            path.unlink(missing_ok=True)


def restore_training_state(state: dict, objective, optimizer, generator: torch.Generator, seed: int,
                           dist: DistContext | None, scaler=None, phase: int = FINE_TUNING,
                           rank_folder: Path | None = None, max_steps: int | None = None) -> int:
    """Load a :func:`training_state` (``seed``: the trial's, ``phase``: its stage, as ``loop.data_generator`` takes
    them); returns its step. The state is rank 0's (checkpoints are written there); on another rank of a multi-worker
    run, that rank's own part (:func:`save_rank_state` in ``rank_folder``) replaces the objective's state and the
    random streams when it was written at the same step (the ranks write theirs before rank 0 writes the checkpoint).
    Where none was (removed by hand), the rank resumes with rank 0's memory banks, queues and NN pools and a data
    stream of its own, and a warning on its standard error (the worker's log under Ray) says so (docs/ray.md,
    'Multi-worker trials'); not where the checkpoint is of the last step (``max_steps``: nothing is left to train, and
    the ranks remove their files when their steps end)."""
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(state["torch_rng"])
    _set_cuda_rng_states(state.get("cuda_rng"))
    generator.set_state(state["data_rng"])
    step = int(state["step"])
    if dist is None or dist.is_main:
        return step
    own, found = None, {}
    if rank_folder is not None:
        found = _rank_state_files(rank_folder, dist.rank)
        if step in found:
            own = load_checkpoint(found[step], remedy="delete it: this rank then resumes from rank 0's state")
    if own is not None:
        objective.load_state_dict(own["objective"])
        torch.set_rng_state(own["torch_rng"])
        _set_cuda_rng_states(own.get("cuda_rng"))
        generator.set_state(own["data_rng"])
        return step
    generator.manual_seed(stream_seed(seed, phase, DATA_RNG, dist.rank, step))  # rank 0's data RNG: a stream of its own
    if max_steps is not None and step >= max_steps:
        return step
    steps = f"of step {', '.join(map(str, sorted(found)))} only" if found else "none"
    print(f"[rank {dist.rank}] warning: no state of its own at step {step} ({steps}); it resumes with rank 0's memory "
          "banks, queues and random state, so this run is not the uninterrupted run step for step", file=sys.stderr, flush=True)
    return step


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically. Through a Python file, whose full-disk ``OSError`` (ENOSPC) stays the
    context of torch's error: saved to a path, torch raised a bare RuntimeError ("unexpected pos"), which the study
    retried as a crash instead of naming the full disk (the fault review;
    ``medseg_platform.study.trainable.application_error``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path, remedy: str = "delete it to start this stage or trial over") -> dict:
    """A checkpoint written by :func:`save_checkpoint`; an unreadable one, or one that is not a dict of states, is a
    :class:`MedsegError` naming it and ``remedy`` (deterministic: retrying the trial would fail the same way)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise MedsegError(f"{path}: cannot be opened ({exc.strerror or type(exc).__name__}); check that the file is there "
                          "and readable") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, IndexError, KeyError, TypeError, AttributeError,
            OSError) as exc:
        # (the weights-only unpickler raises IndexError on a truncated legacy file: the security audit; a zip cut
        # shorter than its end-of-directory search window is an OSError "Invalid argument")
        raise MedsegError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          f"{remedy}") from None
    if not isinstance(state, dict):
        raise MedsegError(f"{path}: not a checkpoint of this platform (a {type(state).__name__}, not a dict of states); {remedy}")
    return state


def retrain_remedy(trial_dir: Path) -> str:
    """How to train a finished trial again: a study skips a trial whose ``result.json`` is complete, so rerunning the
    command alone does not."""
    return f"to train it again, delete the folder {trial_dir} and rerun the command that trained it"


def load_selected_model(cfg: TrialConfig, trial_dir: Path, device: torch.device, best_step: int | None = None,
                        best_val_dice: float | None = None) -> torch.nn.Module:
    """The network of a trial trained by :func:`medseg_platform.engine.train_trial` with the weights it selected
    (``eval.selection``: the best on val, or the final ones; the ``best_state`` of ``trial_dir/checkpoint/checkpoint.pt``,
    read with ``weights_only=True``), on ``device``, in eval mode.

    ``best_step``, ``best_val_dice``: the step and val Dice ``result.json`` recorded; a checkpoint that selected another
    step, or the same step at another val Dice (another trial's checkpoint validated as often), is an error: it is not
    the finished trial's. One-line :class:`MedsegError` when the checkpoint or its selected state is missing.
    """
    path = checkpoint_path(trial_dir)
    retrain = retrain_remedy(trial_dir)
    if not path.is_file():
        raise MedsegError(f"{path}: missing, so the trial's selected weights are gone ({retrain})")
    state = load_checkpoint(path, remedy=f"the trial's selected weights are in it: restore it from a copy, or {retrain}")
    if state.get("best_state") is None:
        raise MedsegError(f"{path}: holds no selected weights yet (the trial has not validated; finish it first)")
    if best_step is not None and int(state.get("best_step", -1)) != int(best_step):
        raise MedsegError(f"{path}: selected step {state.get('best_step')} but result.json records step {best_step} "
                          f"(the checkpoint is not this finished trial's; {retrain})")
    if best_val_dice is not None and not _same_number(state.get("best_val_dice"), best_val_dice):
        raise MedsegError(f"{path}: selected val Dice {state.get('best_val_dice')} but result.json records {best_val_dice} "
                          f"(the checkpoint is not this finished trial's; {retrain})")
    if cfg.model.upsample == "bilinear" and _transposed_up_path(state["best_state"]):
        # a trial trained before model.upsample existed (2026-12-06): its config does not name the transposed
        # up-paths its weights have (docs/shared.md, 'UNet backbone'); the weights decide the network
        cfg = cfg.replace(**{"model.upsample": "transposed"})
    model = build_trial_model(cfg, device)
    try:
        model.load_state_dict(state["best_state"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # another network's weights (a config edited after training)
        raise MedsegError(f"{path}: its selected weights do not fit the trial's network ({str(exc).splitlines()[0]}); the "
                          f"checkpoint is not this trial's, or its config.json was edited; {retrain}") from None
    return model.eval()


def _same_number(recorded, expected) -> bool:
    """Whether a checkpoint's number equals result.json's (the same float written twice; NaN equals NaN: a val Dice
    with no class defined)."""
    try:
        a, b = float(recorded), float(expected)
    except (TypeError, ValueError):
        return False
    return a == b or (math.isnan(a) and math.isnan(b))


def _transposed_up_path(weights) -> bool:
    """Whether a UNet state dict has the 2 x 2 transposed-convolution up-paths (``model.upsample="transposed"``); the
    released up-path's first weight is a 1 x 1 convolution's."""
    weight = weights.get("decoder.0.up.weight") if isinstance(weights, dict) else None
    return isinstance(weight, torch.Tensor) and weight.dim() == 4 and tuple(weight.shape[-2:]) == (2, 2)
