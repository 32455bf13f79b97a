"""The interface every training objective implements (supervised, mean teacher, MONA, ARCO, ACTION).

The engine owns data loading, the optimiser, the LR schedule, checkpoint files and RNG state; an
:class:`Objective` owns everything method-specific: the student (and teacher, heads, queues, banks) and
the loss of one step. One step of the engine is::

    out = objective.loss(batch, step, max_steps)      # LossOutput(total, terms)
    out.total.backward(); optimiser.step()            # optimiser over objective.trainable_parameters()
    objective.after_optimizer_step(step)              # e.g. the EMA teacher update
    ... validation/test use objective.eval_model()    # the student

``objective.state_dict()`` holds the student, the teacher and any queue/bank buffers, so a checkpoint of
the objective (plus the optimiser and the engine's RNG state) resumes a run exactly.

Strong views (methods-spec §1.3). Pseudo-labels must be computed by the teacher on the *weak* view
before mixing and strong augmentation, so the engine cannot pre-compute the strong view. The batch
therefore carries the weak views and a :class:`StrongAugment` (built by the data layer) that the
objective calls after pseudo-labelling. It has two stages because MONA mixes once and then draws two
independent photometric/deformation views that share the mixed pseudo-labels (spec §3.3):

* ``mix(image, pseudo, confidence) -> StrongView``: CutMix/ClassMix/CutOut of images, pseudo-labels
  and confidences with one mask (spec §1.3 step 2);
* ``perturb(image) -> image``: photometric jitter/blur and the optional AdvMorph warp, images only
  (spec §1.3 step 3);
* ``pretrain_view(image) -> image``: the ISD pretraining teacher view (spec §1.3 "Pretraining views").

:func:`strong_view` chains both (one draw, as ACTION and the first MONA draw use).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, NamedTuple, Protocol, Sequence

import torch
from torch import nn


@dataclass(frozen=True, eq=False)
class StrongView:
    """A mixed (and possibly perturbed) unlabelled batch.

    * ``image``: float (B_u, 1, H, W) in [0, 1].
    * ``pseudo_label``: int64 (B_u, H, W), -1 = ignore (e.g. CutOut).
    * ``confidence``: float (B_u, H, W), teacher max-softmax probability, mixed with the same mask.
    """

    image: torch.Tensor
    pseudo_label: torch.Tensor
    confidence: torch.Tensor


class StrongAugment(Protocol):
    """Strong augmentation provided by the data layer (see the module docstring)."""

    def mix(self, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView: ...

    def perturb(self, image: torch.Tensor) -> torch.Tensor: ...

    def pretrain_view(self, image: torch.Tensor) -> torch.Tensor:
        """The ISD teacher view of pretraining (spec §1.3 "Pretraining views"): colour jitter then blur."""
        ...


class IdentityStrongAugment:
    """A :class:`StrongAugment` that changes nothing (tests, and ablations without strong views)."""

    def mix(self, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
        return StrongView(image, pseudo_label, confidence)

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def pretrain_view(self, image: torch.Tensor) -> torch.Tensor:
        return image


def strong_view(augment: StrongAugment, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
    """``mix`` then ``perturb`` the images: one strong draw (spec §1.3 steps 2-3)."""
    mixed = augment.mix(image, pseudo_label, confidence)
    return StrongView(augment.perturb(mixed.image), mixed.pseudo_label, mixed.confidence)


@dataclass(frozen=True, eq=False)
class Batch:
    """One training step's input (spec §1.2: 4 labelled + 4 unlabelled as released).

    * ``labelled_image``: float (B_l, 1, H, W), weak view.
    * ``label``: int64 (B_l, H, W), classes in [0, C).
    * ``unlabelled_image``: float (B_u, 1, H, W), weak view; None for supervised-only training.
    * ``strong_augment``: :class:`StrongAugment` for objectives that pseudo-label then augment; None if
      the engine provides none (objectives that need one raise).

    Shapes are checked here (host-side, no device sync).
    """

    labelled_image: torch.Tensor
    label: torch.Tensor
    unlabelled_image: torch.Tensor | None = None
    strong_augment: StrongAugment | None = None

    def __post_init__(self) -> None:
        image, label = self.labelled_image, self.label
        if image.dim() != 4:
            raise ValueError(f"Batch.labelled_image must be (B_l, 1, H, W), got {tuple(image.shape)}")
        if label.dtype != torch.int64 or label.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(
                f"Batch.label must be int64 (B_l, H, W) = {(image.shape[0], *image.shape[2:])}, "
                f"got {label.dtype} {tuple(label.shape)}"
            )
        unlabelled = self.unlabelled_image
        if unlabelled is not None and (unlabelled.dim() != 4 or unlabelled.shape[1:] != image.shape[1:]):
            raise ValueError(
                f"Batch.unlabelled_image must be (B_u, {image.shape[1]}, {image.shape[2]}, {image.shape[3]}), "
                f"got {tuple(unlabelled.shape)}"
            )


class LossOutput(NamedTuple):
    """``total``: float scalar with gradient; ``terms``: detached float scalars for logging (names are
    objective-specific, e.g. ``sup``, ``ce``, ``dice``, ``consistency``)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class of training objectives.

    Build the objective *after* loading any pretrained weights into ``model``: teachers are copies of
    the student made at construction (spec §1.5: both start from the pretrained checkpoint).

    Subclasses set the class attributes, build their teacher/heads in ``__init__`` and implement
    :meth:`loss`. The student is ``self.student``; every other trained or stateful part must be a
    submodule or a registered buffer so that ``state_dict`` covers it.

    Class attributes:
        name: the registry name.
        config_class: the frozen config dataclass (validated in its ``__post_init__``).
        requires_unlabelled: the engine must fill ``Batch.unlabelled_image``.
        requires_strong_augment: the engine must fill ``Batch.strong_augment``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    requires_unlabelled: ClassVar[bool] = False
    requires_strong_augment: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: Any = None) -> None:
        super().__init__()
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.student = model
        self.logged_steps: Callable[[int, int], bool] | None = None

    def is_logged_step(self, step: int, max_steps: int) -> bool:
        """Whether the engine records a curve row after ``step`` (``logged_steps(step, max_steps)``; every step
        when no schedule was set, e.g. a direct call).

        Terms that cannot change training (no gradient, no state that a later step reads) are computed only
        at logged steps; the engine averages every term over the steps that reported it."""
        return True if self.logged_steps is None else bool(self.logged_steps(step, max_steps))

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        """The loss of one step; ``step`` counts from 0 to ``max_steps - 1``."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Called once after every optimiser step (e.g. EMA update); nothing by default."""

    def eval_model(self) -> nn.Module:
        """The network used for validation and test (the student, spec §1.9)."""
        return self.student

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (everything with ``requires_grad``; not the teacher)."""
        return (p for p in self.parameters() if p.requires_grad)

    def check_batch(self, batch: Batch) -> None:
        """ValueError when the batch lacks what this objective declares it needs."""
        if self.requires_unlabelled and batch.unlabelled_image is None:
            raise ValueError(f"objective {self.name!r} needs Batch.unlabelled_image")
        if self.requires_strong_augment and batch.strong_augment is None:
            raise ValueError(f"objective {self.name!r} needs Batch.strong_augment")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a network's output: ``output.logits`` (e.g. :class:`methods.unet.UNetOutput`) or the
    output itself when the network returns a tensor."""
    return output if isinstance(output, torch.Tensor) else output.logits


def detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detach every logging term (no host sync)."""
    return {key: value.detach() for key, value in terms.items()}


# -- config validation helpers (one-line ValueErrors naming ``Config.field``) -------------------------

def check_number(
    config: Any,
    field: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Validate ``config.field`` as a (finite) number in the given range; ValueError naming the field."""
    value = getattr(config, field)
    where = f"{type(config).__name__}.{field}"
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{where} must be a finite {'int' if integer else 'number'}, got {value!r}")
    low_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
    high_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
    if not (low_ok and high_ok):
        low = "(-inf" if minimum is None else ("[" if min_inclusive else "(") + f"{minimum:g}"
        high = "inf)" if maximum is None else f"{maximum:g}" + ("]" if max_inclusive else ")")
        raise ValueError(f"{where} must be in {low}, {high}, got {value!r}")


def check_choice(config: Any, field: str, choices: Sequence[str]) -> None:
    """Validate ``config.field`` as one of ``choices``; ValueError listing them."""
    value = getattr(config, field)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{field} must be one of {list(choices)}, got {value!r}")


def config_from_dict(config_class: type, values: dict[str, Any] | None) -> Any:
    """Build ``config_class(**values)``; unknown keys raise a ValueError listing the valid ones."""
    values = dict(values or {})
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys {unknown}; valid keys: {valid}")
    return config_class(**values)
