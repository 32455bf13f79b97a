"""One optimisation step of any stage: batch -> weak view -> objective -> backward -> the objective's gradient-free
logged terms (:meth:`methods.objective.Objective.after_backward`) -> (all-reduce) -> optimiser -> learning rate.

Released behaviour (docs/data.md, 'Batches and epochs'; docs/shared.md, 'Optimiser and schedule'): each step
draws ``labelled_batch`` labelled and ``unlabelled_batch`` unlabelled slices uniformly with replacement, applies the
weak view, and hands the objective a :class:`methods.objective.Batch` with the strong-view adapter (pseudo-labels
come first: docs/data.md, 'Strong view'); SGD (Nesterov) or AdamW; the poly learning rate
``lr * (1 - it/max_steps)^power`` is set after every step, with ``it`` the index of the step just taken as released
(``lr_step="released"``: the first two steps train at ``lr``) or of the next one (``"aligned"``).

Non-finite losses are detected without a host sync per step (a device-side flag, :class:`NonFiniteMonitor`, checked
at the curve rows) and stop the trial with :class:`NonFiniteLossError` naming the first bad step and term.

GPU path: ``optim.amp`` runs the objective's forward pass and losses under ``torch.autocast`` (bf16, or fp16 with a
``torch.amp.GradScaler``; :func:`autocast_dtype`); batches are copied host->device from pinned memory with
``non_blocking=True`` (the pinning is a synchronous host copy: without a prefetch thread, not done yet, it does not
overlap the step); :func:`~medseg_platform.engine.train_trial` turns ``cudnn.benchmark`` on for CUDA.
Host syncs: the step adds none (loss terms are summed and NaN-checked on the device; the curve row and the NaN check
sync once per row), except fp16's ``GradScaler.step``, which reads its found-inf flag every step (inherent to
dynamic loss scaling; bf16 needs no scaler), and, in a multi-worker trial, the first step's gradient-norm gather and
one sync per parameter without a gradient in :func:`~medseg_platform.engine.ddp.average_gradients`. Objectives with
data-dependent sample sizes sync once per step by design and say so where they do (MONA/ARCO and ACTION read their
per-class pixel counts), and the released 8-bit strong view blurs with Pillow on the CPU: the images it blurs make
a round trip (:func:`medseg_platform.data.photometric.pil_gaussian_blur`).
"""

from __future__ import annotations

import math
import time

import torch

from medseg_platform.config import LR_STEPS, TrialConfig
from medseg_platform.data import augment
from medseg_platform.data.datasets import SliceBank
from medseg_platform.engine.augmentation import StrongAugmentAdapter
from medseg_platform.engine.ddp import DistContext, average_gradients, gather_scalar
from medseg_platform.engine.training_data import TrainingData
from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.io import raise_if_stopped
from medseg_platform.seeding import DATA_RNG, FINE_TUNING, stream_seed
from methods.objective import Batch
from methods.registry import build_model

class NonFiniteLossError(MedsegError):
    """The loss became NaN or inf; the message names the step and the offending term(s).

    ``step`` and ``terms`` carry the same facts for the trial's ``error.json``.
    """

    def __init__(self, message: str, step: int | None = None, terms: tuple[str, ...] = ()):
        super().__init__(message)
        self.step, self.terms = step, tuple(terms)

    def __reduce__(self):  # keeps step and terms when Ray pickles the error
        return type(self), (str(self), self.step, self.terms)


#: fp16's gradient scale below which a curve row ends the trial, when the scaler also skipped at least half of the
#: row's updates: it starts at 2**16, halves at every step whose gradients overflow (skipping its update) and doubles
#: after 2000 steps without one, so healthy training sits at 2**10 and more. With gradients NaN at every step the weights
#: never change while the loss stays finite, and such a trial finished "successfully" untrained (the GPU-path review);
#: the scale alone would also end a long run whose rare skips had added up (the diff review).
MIN_HEALTHY_AMP_SCALE = 1.0


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


def logs_after(step: int, max_steps: int, *every: int) -> bool:
    """Whether a curve row is recorded after ``step`` (0-based): every ``every[i]`` steps and after the last.

    The one definition of the logging schedule: the training loops call it, and the objective receives it
    (``Objective.logged_steps``) so that terms without effect on training are computed only where recorded."""
    return step + 1 == max_steps or any((step + 1) % e == 0 for e in every)


def poly_lr(base_lr: float, step: int, max_steps: int, power: float) -> float:
    """``base_lr * (1 - step/max_steps)^power`` (docs/shared.md, 'Optimiser and schedule')."""
    return base_lr * (1.0 - step / max_steps) ** power


def lr_after_step(base_lr: float, step: int, max_steps: int, power: float, lr_step: str) -> float:
    """The learning rate set after optimiser step ``step`` (0-based), i.e. the rate of step ``step + 1``.

    ``"released"``: ``poly_lr(step)``, as the released scripts compute it from the iteration counter before
    incrementing it (step ``s >= 1`` trains at ``poly_lr(s - 1)``; steps 0 and 1 at ``base_lr``);
    ``"aligned"``: ``poly_lr(step + 1)`` (step ``s`` trains at ``poly_lr(s)``, one step ahead of the release).
    """
    if lr_step not in LR_STEPS:
        raise ConfigError(f"lr_step {lr_step!r}: choose {' or '.join(map(repr, LR_STEPS))}")
    return poly_lr(base_lr, step if lr_step == "released" else step + 1, max_steps, power)


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


def make_sgd(params, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.SGD:
    """SGD as every fine-tuning and pretraining stage runs it (Nesterov only with momentum), on torch's multi-tensor
    kernels (``foreach``), which torch picks by itself on CUDA only: on the CPU they give the per-tensor loop's numbers
    bit for bit (``tests/test_engine.py``) in 0.5 instead of 0.8 ms per quick-profile step (``benchmarks/RESULTS.md``,
    "SGD on the multi-tensor kernels"). A checkpoint keeps the setting it was written with (``load_state_dict`` restores
    the param groups' options): the same numbers either way."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0,
                           foreach=True)


def make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    """The fine-tuning optimiser of ``cfg.optim`` over ``params``."""
    o = cfg.optim
    if o.optimizer == "sgd":
        return make_sgd(params, o.lr, o.momentum, o.weight_decay, o.nesterov)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def build_trial_model(cfg: TrialConfig, device: torch.device) -> torch.nn.Module:
    """A freshly initialised network of ``cfg.model`` (from torch's global RNG) on ``device``."""
    return build_model(cfg.model.name, num_classes=cfg.data.num_classes, channels=tuple(cfg.model.channels),
                       upsample=cfg.model.upsample).to(device)


def data_generator(seed: int, dist: DistContext | None, phase: int = FINE_TUNING) -> torch.Generator:
    """The CPU generator of batches and augmentations of the trial of ``seed`` in ``phase`` (the fine-tuning, or
    pretraining stage ``phase - 1``): one stream per rank (``medseg_platform.seeding.stream_seed``)."""
    return torch.Generator().manual_seed(stream_seed(seed, phase, DATA_RNG, dist.rank if dist else 0))


class TrainLoop:
    """One optimisation step of any stage (:meth:`step`), and the curve rows (:meth:`curve_row`).

    Keeps the running sums of the loss terms for the curves and a :class:`NonFiniteMonitor`. ``lr_step``: see
    :func:`lr_after_step`.
    """

    def __init__(self, cfg: TrialConfig, objective, optimizer, data: TrainingData, generator: torch.Generator,
                 device: torch.device, dist: DistContext | None, max_steps: int, labelled_batch: int,
                 unlabelled_batch: int, lr: float, poly_power: float, what: str, lr_step: str = "released"):
        self.cfg, self.objective, self.optimizer, self.data = cfg, objective, optimizer, data
        self.generator, self.device, self.dist = generator, device, dist
        self.max_steps, self.labelled_batch, self.unlabelled_batch = max_steps, labelled_batch, unlabelled_batch
        self.lr, self.poly_power, self.lr_step = lr, poly_power, lr_step
        self.trainable = [p for group in optimizer.param_groups for p in group["params"]]
        if objective.requires_unlabelled and (data.unlabelled is None or unlabelled_batch < 1):
            raise MedsegError(f"{what}: objective {objective.name!r} needs unlabelled data, but the labelled set covers every training slice or the unlabelled batch is 0")
        self.strong = StrongAugmentAdapter(generator, cfg.data.strong_mix, cfg.data.num_classes, advmorph_p=cfg.data.advmorph_p)
        self.monitor = NonFiniteMonitor(device)
        self.amp_dtype = autocast_dtype(cfg.optim.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        objective.defer_logged_terms = True  # :meth:`step` calls after_backward every step
        self.pin_memory = device.type == "cuda"  # page-locked host batches make the non_blocking copies asynchronous
        self.term_sums: dict[str, torch.Tensor] = {}
        self.term_counts: dict[str, int] = {}
        self.interval_steps = 0
        self.interval_start = time.perf_counter()
        self.first_grad_norms: list[float] | None = None
        self.row_scale: float | None = None  # fp16: the scaler's scale at the previous curve row (or the first step)
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
        raise_if_stopped()  # a kill whose KeyboardInterrupt Python ignored (medseg_platform.io.interrupt_on_signal)
        t0 = time.perf_counter()
        if self.interval_steps == 0:  # the row's step-rate clock starts at its first step (see curve_row)
            self.interval_start = t0
        if self.scaler is not None and self.row_scale is None:  # once: the scale this run starts from (a resume's is loaded)
            self.row_scale = float(self.scaler.get_scale())
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
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            late_terms = self.objective.after_backward(step)  # gradient-free logged terms, activations now freed
        terms = {**out.terms, **late_terms}
        if self.dist is not None:
            if self.first_grad_norms is None:  # evidence for tests and logs: ranks see different data, so gradients differ before the sync
                norm = torch.sqrt(sum((p.grad.detach().float() ** 2).sum() for p in self.trainable if p.grad is not None))
                # fp16: the gradients are still scaled here; the norm is recorded unscaled, as in full precision. A step
                # whose scaled gradients overflow (fp16's first steps at 2**16, commonly) is skipped by the scaler: its
                # norm is inf/NaN on some rank, so the first step every rank's norm is finite is recorded instead
                norms = gather_scalar(norm / self.scaler.get_scale() if self.scaler is not None else norm)
                if self.scaler is None or all(math.isfinite(value) for value in norms):
                    self.first_grad_norms = norms
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
            group["lr"] = lr_after_step(self.lr, step, self.max_steps, self.poly_power, self.lr_step)
        self.monitor.update(step, out.total, terms)
        for name, value in {"loss": out.total, **terms}.items():  # float32 sums: bf16 would lose the small terms
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value.detach().float()
            self.term_counts[name] = self.term_counts.get(name, 0) + 1
        self.interval_steps += 1
        self.train_s += time.perf_counter() - t0

    def curve_row(self, step: int) -> dict:
        """Mean loss terms since the last row (one host sync) and throughput; raises on a non-finite loss.

        ``lr`` is the rate set after this row's step (the next step's). Each term is averaged over the steps that
        reported it: a term computed only at logged steps (e.g. MONA's gradient-free L_nn) shows its value at this
        row's step. In a multi-worker trial each term is also averaged over the ranks (one all-reduce a row; every rank
        has the same terms and counts), so the curves describe the whole batch trained on, not rank 0's share of it
        (the DDP review). ``steps_per_s``: the row's steps over the wall time from its first step's start to now, so
        what runs between a row and the next step (a validation, its checkpoint, reports, a resume) is not counted as
        steps: it was (rows after a validation 25-35% slower, 0.08 steps/s after a resume on two workers where the
        steps ran at 1.5: the timing and multi-worker reviews); the ETA learns from this rate and prices evaluations
        apart."""
        self.monitor.raise_if_bad(distributed=self.dist is not None)
        if self.dist is not None and self.term_sums:
            import torch.distributed as torch_dist

            names = sorted(self.term_sums)
            sums = torch.stack([torch.as_tensor(self.term_sums[name], dtype=torch.float32) for name in names])
            torch_dist.all_reduce(sums)
            self.term_sums = dict(zip(names, sums / self.dist.world_size))
        elapsed = time.perf_counter() - self.interval_start
        row = {"step": step, "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": self.interval_steps / max(elapsed, 1e-9)}
        row.update({name: float(total) / self.term_counts[name] for name, total in self.term_sums.items()})
        if self.scaler is not None:  # fp16: the scale shows how many updates the scaler skipped (it halves at each)
            row["amp_scale"] = scale = float(self.scaler.get_scale())
            before, self.row_scale = self.row_scale or scale, scale
            skipped = round(math.log2(before / scale)) if 0 < scale < before else (self.interval_steps if scale == 0 else 0)
            if scale < MIN_HEALTHY_AMP_SCALE and 2 * skipped >= self.interval_steps:
                raise NonFiniteLossError(
                    f"step {step}: fp16's gradient scale fell to {scale:.3g}, halved {skipped} times over the last "
                    f"{self.interval_steps} steps: the gradients overflowed or were NaN at least that often, and the scaler "
                    "skipped those updates while the loss stayed finite; train in bf16 or full precision (--set "
                    "optim.amp=bf16 or off), or lower the learning rate", step=step, terms=("gradients",))
        self.term_sums, self.term_counts, self.interval_steps = {}, {}, 0
        return row
