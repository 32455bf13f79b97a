"""One training trial in one process: [pretraining stages] -> batches -> objective -> optimiser -> validation -> test.

This module knows nothing about Ray: :func:`train_trial` takes a :class:`TrialConfig`, a trial folder
and an optional ``report(metrics, checkpoint_dir)`` callback (the Tune function trainable passes one
that calls ``ray.tune.report``). Released fine-tuning behaviour (methods-spec §1.2, §1.9, §1.10):

* each step draws ``labelled_batch`` labelled and ``unlabelled_batch`` unlabelled slices uniformly with
  replacement, applies the weak view, and hands the objective a :class:`methods.objective.Batch` with a
  strong-augmentation adapter (pseudo-labels come first, §1.3);
* SGD (Nesterov) or AdamW, poly LR ``lr * (1 - step/max_steps)^power`` set after every step;
* every ``val_every`` steps the student is evaluated on the **val** split (mean foreground Dice) and the
  best state is kept: model selection never looks at the test split (the released scripts swept
  checkpoints on the test set, methods-spec §1.10);
* at the end the best state is evaluated on the test split, per case and per class;
* before fine-tuning, the config's pretraining stages (``TrialConfig.pretrain``, e.g. ACTION's two ISD
  stages) run in order, each cached by :func:`stage_key` so the trials of a sweep that share a
  pretraining reuse it, and a crashed chain resumes inside the stage it reached (:func:`run_pretraining`).

Non-finite losses are detected without a host sync per step (a device-side flag, checked at log
intervals) and stop the trial with :class:`NonFiniteLossError` naming the first bad step and term.
A checkpoint (objective, optimiser, RNG states, best state, curves, the fp16 loss scaler) is written
atomically at each validation; ``train_trial`` resumes from it.

GPU path (:class:`TrainLoop`): ``optim.amp`` runs the objective's forward pass and losses under
``torch.autocast`` (bf16, or fp16 with a ``torch.amp.GradScaler``; :func:`autocast_dtype`); batches are
copied host->device from pinned memory with ``non_blocking=True`` (the pinning is a synchronous host copy: without
a prefetch thread, not done yet, it does not overlap the step); ``cudnn.benchmark`` is on for CUDA.
Host syncs: the engine's step adds none (loss terms are summed and NaN-checked on the device; the
curve row and the NaN check sync once per ``log_every`` steps, validation at ``val_every``), except
fp16's ``GradScaler.step``, which reads its found-inf flag every step (inherent to dynamic loss
scaling; bf16 needs no scaler), and, in a multi-worker trial, the first step's gradient-norm gather and
one sync per parameter without a gradient in :func:`average_gradients`. Objectives with data-dependent
sample sizes sync once per step by design and say so where they do (MONA/ARCO and ACTION read their
per-class pixel counts; the strong augmentation range-checks its inputs with one read).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from medseg_platform.config import TrialConfig
from medseg_platform.data import augment
from medseg_platform.data.advmorph import random_diffeomorphic_warp
from medseg_platform.data.datasets import SliceBank
from medseg_platform.data.layout import AcdcLayout, Volume
from medseg_platform.data.splits import LabelledSubset, select_labelled
from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.evaluation.metrics import evaluate_case
from medseg_platform.evaluation.predict import predict_volume
from medseg_platform.io import atomic_path
from medseg_platform.seeding import seed_everything
from methods.objective import Batch, StrongView
from methods.registry import build_model, build_objective

CHECKPOINT_FILE = "checkpoint.pt"
STAGE_CACHE_VERSION = 1  # bump when a change to the engine or the pretraining objectives invalidates cached stages
Reporter = Callable[[dict, "Path | None"], None]


class NonFiniteLossError(MedsegError):
    """The loss became NaN or inf; the message names the step and the offending term(s).

    ``step`` and ``terms`` carry the same facts for the trial's ``error.json``.
    """

    def __init__(self, message: str, step: int | None = None, terms: tuple[str, ...] = ()):
        super().__init__(message)
        self.step, self.terms = step, tuple(terms)

    def __reduce__(self):  # keeps step and terms when Ray pickles the error
        return type(self), (str(self), self.step, self.terms)


class StrongAugmentAdapter:
    """The data layer's strong view behind the objective's two-stage protocol (methods-spec §1.3).

    ``mix`` = CutMix/ClassMix/CutOut (+ the released 8-bit round trip of image and confidence);
    ``perturb`` = brightness/contrast jitter then Gaussian blur per image, then (once per batch with
    probability ``advmorph_p``) the random diffeomorphic AdvMorph warp of the images only.
    Every view is computed in float32 with autocast off: the objective calls these inside the training
    step's autocast region, and the augmented data must not depend on ``optim.amp``.
    """

    def __init__(self, generator: torch.Generator, mix: str, num_classes: int, quantise_8bit: bool = True, advmorph_p: float = 0.5):
        self.generator = generator
        self.mode = mix
        self.num_classes = num_classes
        self.quantise_8bit = quantise_8bit
        self.advmorph_p = advmorph_p

    def mix(self, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
        with _full_precision(image):
            image, pseudo_label, confidence = augment.mix_batch(image.float(), pseudo_label, confidence.float(), self.generator,
                                                                self.mode, self.num_classes)
            if self.quantise_8bit:
                image, confidence = augment.round_trip_8bit(image), augment.round_trip_8bit(confidence)
        return StrongView(image, pseudo_label, confidence)

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        with _full_precision(image):
            image = augment.color_jitter(image.float(), self.generator, p=0.5)
            image = augment.random_gaussian_blur(image, self.generator, p=0.5)
            if self.advmorph_p > 0:
                image = random_diffeomorphic_warp(image, self.generator, p=self.advmorph_p)
        return image

    def pretrain_view(self, image: torch.Tensor) -> torch.Tensor:
        """ISD teacher view: jitter (brightness/contrast 0.8-1.2, p=0.5) then blur (p=0.5), a new tensor
        (the released in-place jitter that leaks into the student view, spec §8.10, is not reproduced)."""
        with _full_precision(image):
            image = augment.color_jitter(image.float(), self.generator, p=0.5, brightness=(0.8, 1.2), contrast=(0.8, 1.2))
            return augment.random_gaussian_blur(image, self.generator, p=0.5)


def _full_precision(tensor: torch.Tensor):
    """Autocast off on ``tensor``'s device (a no-op context when no autocast region is active)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class NonFiniteMonitor:
    """Remembers the first step whose total loss was not finite, on the device (no per-step sync)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms: dict[str, torch.Tensor] = {}

    def update(self, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        fresh = (~torch.isfinite(total.detach())) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step), self.first_bad)
        for name, value in terms.items():
            flag = fresh & ~torch.isfinite(value)
            self.bad_terms[name] = self.bad_terms.get(name, torch.zeros((), dtype=torch.bool, device=flag.device)) | flag

    def raise_if_bad(self, distributed: bool = False) -> None:
        if distributed:  # a NaN on one rank must stop every rank, or the others would wait in a collective
            import torch.distributed as dist

            first_bad = self.first_bad.clone()
            first_bad[first_bad < 0] = torch.iinfo(torch.long).max
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
            self.first_bad = torch.where(first_bad == torch.iinfo(torch.long).max, torch.full_like(first_bad, -1), first_bad)
        step = int(self.first_bad)  # one sync, at log/validation intervals only
        if step >= 0:
            names = [name for name, flag in self.bad_terms.items() if bool(flag)] or ["total"]
            raise NonFiniteLossError(f"step {step}: loss is NaN/inf in term(s) {', '.join(names)} (lower the learning rate or a loss weight)",
                                     step=step, terms=tuple(names))


@dataclass(frozen=True)
class DistContext:
    """Data-parallel training across ``world_size`` processes (the Ray Train path, medseg_platform.distributed).

    Every rank starts from rank 0's weights, draws its own batches (data RNG seeded by rank) and
    averages gradients with one coalesced all-reduce per step, so the replicas stay identical (what
    DDP does, without wrapping the student: objectives keep their plain ``state_dict`` keys).
    Validation, test and checkpoints happen on rank 0; the process group is set up by the caller.
    """

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and normalisation statistics to every rank.

    Only parameters and batch-norm buffers: other buffers (memory banks, queues, NN pools) hold each
    rank's own data with bookkeeping that a raw copy would leave inconsistent, as in DDP where every
    replica keeps its own.
    """
    import torch.distributed as dist

    norm_buffers = [buf for sub in module.modules() if isinstance(sub, torch.nn.modules.batchnorm._NormBase)
                    for buf in sub.buffers(recurse=False)]
    for tensor in list(module.parameters()) + norm_buffers:
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the mean gradient of ``params`` in one flat buffer (gradients of None count as zero)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has_grad])
    dist.all_reduce(flat)
    anyone = flat[-len(params):] > 0
    flat = flat[: -len(params)] / world_size
    offset = 0
    for i, (p, g) in enumerate(zip(params, grads)):
        n = g.numel()
        if p.grad is None:  # as in single-process training, a parameter no rank touched keeps no gradient
            p.grad = flat[offset:offset + n].view_as(p).clone()
            p.grad = p.grad if bool(anyone[i]) else None
        else:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def gather_scalar(value: torch.Tensor) -> list[float]:
    """The scalar ``value`` of every rank, in rank order."""
    import torch.distributed as dist

    out = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(out, value.detach())
    return [float(v) for v in out]


def replica_max_difference(module: torch.nn.Module) -> float:
    """Largest absolute difference of any parameter between this rank and rank 0 (0.0 = in sync)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


@dataclass
class TrialOutcome:
    """What a finished trial produced (the results writer turns it into files)."""

    labelled: LabelledSubset
    best_step: int
    best_val_dice: float
    test_rows: list[dict]
    curves: list[dict]
    val_curve: list[dict]
    timing: dict[str, float]
    resumed_from_step: int = 0
    extra: dict = field(default_factory=dict)


def logs_after(step: int, max_steps: int, *every: int) -> bool:
    """Whether a curve row is recorded after ``step`` (0-based): every ``every[i]`` steps and after the last.

    The one definition of the logging schedule: the training loops call it, and the objective receives it
    (``Objective.logged_steps``) so that terms without effect on training are computed only where recorded."""
    return step + 1 == max_steps or any((step + 1) % e == 0 for e in every)


def progress_fields(objective: str, phase: str, stage: int, stages: int, step: int, steps: int, steps_per_s: float,
                    evaluations: int, cached: bool = False) -> dict:
    """Where a trial is, added to every report of :func:`train_trial` (the study's progress lines and their ETA,
    :mod:`medseg_platform.progress`, read them).

    ``phase`` ``"pretraining"`` (``stage`` = 1-based stage number of ``stages``) or ``"fine-tuning"`` (``stage`` 0);
    ``phase_step`` of ``phase_steps``; ``objective`` of the phase; ``steps_per_s`` of the last curve row (NaN for a
    stage loaded from the cache, ``stage_cached``); ``evaluations`` = validations done so far, the time attribute of
    the study's ASHA scheduler (a report between validations does not advance it).

    Between validations (every curve row, ``eval.log_every``) and at every curve row of a pretraining stage,
    :func:`train_trial` sends a progress-only report: these fields, the last known val Dice, no checkpoint.
    """
    return {"phase": phase, "objective": objective, "stage": stage, "stages": stages, "phase_step": step, "phase_steps": steps,
            "steps_per_s": steps_per_s, "stage_cached": cached, "evaluations": evaluations}


def poly_lr(base_lr: float, step: int, max_steps: int, power: float) -> float:
    """``base_lr * (1 - step/max_steps)^power`` (methods-spec §1.9)."""
    return base_lr * (1.0 - step / max_steps) ** power


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of ``optim.amp`` on ``device``; None = full precision (float32).

    bf16 works on CPU and CUDA; fp16 needs CUDA (CPU fp16 autocast is slow and has no loss scaling
    here): :class:`ConfigError` otherwise, before any training.
    """
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"optim.amp 'fp16': needs a CUDA device, but this trial runs on {device.type} (use 'bf16' or 'off', or give the trial a GPU)")
    if amp not in ("bf16", "fp16"):
        raise ConfigError(f"optim.amp {amp!r}: choose 'off', 'bf16' or 'fp16'")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def predict_case(model: torch.nn.Module, image: np.ndarray, cfg: TrialConfig, device: torch.device) -> np.ndarray:
    """Label map (uint8 D×H×W) of one volume as the evaluation predicts it: slice-wise at ``cfg``'s patch size with
    its test-time resize policy (``eval.resize``). ``medseg predict`` (:mod:`medseg_platform.predict`) uses it too,
    so its files hold exactly what the trial's test Dice scored."""
    return predict_volume(model, image, cfg.data.patch_size, device=device, resize=cfg.eval.resize)


def evaluate_volumes(model: torch.nn.Module, volumes: Iterable[Volume], cfg: TrialConfig, device: torch.device,
                     on_prediction: Callable[[Volume, np.ndarray], None] | None = None) -> list[dict]:
    """Per-case, per-class metric rows of ``model`` on ``volumes`` (methods-spec §1.10, slice-wise at the patch size).

    ``on_prediction(volume, prediction)``, if given, sees each predicted label volume (uint8 D×H×W) before
    it is dropped (the test evaluation keeps a few slices of it for :func:`save_qualitative`).
    """
    rows = []
    for vol in volumes:
        pred = predict_case(model, vol.image, cfg, device)
        if on_prediction is not None:
            on_prediction(vol, pred)
        for row in evaluate_case(pred, vol.label, cfg.data.num_classes, vol.spacing, empty_policy=cfg.eval.empty_policy):
            rows.append({"case": vol.case, **row})
    return rows


QUALITATIVE_FILE = "qualitative.npz"
QUALITATIVE_CASES = 3


class QualitativeSlices:
    """Keeps the middle slice of the first :data:`QUALITATIVE_CASES` test cases (sorted by id) for the overlays.

    The choice depends only on the test case ids and volume depths, so every trial on the same dataset
    keeps the same slices and each method's prediction can be shown next to the others'. Use
    :meth:`keep` as ``evaluate_volumes(..., on_prediction=...)``, then :meth:`save`.
    """

    def __init__(self, test_cases: list[str]):
        self.cases = sorted(test_cases)[:QUALITATIVE_CASES]
        self.samples: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray, tuple[float, float] | None]] = {}

    def keep(self, volume: Volume, prediction: np.ndarray) -> None:
        if volume.case in self.cases:
            z = volume.image.shape[0] // 2
            spacing = tuple(float(s) for s in volume.spacing[1:]) if volume.spacing is not None else None
            self.samples[volume.case] = (z, volume.image[z], volume.label[z], np.asarray(prediction)[z], spacing)

    def save(self, path: Path) -> None:
        """Write ``qualitative.npz`` atomically (the layout is documented in :mod:`medseg_platform.results`)."""
        cases = [c for c in self.cases if c in self.samples]
        arrays: dict[str, np.ndarray] = {
            "cases": np.asarray(cases, dtype=str),
            "slices": np.asarray([self.samples[c][0] for c in cases], dtype=np.int64),
            "spacing": np.asarray([self.samples[c][4] or (math.nan, math.nan) for c in cases], dtype=np.float64).reshape(-1, 2),
        }
        for i, case in enumerate(cases):
            _, image, label, prediction, _ = self.samples[case]
            arrays[f"image_{i}"] = np.asarray(image, dtype=np.float16)
            arrays[f"label_{i}"] = np.asarray(label, dtype=np.uint8)
            arrays[f"prediction_{i}"] = np.asarray(prediction, dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append ".npz" to a name
            np.savez_compressed(fh, **arrays)


def mean_dice(rows: list[dict]) -> float:
    """Mean over cases and classes of the defined Dice values (NaN if none is defined)."""
    values = np.array([r["dice"] for r in rows], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _cuda_rng_states() -> list[torch.Tensor]:
    """The RNG state of every CUDA device (samplers, dropout and warps draw there), [] without CUDA."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def _set_cuda_rng_states(states: list[torch.Tensor] | None) -> None:
    if states and torch.cuda.is_available() and len(states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states)


def _data_generator(seed: int, dist: DistContext | None) -> torch.Generator:
    """The CPU generator of batches and augmentations: one stream per rank."""
    return torch.Generator().manual_seed(seed + (1_000_003 * dist.rank if dist else 0))


def _training_state(step: int, objective, optimizer, generator: torch.Generator, scaler=None, **extra) -> dict:
    """Everything a resumed run needs to continue exactly (objective, optimiser, every RNG, the fp16
    ``GradScaler``'s plain-dict state or None) plus ``extra``."""
    return {"step": step, "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": _cuda_rng_states(), "data_rng": generator.get_state(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None, **extra}


def _restore_training_state(state: dict, objective, optimizer, generator: torch.Generator, seed: int,
                            dist: DistContext | None, scaler=None) -> int:
    """Load a :func:`_training_state` (``seed``: the generator's seed before the rank offset); returns its step."""
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(state["torch_rng"])
    _set_cuda_rng_states(state.get("cuda_rng"))
    generator.set_state(state["data_rng"])
    if dist is not None and not dist.is_main:  # the checkpoint holds rank 0's data RNG: give this rank its own stream
        generator.manual_seed(seed + 1_000_003 * dist.rank + int(state["step"]))
    return int(state["step"])


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`_save_checkpoint`; an unreadable one is a :class:`MedsegError` naming it
    (deterministic: retrying the trial would fail the same way)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise MedsegError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          "delete it to start this stage or trial over") from None


def load_selected_model(cfg: TrialConfig, trial_dir: Path, device: torch.device, best_step: int | None = None) -> torch.nn.Module:
    """The network of a trial trained by :func:`train_trial` with the weights selected on val (the ``best_state`` of
    ``trial_dir/checkpoint/checkpoint.pt``, read with ``weights_only=True``), on ``device``, in eval mode.

    ``best_step``: the step ``result.json`` recorded; a checkpoint that selected another step is an error (it is not the
    finished trial's). One-line :class:`MedsegError` when the checkpoint or its selected state is missing.
    """
    path = Path(trial_dir) / "checkpoint" / CHECKPOINT_FILE
    if not path.is_file():
        raise MedsegError(f"{path}: missing, so the trial's selected weights are gone (rerun the trial to recreate them)")
    state = _load_checkpoint(path)
    if state.get("best_state") is None:
        raise MedsegError(f"{path}: holds no weights selected on val yet (the trial has not validated; finish it first)")
    if best_step is not None and int(state.get("best_step", -1)) != int(best_step):
        raise MedsegError(f"{path}: selected step {state.get('best_step')} but result.json records step {best_step} "
                          "(the checkpoint is not this finished trial's; rerun the trial)")
    model = _build_model(cfg, device)
    model.load_state_dict(state["best_state"])
    return model.eval()


@dataclass
class TrainingData:
    """What every stage of a trial draws batches from (built once per trial)."""

    layout: AcdcLayout
    subset: LabelledSubset
    labelled: SliceBank
    unlabelled: SliceBank | None


def load_training_data(cfg: TrialConfig, log: Callable[[str], None]) -> TrainingData:
    layout = AcdcLayout(cfg.data.root, cfg.data.num_classes)
    labelled_seed = cfg.seed if cfg.data.labelled_seed is None else cfg.data.labelled_seed
    subset = select_labelled(layout.train_slices, cfg.data.labelled, cfg.data.labelled_strategy, labelled_seed)
    log(subset.describe())
    labelled = SliceBank(layout, subset.labelled_slices, cfg.data.patch_size, cfg.data.image_resize)
    unlabelled = SliceBank(layout, subset.unlabelled_slices, cfg.data.patch_size, cfg.data.image_resize) if subset.unlabelled_slices else None
    return TrainingData(layout, subset, labelled, unlabelled)


class TrainLoop:
    """One optimisation step of any stage: batch -> weak view -> objective -> (all-reduce) -> optimiser -> LR.

    Keeps the running sums of the loss terms for the curves and a :class:`NonFiniteMonitor`.
    """

    def __init__(self, cfg: TrialConfig, objective, optimizer, data: TrainingData, generator: torch.Generator,
                 device: torch.device, dist: DistContext | None, max_steps: int, labelled_batch: int,
                 unlabelled_batch: int, lr: float, poly_power: float, what: str):
        self.cfg, self.objective, self.optimizer, self.data = cfg, objective, optimizer, data
        self.generator, self.device, self.dist = generator, device, dist
        self.max_steps, self.labelled_batch, self.unlabelled_batch = max_steps, labelled_batch, unlabelled_batch
        self.lr, self.poly_power = lr, poly_power
        self.trainable = [p for group in optimizer.param_groups for p in group["params"]]
        if objective.requires_unlabelled and (data.unlabelled is None or unlabelled_batch < 1):
            raise MedsegError(f"{what}: objective {objective.name!r} needs unlabelled data, but the labelled set covers every training slice or the unlabelled batch is 0")
        self.strong = StrongAugmentAdapter(generator, cfg.data.strong_mix, cfg.data.num_classes, advmorph_p=cfg.data.advmorph_p)
        self.monitor = NonFiniteMonitor(device)
        self.amp_dtype = autocast_dtype(cfg.optim.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.pin_memory = device.type == "cuda"  # page-locked host batches make the non_blocking copies asynchronous
        self.term_sums: dict[str, torch.Tensor] = {}
        self.term_counts: dict[str, int] = {}
        self.interval_steps = 0
        self.interval_start = time.perf_counter()
        self.first_grad_norms: list[float] | None = None
        self.train_s = 0.0

    def _weak(self, bank: SliceBank, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = bank.batch(bank.sample_indices(batch_size, self.generator))
        return augment.weak_augment(image, label, self.generator, self.cfg.data.weak_rot90_flip_p, self.cfg.data.weak_rotate_p)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host -> training device; from pinned memory and without waiting when the device is a GPU."""
        if self.pin_memory:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def step(self, step: int) -> None:
        """One optimisation step; no host sync (see the module docstring for the exceptions)."""
        t0 = time.perf_counter()
        self.objective.train()
        image, label = self._weak(self.data.labelled, self.labelled_batch)
        unlabelled = None
        if self.objective.requires_unlabelled:
            unlabelled = self._to_device(self._weak(self.data.unlabelled, self.unlabelled_batch)[0])
        batch = Batch(self._to_device(image), self._to_device(label), unlabelled, self.strong)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.objective.loss(batch, step, self.max_steps)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(out.total) if self.scaler is not None else out.total).backward()
        if self.dist is not None:
            if self.first_grad_norms is None:  # evidence for tests and logs: ranks see different data, so gradients differ before the sync
                self.first_grad_norms = gather_scalar(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in self.trainable if p.grad is not None)))
            # fp16: the gradients are scaled by the same factor on every rank (the scalers see the same averaged
            # gradients, so they skip steps and update their scale identically)
            average_gradients(self.trainable, self.dist.world_size)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # unscales; skips the step when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.objective.after_optimizer_step(step)
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(self.lr, step + 1, self.max_steps, self.poly_power)
        self.monitor.update(step, out.total, out.terms)
        for name, value in {"loss": out.total, **out.terms}.items():  # float32 sums: bf16 would lose the small terms
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value.detach().float()
            self.term_counts[name] = self.term_counts.get(name, 0) + 1
        self.interval_steps += 1
        self.train_s += time.perf_counter() - t0

    def curve_row(self, step: int) -> dict:
        """Mean loss terms since the last row (one host sync) and throughput; raises on a non-finite loss.

        Each term is averaged over the steps that reported it: a term computed only at logged steps (e.g.
        MONA's gradient-free L_nn) shows its value at this row's step."""
        self.monitor.raise_if_bad(distributed=self.dist is not None)
        elapsed = time.perf_counter() - self.interval_start
        row = {"step": step, "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": self.interval_steps / max(elapsed, 1e-9)}
        row.update({name: float(total) / self.term_counts[name] for name, total in self.term_sums.items()})
        self.term_sums, self.term_counts, self.interval_steps, self.interval_start = {}, {}, 0, time.perf_counter()
        return row


def _build_model(cfg: TrialConfig, device: torch.device) -> torch.nn.Module:
    return build_model(cfg.model.name, num_classes=cfg.data.num_classes, channels=tuple(cfg.model.channels)).to(device)


def _agree(flag: bool, dist: DistContext | None, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (the tensor lives on the training device: NCCL has no CPU backend)."""
    if dist is None:
        return flag
    import torch.distributed as tdist

    value = torch.tensor([1 if flag else 0], device=device)
    tdist.broadcast(value, src=0)
    return bool(value.item())


def stage_key(cfg: TrialConfig, index: int, subset: LabelledSubset) -> str:
    """Cache key of pretraining stage ``index``: the chain up to it, model, data, labelled patients and seed."""
    data = dataclasses.asdict(cfg.data)
    for fine_tune_only in ("labelled_batch", "unlabelled_batch", "strong_mix"):
        data.pop(fine_tune_only)
    payload = {"version": STAGE_CACHE_VERSION, "stages": cfg.to_dict()["pretrain"][: index + 1], "model": dataclasses.asdict(cfg.model),
               "data": data, "labelled_patients": list(subset.patients), "labelled_slices": len(subset.labelled_slices), "seed": cfg.seed,
               "workers": cfg.workers}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"stage{index}-{cfg.pretrain[index].objective}-{digest}"


@contextlib.contextmanager
def _exclusive(path: Path, enabled: bool):
    """An advisory file lock so concurrent trials on one machine train a shared stage once."""
    if not enabled:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_pretraining(cfg: TrialConfig, data: TrainingData, cache_dir: Path, device: torch.device, dist: DistContext | None,
                    log: Callable[[str], None], report: Reporter | None = None) -> dict | None:
    """Run (or load from the cache) every pretraining stage; returns the last stage's final state or None.

    ``report`` (optional) receives a progress-only report (:func:`progress_fields`) for each cached stage and at
    every curve row of a trained stage, on every rank.

    Each stage's folder ``cache_dir/<stage_key>/`` holds ``checkpoint.pt`` while training (a crashed chain
    resumes inside the stage it reached) and ``final.pt`` ({"objective", "student"}) when done.
    """
    previous: dict | None = None
    for index, stage in enumerate(cfg.pretrain):
        folder = Path(cache_dir) / stage_key(cfg, index, data.subset)
        final_path = folder / "final.pt"
        with _exclusive(folder / ".lock", enabled=dist is None or dist.is_main):  # other ranks wait in _agree
            if _agree(final_path.is_file(), dist, device):
                log(f"pretraining stage {index} ({stage.objective}): cached at {folder}")
                previous = _load_checkpoint(final_path)
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
    seed_everything(cfg.seed + index)
    model = _build_model(cfg, device)
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
    generator = _data_generator(stage_seed, dist)
    loop = TrainLoop(cfg, objective, optimizer, data, generator, device, dist, stage.max_steps, stage.labelled_batch,
                     stage.unlabelled_batch, stage.lr, stage.poly_power, f"pretrain[{index}]")
    row_every = (cfg.eval.log_every, stage.checkpoint_every)
    objective.logged_steps = lambda step, max_steps: logs_after(step, max_steps, *row_every)
    ckpt_path = folder / CHECKPOINT_FILE
    start, curves = 0, []
    if _agree(ckpt_path.is_file(), dist, device):
        state = _load_checkpoint(ckpt_path)
        start = _restore_training_state(state, objective, optimizer, generator, stage_seed, dist, scaler=loop.scaler)
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
            _save_checkpoint(ckpt_path, _training_state(step + 1, objective, optimizer, generator, scaler=loop.scaler, curves=curves))
    if dist is not None:
        broadcast_state(objective)
    final = {"objective": objective.state_dict(), "student": objective.eval_model().state_dict(), "curves": curves,
             "train_s": loop.train_s}
    if main:
        _save_checkpoint(folder / "final.pt", final)
        ckpt_path.unlink(missing_ok=True)
    log(f"pretraining stage {index} done: loss {curves[-1]['loss']:.4f}")
    return final


def train_trial(cfg: TrialConfig, trial_dir: Path, report: Reporter | None = None, log: Callable[[str], None] | None = None,
                dist: DistContext | None = None, device: torch.device | None = None, pretrain_cache: Path | None = None) -> TrialOutcome:
    """Pretrain (cached), fine-tune and evaluate one configuration; resumes from ``trial_dir/checkpoint/checkpoint.pt``.

    ``pretrain_cache``: where finished pretraining stages are kept and shared between trials (default
    ``trial_dir/pretrain``). With ``dist`` this is one rank of a data-parallel trial (see
    :class:`DistContext`); only rank 0's outcome carries validation and test results.
    ``report(metrics, checkpoint_dir)`` gets one report with the checkpoint at each validation and progress-only
    reports (``checkpoint_dir`` None) at the curve rows between and during pretraining (:func:`progress_fields`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if (dist.world_size if dist else 1) != cfg.workers:
        raise MedsegError(f"workers {cfg.workers}: the trial runs on {dist.world_size if dist else 1} process(es); set workers to match")
    t_start = time.perf_counter()
    timing = {"setup_s": 0.0, "pretrain_s": 0.0, "train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0, "test_s": 0.0}
    torch.set_num_threads(cfg.threads)
    device = device or pick_device()
    autocast_dtype(cfg.optim.amp, device)  # fp16 without CUDA: a ConfigError before any data is read
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch and batch sizes: let cuDNN pick its fastest kernels
    main = dist is None or dist.is_main
    trial_dir = Path(trial_dir)
    ckpt_dir = trial_dir / "checkpoint"
    ckpt_path = ckpt_dir / CHECKPOINT_FILE

    data = load_training_data(cfg, log)
    layout = data.layout
    val_cases = layout.val_cases[: cfg.eval.val_cases] if cfg.eval.val_cases else layout.val_cases
    val_volumes = [layout.read_volume(c) for c in val_cases] if main else []
    timing["setup_s"] = time.perf_counter() - t_start

    resuming = _agree(ckpt_path.is_file(), dist, device)
    pretrained = None
    if cfg.pretrain and not resuming:  # a resumed fine-tune has the pretrained weights in its checkpoint already
        t0 = time.perf_counter()
        pretrained = run_pretraining(cfg, data, pretrain_cache or trial_dir / "pretrain", device, dist, log, report)
        timing["pretrain_s"] = time.perf_counter() - t0

    seed_everything(cfg.seed)
    model = _build_model(cfg, device)
    if pretrained is not None:
        model.load_state_dict(pretrained["student"])  # student and (by copy) teacher start from the pretrained student
    objective = build_objective(cfg.objective, model, dict(cfg.objective_params)).to(device)
    optimizer = _make_optimizer(cfg, list(objective.trainable_parameters()))
    generator = _data_generator(cfg.seed, dist)
    o = cfg.optim
    loop = TrainLoop(cfg, objective, optimizer, data, generator, device, dist, o.max_steps, cfg.data.labelled_batch,
                     cfg.data.unlabelled_batch, o.lr, o.poly_power, "fine-tuning")
    row_every = (cfg.eval.log_every, cfg.eval.val_every)
    objective.logged_steps = lambda step, max_steps: logs_after(step, max_steps, *row_every)

    start_step, best = 0, {"step": -1, "val_dice": -math.inf, "state": None}
    curves: list[dict] = []
    val_curve: list[dict] = []
    if resuming:
        state = _load_checkpoint(ckpt_path)
        start_step = _restore_training_state(state, objective, optimizer, generator, cfg.seed, dist, scaler=loop.scaler)
        best = {"step": int(state["best_step"]), "val_dice": float(state["best_val_dice"]), "state": state["best_state"]}
        curves, val_curve = list(state["curves"]), list(state["val_curve"])
        log(f"resumed from step {start_step} ({ckpt_path})")
    if dist is not None:
        broadcast_state(objective)

    def progress(step: int) -> dict:  # where fine-tuning is, for every report (see progress_fields)
        return {"step": step, "loss": curves[-1]["loss"], "done": False,
                **progress_fields(cfg.objective, "fine-tuning", 0, len(cfg.pretrain), step, o.max_steps, curves[-1]["steps_per_s"], len(val_curve))}

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
            broadcast_state(objective)  # BN running statistics: rank 0's are the model
        if not main:
            if report is not None:
                report({**progress(step + 1), "val_dice": float("nan"), "best_val_dice": float("nan")}, None)
            continue
        t0 = time.perf_counter()
        val_dice = mean_dice(evaluate_volumes(objective.eval_model(), val_volumes, cfg, device))
        timing["val_s"] += time.perf_counter() - t0
        val_curve.append({"step": step + 1, "val_dice": val_dice})
        improved = math.isfinite(val_dice) and (not math.isfinite(best["val_dice"]) or val_dice > best["val_dice"])
        if improved or best["state"] is None:  # a NaN Dice (nothing defined) never wins against a number
            best = {"step": step + 1, "val_dice": val_dice, "state": copy.deepcopy(objective.eval_model().state_dict())}
        t0 = time.perf_counter()
        _save_checkpoint(ckpt_path, _training_state(step + 1, objective, optimizer, generator, scaler=loop.scaler, best_step=best["step"],
                                                    best_val_dice=best["val_dice"], best_state=best["state"],
                                                    curves=curves, val_curve=val_curve))
        timing["checkpoint_s"] += time.perf_counter() - t0
        log(f"step {step + 1}/{o.max_steps}: loss {curves[-1]['loss']:.4f}, val Dice {val_dice:.4f} (best {best['val_dice']:.4f} @ {best['step']})")
        if report is not None:
            report({**progress(step + 1), "val_dice": val_dice, "best_val_dice": best["val_dice"]}, ckpt_dir)
    timing["train_s"] = loop.train_s

    extra = {}
    if dist is not None:
        extra = {"world_size": dist.world_size, "replica_param_max_diff": replica_max_difference(objective)}
        if loop.first_grad_norms is not None:
            extra["first_step_grad_norm_per_rank"] = loop.first_grad_norms
    if not main:
        return TrialOutcome(data.subset, best["step"], best["val_dice"], [], curves, val_curve, timing, start_step, extra)
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
    return TrialOutcome(data.subset, best["step"], best["val_dice"], test_rows, curves, val_curve, timing, start_step, extra)
