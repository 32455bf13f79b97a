"""Typed, validated configuration of one training trial.

A :class:`TrialConfig` is what one Ray Tune trial trains: data, model, objective, optimisation,
evaluation and the seed. It is a frozen dataclass tree that round-trips through plain dicts
(``to_dict`` / ``from_dict``), so Ray Tune search spaces can override any leaf with a dotted key
(``"optim.lr"``; an objective's parameters as ``"objective_params.consistency_weight"``). :meth:`TrialConfig.validate` runs before Ray starts
and raises one-line :class:`ConfigError` messages.

Training defaults are the released fine-tuning settings (docs/data.md, 'Batches and epochs'; docs/shared.md,
'Optimiser and schedule'): 4 labelled + 4 unlabelled per step, SGD lr 0.01 momentum 0.9 weight decay 1e-4
Nesterov, poly(0.9) schedule, 256×256 patches. Evaluation defaults (:class:`EvalConfig`) are the corrected protocol
(docs/evaluation.md, 'Model selection'; ``--protocol released`` gives the released one).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from medseg_platform.errors import ConfigError, DataError

AMP_MODES = ("off", "bf16", "fp16")
LR_STEPS = ("released", "aligned")  # OptimConfig.lr_step, StageConfig.lr_step
CONV_KERNELS = ("auto", "onednn", "pytorch")  # TrialConfig.conv_kernels (medseg_platform/engine/conv_kernels.py)
SELECTIONS = ("best_val", "final")  # EvalConfig.selection
DISTANCE_UNITS = ("mm", "voxel")  # EvalConfig.distance_units


#: The largest trial seed: NumPy's legacy seeding and torch keep 32 bits, so a larger seed would silently repeat
#: ``seed % 2**32`` (``medseg_platform.seeding.seed_everything``).
MAX_SEED = 2**32 - 1
MAX_THREADS = 4096  # torch threads of one trial process; torch.set_num_threads overflows on a huge value

#: ``data.image_resize`` values (:func:`medseg_platform.data.augment.resize_slice`).
IMAGE_RESIZE_MODES = ("nearest", "cubic", "bicubic")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is (docs/data.md, 'ACDC layout') and which part of it is labelled (docs/data.md,
    'Labelled subsets')."""

    root: str = ""
    num_classes: int = 4
    patch_size: tuple[int, int] = (256, 256)
    # the training slices' image zoom to the patch (docs/data.md, 'Resizing'): "nearest" as MONA/ARCO released, "cubic"
    # as ACTION released (scipy's order-3 spline zoom), or "bicubic" (torch's bicubic convolution, another interpolant)
    image_resize: str = "nearest"
    labelled: str = "3"  # patients ("3") or percent ("5%"), see medseg_platform.data.splits
    labelled_strategy: str = "published"
    labelled_seed: int | None = None  # None: the trial seed (only used by strategy "random")
    labelled_batch: int = 4
    unlabelled_batch: int = 4
    weak_rot90_flip_p: float = 0.5  # 0 and 0 = ACTION's resize-only weak view (docs/data.md, 'Weak view')
    weak_rotate_p: float = 0.25
    strong_mix: str = "cutmix"
    advmorph_p: float = 0.5  # strong views' random warp, once per batch (docs/data.md, 'AdvMorph warp'); 0 = off


@dataclass(frozen=True)
class ModelConfig:
    """The SSL4MIS 2D UNet (docs/shared.md, 'UNet backbone'); ``channels`` narrows it for fast CPU runs."""

    name: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    # the decoder's up-path: "bilinear" (conv1x1 then bilinear x2, as released) or "transposed" (ConvTranspose2d, the
    # platform's until 2026-12-06); docs/shared.md, 'UNet backbone'
    upsample: str = "bilinear"


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (docs/shared.md, 'Optimiser and schedule')."""

    optimizer: str = "sgd"  # "sgd" (as released) or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    poly_power: float = 0.9
    # the step index of the poly rate set after each step: "released" (the step just taken, as the released scripts)
    # or "aligned" (the next step's, one step ahead); see medseg_platform.engine.loop.lr_after_step
    lr_step: str = "released"
    max_steps: int = 30000
    # mixed precision of the forward pass and losses (torch.autocast): "off", "bf16" (CPU or CUDA, no loss
    # scaling needed) or "fp16" (CUDA only, with a GradScaler whose state is checkpointed)
    amp: str = "off"


@dataclass(frozen=True)
class EvalConfig:
    """Validation during training (model selection by val Dice) and the final test evaluation."""

    val_every: int = 1000
    val_cases: int = 0  # 0 = all val cases
    empty_policy: str = "nan"  # "nan" or "released" (docs/evaluation.md, 'Empty masks')
    # HD95/ASD units: "mm" (the volume's spacing when it has one, voxels otherwise) or "voxel" (no spacing, as the
    # released evaluation; docs/evaluation.md, 'Units')
    distance_units: str = "mm"
    # test-time slice resize: "zoom" = scipy order 0, as released (docs/evaluation.md, 'Slice-wise prediction')
    resize: str = "zoom"
    log_every: int = 50
    # the state tested at the end: "best_val" (best val Dice, never the test split) or "final" (the last step's,
    # as the released scripts report; docs/evaluation.md, 'Model selection')
    selection: str = "best_val"


@dataclass(frozen=True)
class StageConfig:
    """One pretraining stage before fine-tuning (ACTION has two, MONA/ARCO one: docs/isd_pretraining.md, 'Stages').

    A stage trains ``objective`` (e.g. ``isd_pretrain``) for ``max_steps`` with its own batch sizes and
    optimiser (released pretraining: 3 labelled + 3 unlabelled, SGD 0.01, momentum 0.9, weight decay
    1e-4, no Nesterov, poly LR), without validation. Hand-off: a stage whose predecessor trained the same
    objective loads the predecessor's student and EMA teacher (as released, through the objective's
    ``load_student_and_teacher`` when it has one; else its whole state); otherwise, and for fine-tuning,
    the predecessor's student weights initialise the model.
    Finished stages are cached, keyed by a hash of the stage chain, model, data split and seed.
    """

    objective: str = "isd_pretrain"
    objective_params: Mapping[str, Any] = field(default_factory=dict)
    max_steps: int = 30000
    labelled_batch: int = 3
    unlabelled_batch: int = 3
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    poly_power: float = 0.9
    lr_step: str = "released"  # as OptimConfig.lr_step
    checkpoint_every: int = 1000


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: str = "supervised"
    objective_params: Mapping[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: tuple[StageConfig, ...] = ()
    workers: int = 1  # data-parallel processes (Ray Train); each draws its own batch: effective batch = workers x batch
    seed: int = 1337
    threads: int = 1  # torch threads per trial (Ray sets OMP_NUM_THREADS; we set torch explicitly)
    conv_kernels: str = "auto"  # CPU convolution kernels, one of CONV_KERNELS (medseg_platform/engine/conv_kernels.py)

    # -- dict round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["objective_params"] = dict(self.objective_params)
        out["pretrain"] = [dict(dataclasses.asdict(stage), objective_params=dict(stage.objective_params)) for stage in self.pretrain]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrialConfig":
        """Build from a nested dict; dotted keys (``"optim.lr"``) override nested ones. Unknown keys are errors."""
        values = copy.deepcopy(dict(values))  # never alias (and later mutate) the caller's dicts
        nested: dict[str, Any] = {}
        # whole values first, then the dotted keys that override parts of them (whatever the caller's order)
        for key, value in sorted(values.items(), key=lambda item: "." in item[0]):
            if key.startswith("pretrain."):
                raise ConfigError(f"{key}: pretraining stages cannot be set with dotted keys; pass the whole 'pretrain' list")
            parts = key.split(".")
            if parts[0] == "objective_params" and len(parts) == 2:
                nested.setdefault("objective_params", {})[parts[1]] = value
                continue
            target = nested
            for depth, part in enumerate(parts[:-1]):
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    section = ".".join(parts[:depth + 1])
                    raise ConfigError(f"{key}: {section} holds a value ({target!r}), not keys"
                                      + ("; an objective's parameters are objective_params.<name>" if section == "objective" else ""))
            if isinstance(value, Mapping) and isinstance(target.get(parts[-1]), dict):
                target[parts[-1]].update(value)
            else:
                target[parts[-1]] = value
        return _build(cls, nested, "config")

    def replace(self, **dotted: Any) -> "TrialConfig":
        """A copy with dotted-key overrides, e.g. ``cfg.replace(**{"optim.lr": 0.1, "seed": 2})``. A section given as a
        dict (``eval={"empty_policy": "nan"}``) changes only the fields it names, as the dotted keys do (it used to reset
        the section's other fields to the dataclass defaults: the paper sizes, under a quick profile)."""
        merged = self.to_dict()
        for key, value in dotted.items():
            if key in _SECTION_NAMES and isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return TrialConfig.from_dict(merged)

    # -- validation --------------------------------------------------------------------------
    def validate(self, check_data: bool = True) -> None:
        """Raise :class:`ConfigError` (one line) for any invalid value; cheap, runs before Ray starts."""
        from methods.registry import MODELS, OBJECTIVES, objective_config
        from methods.unet import UPSAMPLING

        d, o, e = self.data, self.optim, self.eval
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r}: unknown; known objectives: {', '.join(sorted(OBJECTIVES))}")
        try:
            params = objective_config(self.objective, dict(self.objective_params))
        except ValueError as exc:
            raise ConfigError(f"objective {self.objective!r}: {exc}") from None
        if self.model.name not in MODELS:
            raise ConfigError(f"model.name {self.model.name!r}: unknown; known models: {', '.join(sorted(MODELS))}")
        if self.model.upsample not in UPSAMPLING:
            raise ConfigError(f"model.upsample {self.model.upsample!r}: choose one of {', '.join(map(repr, UPSAMPLING))} "
                              "('bilinear' as released)")
        # whole numbers first: int() of a null or a word in the list was a traceback (the config review)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (*d.patch_size, *self.model.channels)):
            raise ConfigError(f"data.patch_size {d.patch_size!r} / model.channels {self.model.channels!r}: sizes and widths must be "
                              "whole numbers (e.g. [48, 48], [4, 8, 16, 32, 64])")
        if len(self.model.channels) != 5 or any(int(c) < 1 for c in self.model.channels):
            raise ConfigError(f"model.channels {self.model.channels!r}: need five positive widths (encoder levels)")
        if len(d.patch_size) != 2 or any(int(s) < 16 or int(s) % 16 for s in d.patch_size):
            raise ConfigError(f"data.patch_size {d.patch_size!r}: need two sizes that are multiples of 16 (the UNet pools 4 times)")
        if d.patch_size[0] != d.patch_size[1]:
            raise ConfigError(f"data.patch_size {d.patch_size!r}: must be square (the weak view's 90-degree rotations and the "
                              "ISD pretraining windows need H = W, as in the released code's 256x256)")
        _check_batch_sized("objective_params", f" (objective {self.objective})", params, d.patch_size[0], d.labelled_batch,
                           d.unlabelled_batch)
        pool = getattr(params, "nn_pool_resolution", "full")
        if pool != "full" and pool > min(d.patch_size):
            raise ConfigError(f"objective_params.nn_pool_resolution {pool}: larger than the patch side {min(d.patch_size)} (the NN "
                              "pool averages the representation map down to g x g; use g <= the patch side, or 'full')")
        if not 2 <= d.num_classes <= 256:
            raise ConfigError(f"data.num_classes {d.num_classes}: need 2 to 256 (background + the foreground classes; label maps "
                              "are read as 8-bit values)")
        if hasattr(params, "negative_rank_low"):  # MONA/ARCO: a window no class can reach on this dataset
            from methods.mona import check_negative_ranks

            check_negative_ranks(params, d.num_classes, where="objective_params")
        if d.image_resize not in IMAGE_RESIZE_MODES:
            raise ConfigError(f"data.image_resize {d.image_resize!r}: choose one of {', '.join(map(repr, IMAGE_RESIZE_MODES))}")
        # one key a message, first: a --set names itself (overrides.validate_with_sets; the CLI review)
        for name, value, least in (("data.labelled_batch", d.labelled_batch, 1), ("data.unlabelled_batch", d.unlabelled_batch, 0)):
            if value < least:
                raise ConfigError(f"{name} {value}: must be >= {least}")
        _check_one_value_batches("data", d.patch_size[0], d.labelled_batch, d.unlabelled_batch,
                                 OBJECTIVES[self.objective].requires_unlabelled)
        for name in ("weak_rot90_flip_p", "weak_rotate_p", "advmorph_p"):
            if not 0.0 <= getattr(d, name) <= 1.0:
                raise ConfigError(f"data.{name} {getattr(d, name)}: a probability must be in [0, 1]")
        if d.weak_rot90_flip_p + d.weak_rotate_p > 1.0 + 1e-12:  # as the weak view checks it (data.weak_view)
            raise ConfigError(f"data.weak_rot90_flip_p {d.weak_rot90_flip_p} + data.weak_rotate_p {d.weak_rotate_p}: more than 1 "
                              "(the weak view draws one of the two or neither, docs/data.md 'Weak view'; lower one of them)")
        if d.strong_mix not in ("cutmix", "classmix", "cutout", "none"):
            raise ConfigError(f"data.strong_mix {d.strong_mix!r}: choose cutmix, classmix, cutout or none")
        if o.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optim.optimizer {o.optimizer!r}: choose 'sgd' or 'adamw'")
        for name, ok, rule in (("lr", 0 < o.lr < math.inf, "a finite number > 0"),
                               ("weight_decay", 0 <= o.weight_decay < math.inf, "a finite number >= 0"),
                               ("momentum", 0 <= o.momentum < 1, "in [0, 1)"),
                               ("poly_power", 0 <= o.poly_power < math.inf, "a finite number >= 0")):
            if not ok:  # NaN fails every rule
                raise ConfigError(f"optim.{name} {getattr(o, name)}: must be {rule}")
        if o.max_steps < 1:
            raise ConfigError(f"optim.max_steps {o.max_steps}: must be >= 1")
        if o.amp not in AMP_MODES:
            raise ConfigError(f"optim.amp {o.amp!r}: choose {', '.join(map(repr, AMP_MODES))}")
        for name, value, least in (("eval.val_every", e.val_every, 1), ("eval.log_every", e.log_every, 1),
                                   ("eval.val_cases", e.val_cases, 0)):
            if value < least:
                raise ConfigError(f"{name} {value}: must be >= {least}")
        if o.lr_step not in LR_STEPS:
            raise ConfigError(f"optim.lr_step {o.lr_step!r}: choose {' or '.join(map(repr, LR_STEPS))}")
        if e.selection not in SELECTIONS:
            raise ConfigError(f"eval.selection {e.selection!r}: choose {' or '.join(map(repr, SELECTIONS))}")
        if e.empty_policy not in ("nan", "released"):
            raise ConfigError(f"eval.empty_policy {e.empty_policy!r}: choose 'nan' or 'released'")
        if e.distance_units not in DISTANCE_UNITS:
            raise ConfigError(f"eval.distance_units {e.distance_units!r}: choose {' or '.join(map(repr, DISTANCE_UNITS))}")
        if e.resize not in ("zoom", "nearest-exact", "nearest"):
            raise ConfigError(f"eval.resize {e.resize!r}: choose 'zoom' (as released), 'nearest-exact' or 'nearest'")
        if self.workers < 1:
            raise ConfigError(f"workers {self.workers}: must be >= 1")
        if OBJECTIVES[self.objective].requires_unlabelled and d.unlabelled_batch < 1:
            raise ConfigError(f"data.unlabelled_batch {d.unlabelled_batch}: objective {self.objective!r} needs unlabelled images (use >= 1)")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed {self.seed}: must be in [0, 2**32 - 1] (NumPy's and torch's generators keep 32 bits "
                              "of it, so larger seeds would repeat smaller ones)")
        if d.labelled_seed is not None and d.labelled_seed < 0:
            raise ConfigError(f"data.labelled_seed {d.labelled_seed}: must be >= 0 (or None: the trial seed)")
        if d.labelled_seed is not None and d.labelled_strategy != "random":
            raise ConfigError(f"data.labelled_seed {d.labelled_seed}: only the 'random' labelled_strategy draws patients (this one "
                              f"is {d.labelled_strategy!r}, which would train the same subset under a new trial key); set "
                              "data.labelled_strategy=random or drop it")
        if not 1 <= self.threads <= MAX_THREADS:  # torch.set_num_threads overflowed on 1e30 (the config review)
            raise ConfigError(f"threads {self.threads}: must be 1 to {MAX_THREADS}")
        if self.conv_kernels not in CONV_KERNELS:
            raise ConfigError(f"conv_kernels {self.conv_kernels!r}: choose {', '.join(map(repr, CONV_KERNELS))}")
        for i, stage in enumerate(self.pretrain):
            where = f"pretrain[{i}]"
            if stage.objective not in OBJECTIVES:
                raise ConfigError(f"{where}.objective {stage.objective!r}: unknown; known objectives: {', '.join(sorted(OBJECTIVES))}")
            try:
                objective_config(stage.objective, dict(stage.objective_params))
            except ValueError as exc:
                small = (f"; its sizes follow the patch (window a quarter of it): the contrastive methods need data.patch_size "
                         f"of at least 32, not {d.patch_size[0]}" if stage.objective == "isd_pretrain" and d.patch_size
                         and int(d.patch_size[0]) < 32 else "")
                raise ConfigError(f"{where} ({stage.objective}): {exc}{small}") from None
            if stage.max_steps < 1 or stage.labelled_batch < 1 or stage.unlabelled_batch < 0 or stage.checkpoint_every < 1:
                raise ConfigError(f"{where}: max_steps, labelled_batch and checkpoint_every must be >= 1, unlabelled_batch >= 0")
            if (not 0 < stage.lr < math.inf or not 0 <= stage.weight_decay < math.inf or not 0 <= stage.momentum < 1
                    or not 0 <= stage.poly_power < math.inf):  # NaN and inf passed (the config review)
                raise ConfigError(f"{where}: lr must be a finite number > 0, weight_decay and poly_power finite numbers >= 0, "
                                  "momentum in [0, 1)")
            if stage.lr_step not in LR_STEPS:
                raise ConfigError(f"{where}.lr_step {stage.lr_step!r}: choose {' or '.join(map(repr, LR_STEPS))}")
            if OBJECTIVES[stage.objective].requires_unlabelled and stage.unlabelled_batch < 1:
                raise ConfigError(f"{where}.unlabelled_batch: objective {stage.objective!r} needs unlabelled images (use >= 1)")
            _check_one_value_batches(where, d.patch_size[0], stage.labelled_batch, stage.unlabelled_batch,
                                     OBJECTIVES[stage.objective].requires_unlabelled)
            _check_batch_sized(f"{where}.objective_params", "", objective_config(stage.objective, dict(stage.objective_params)),
                               d.patch_size[0], stage.labelled_batch, stage.unlabelled_batch)
        if check_data:
            self._validate_data()

    def _validate_data(self) -> None:
        from medseg_platform.data.layout import AcdcLayout
        from medseg_platform.data.splits import select_labelled

        if not self.data.root:
            raise ConfigError("data.root: no dataset given (pass --data-root, or omit it to use the embedded phantom)")
        layout = AcdcLayout(self.data.root, self.data.num_classes)
        if self.eval.distance_units == "mm":  # the test's distances, before any step is trained
            mixed = layout.mixed_spacing(layout.test_cases)
            if mixed:
                raise DataError(mixed)
        seed = self.seed if self.data.labelled_seed is None else self.data.labelled_seed
        try:
            subset = select_labelled(layout.train_slices, self.data.labelled, self.data.labelled_strategy, seed)
        except ConfigError as exc:  # say which dataset: a fraction that fits ACDC may not fit a small one
            raise ConfigError(f"dataset {layout.root}: {exc}") from None
        if self.data.labelled_batch > len(subset.labelled_slices):
            raise ConfigError(
                f"data.labelled_batch {self.data.labelled_batch}: larger than the labelled set "
                f"({len(subset.labelled_slices)} slices of {subset.count.patients} patient(s)); lower it with --set "
                f"data.labelled_batch={max(1, len(subset.labelled_slices))} or label more patients"
            )
        for i, stage in enumerate(self.pretrain):  # the same rule for a stage's batch (the engine review: not checked)
            if stage.labelled_batch > len(subset.labelled_slices):
                raise ConfigError(
                    f"pretrain[{i}].labelled_batch {stage.labelled_batch}: larger than the labelled set "
                    f"({len(subset.labelled_slices)} slices of {subset.count.patients} patient(s)); lower it in the stage "
                    f"or label more patients"
                )
        if not subset.unlabelled_slices:
            from methods.registry import OBJECTIVES

            needing = [name for name in (self.objective, *(stage.objective for stage in self.pretrain))
                       if OBJECTIVES[name].requires_unlabelled]
            if needing:
                raise ConfigError(
                    f"data.labelled {self.data.labelled!r}: labels every training patient of {layout.root} "
                    f"({subset.count.patients} patient(s), {len(subset.labelled_slices)} slices), so objective {needing[0]!r} has "
                    "no unlabelled images; label fewer patients (--labelled) or train supervised")
        if not layout.val_cases or not layout.test_cases:
            raise ConfigError(f"{layout.root}: val.list and test.list must each name at least one case")
        if self.eval.val_cases > len(layout.val_cases):
            raise ConfigError(f"eval.val_cases {self.eval.val_cases}: {layout.root} has {len(layout.val_cases)} val case(s); use 0 "
                              f"(all of them) or at most {len(layout.val_cases)}")


_SECTION_NAMES = ("data", "model", "optim", "eval")  # TrialConfig's dataclass sections


def _check_one_value_batches(where: str, patch_side: int, labelled_batch: int, unlabelled_batch: int, reads_unlabelled: bool) -> None:
    """At a 16-pixel patch the UNet's bottleneck (4 poolings) is 1 x 1, so a training pass of one image leaves BatchNorm
    one value per channel and torch refuses it mid-training: a batch of 1 there is refused now (the ACTION review)."""
    if patch_side // 16 > 1:
        return
    for name, value, read in (("labelled_batch", labelled_batch, True), ("unlabelled_batch", unlabelled_batch, reads_unlabelled)):
        if read and value == 1:
            raise ConfigError(f"{where}.{name} 1 with data.patch_size {patch_side}: the UNet's bottleneck is 1x1 at this patch, so "
                              "BatchNorm sees one value per channel in a training pass of one image and cannot train; use a "
                              "batch >= 2 or a patch >= 32")


def _check_batch_sized(where: str, owner: str, params: Any, patch_side: int, labelled_batch: int, unlabelled_batch: int) -> None:
    """The objective parameters whose valid values depend on the patch and batch sizes, checked before Ray starts
    (the objectives check them again at their first step): ISD pretraining's ``image_size`` (the patch side) and
    ``queue_size`` (a multiple of B_l + B_u, docs/isd_pretraining.md, 'Queues'), whether it is a stage or the trial's
    own objective, and MONA/ARCO's ``nn_pool_capacity`` (at least B_u while L_nn is on, docs/mona.md,
    'Nearest-neighbour loss'). ``where``: the config path of ``params`` in the message; ``owner``: text after the value
    (the objective)."""
    if hasattr(params, "image_size") and params.image_size != patch_side:
        raise ConfigError(f"{where}.image_size {params.image_size}{owner}: must equal the patch side {patch_side}")
    if hasattr(params, "queue_size") and params.queue_size % (labelled_batch + unlabelled_batch):
        raise ConfigError(f"{where}.queue_size {params.queue_size}{owner}: must be a multiple of the batch "
                          f"({labelled_batch} + {unlabelled_batch})")
    if getattr(params, "nn_weight", 0) > 0 and unlabelled_batch > params.nn_pool_capacity:
        raise ConfigError(f"{where}.nn_pool_capacity {params.nn_pool_capacity}{owner}: smaller than the unlabelled batch "
                          f"{unlabelled_batch} (the NN pool keeps at least one batch of rows; raise it, lower "
                          "data.unlabelled_batch, or set nn_weight=0)")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a (nested) config dataclass from a dict; unknown keys are a ConfigError."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        f = names[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and not isinstance(value, Mapping) and not dataclasses.is_dataclass(value):
            raise ConfigError(f"{where}.{key}: a section; give a dict of its keys or set them as {key}.<name>, not {value!r}")
        if isinstance(default, str) and value is not None and not isinstance(value, str):
            # a path or a number is written as text (a Path root, "labelled": 3 -> "3"); anything else was kept and failed
            # later (a data.root of [5] was a TypeError traceback: the config review)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif isinstance(value, bool) or not is_real(value):
                raise ConfigError(f"{where}.{key}: expected a name, got {value!r}")
            else:
                value = str(int(value)) if is_whole(value) else str(value)
        if key == "pretrain" and cls is TrialConfig:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.pretrain: expected a list of stages, got {type(value).__name__}")
            for i, stage in enumerate(value):
                if not isinstance(stage, (StageConfig, Mapping)):
                    raise ConfigError(f"{where}.pretrain[{i}]: expected a stage, a dict like "
                                      f"{{'objective': 'isd_pretrain', 'max_steps': 40}}, got {stage!r}")
            kwargs[key] = tuple(stage if isinstance(stage, StageConfig) else _build(StageConfig, stage, f"{where}.pretrain[{i}]")
                                for i, stage in enumerate(value))
        elif f.type == "Mapping[str, Any]":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key}: expected a dict of names to values, got {value!r}")
            # -0.0 is 0.0: json writes "-0.0", and the same training had another trial key (the config review)
            kwargs[key] = {name: item + 0.0 if isinstance(item, float) else item for name, item in value.items()}
        elif f.type == "int | None":
            if value is not None and not is_whole(value):
                raise ConfigError(f"{where}.{key}: expected a whole number or None, got {value!r}")
            kwargs[key] = None if value is None else int(value)
        elif dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{key}: expected a list like {list(default)}, got {value!r}")
            kwargs[key] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, int) and f.type in ("int", int):  # Python or NumPy numbers, stored as Python's
            if not is_whole(value):
                raise ConfigError(f"{where}.{key}: expected a whole number, got {value!r}")
            kwargs[key] = int(value)
        elif isinstance(default, float):
            if not is_real(value):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            kwargs[key] = float(value) + 0.0  # -0.0 is 0.0 (its key would differ: the config review)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def labelled_subset(cfg: TrialConfig, train_slices: dict | None = None):
    """The trial's labelled subset: :func:`medseg_platform.data.splits.select_labelled` on its dataset's
    ``train_slices.list``. ``train_slices``: a cache of each root's list, shared by the calls that pass it."""
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.splits import select_labelled

    cache = {} if train_slices is None else train_slices
    root = str(cfg.data.root)
    if root not in cache:
        cache[root] = AcdcLayout(root, cfg.data.num_classes).train_slices
    seed = cfg.seed if cfg.data.labelled_seed is None else cfg.data.labelled_seed
    return select_labelled(cache[root], cfg.data.labelled, cfg.data.labelled_strategy, seed)


def differing_fields(configs: list[Mapping] | tuple[Mapping, ...]) -> list[str]:
    """The dotted fields (``optim.lr``, ``objective_params.unsup_weight``) whose values are not the same in all
    ``configs`` (``TrialConfig.to_dict()`` dicts), sorted."""
    def flat(config: Mapping, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in config.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
        return out
    flats = [flat(c) for c in configs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


def is_real(value: Any) -> bool:
    """A real number (Python's or NumPy's), not a bool (NumPy's bool is no Real)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    """A finite real number with no fractional part (``3``, ``3.0``, ``np.int64(3)``), not a bool."""
    return is_real(value) and math.isfinite(value) and value == int(value)


def resolve_path(path: str | Path, what: str) -> Path:
    """An absolute, user-expanded path (config and CLI paths are resolved once, here)."""
    if not str(path):
        raise ConfigError(f"{what}: empty path")
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symbolic link loop, an unknown ~user: a traceback before (the diff review)
        raise ConfigError(f"{what} {path}: cannot be resolved to a folder ({exc})") from None
