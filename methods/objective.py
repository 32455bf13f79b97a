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

Strong views (docs/data.md, 'Strong view'). Pseudo-labels must be computed by the teacher on the *weak* view
before mixing and strong augmentation, so the engine cannot pre-compute the strong view. The batch
therefore carries the weak views and a :class:`StrongAugment` (built by the data layer) that the
objective calls after pseudo-labelling. It has two stages because MONA mixes once and then draws two
independent photometric/deformation views that share the mixed pseudo-labels (docs/mona.md, 'One fine-tuning
step'):

* ``mix(image, pseudo, confidence) -> StrongView``: CutMix/ClassMix/CutOut of images, pseudo-labels
  and confidences with one mask (step 2 of docs/data.md, 'Strong view');
* ``perturb(image) -> image``: photometric jitter/blur and the optional AdvMorph warp, images only
  (steps 3-4 of docs/data.md, 'Strong view');
* ``pretrain_views(image, coins) -> (jittered, teacher)``: the ISD pretraining views (docs/data.md,
  'Pretraining views').

:func:`strong_view` chains both (one draw, as ACTION and the first MONA draw use).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple, Protocol, Sequence

import torch
from torch import nn

from methods.errors import ConfigError, DataError


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

    def pretrain_views(self, image: torch.Tensor, coins: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ISD pretraining views of (B, 1, H, W) images (docs/data.md, 'Pretraining views'): ``(jittered,
        teacher)``, (B, 1, H, W) each, new tensors; ``jittered`` = the images after the colour jitter only,
        ``teacher`` = ``jittered`` then blurred. ``coins``: "per_batch" (as released: one jitter and one blur
        decision per batch) or "per_image" (``methods.isd_pretrain.PRETRAIN_COINS``)."""
        ...


class IdentityStrongAugment:
    """A :class:`StrongAugment` that changes nothing, for tests of an objective's arithmetic. No trial config turns the
    strong view off: ``data.strong_mix="none"`` skips only its mixing step, while the 8-bit round trip, the jitter, the
    blur and AdvMorph (``data.advmorph_p``) still run (docs/data.md, 'Strong view')."""

    def mix(self, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
        return StrongView(image, pseudo_label, confidence)

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def pretrain_views(self, image: torch.Tensor, coins: str) -> tuple[torch.Tensor, torch.Tensor]:
        return image.clone(), image.clone()


def strong_view(augment: StrongAugment, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
    """``mix`` then ``perturb`` the images: one strong draw (docs/data.md, 'Strong view')."""
    mixed = augment.mix(image, pseudo_label, confidence)
    return StrongView(augment.perturb(mixed.image), mixed.pseudo_label, mixed.confidence)


@dataclass(frozen=True, eq=False)
class Batch:
    """One training step's input (4 labelled + 4 unlabelled as released; docs/data.md,
    'Batches and epochs').

    * ``labelled_image``: float (B_l, 1, H, W), weak view.
    * ``label``: int64 (B_l, H, W), classes in [0, C).
    * ``unlabelled_image``: float (B_u, 1, H, W), weak view; None for supervised-only training.
    * ``strong_augment``: :class:`StrongAugment` for objectives that pseudo-label then augment; None if
      the engine provides none (objectives that need one raise).

    Shapes are checked here (host-side, no device sync); a mismatch is a one-line :class:`DataError`.
    """

    labelled_image: torch.Tensor
    label: torch.Tensor
    unlabelled_image: torch.Tensor | None = None
    strong_augment: StrongAugment | None = None

    def __post_init__(self) -> None:
        image, label = self.labelled_image, self.label
        if image.dim() != 4:
            raise DataError(f"Batch.labelled_image: must be (B_l, 1, H, W), got {tuple(image.shape)} (check the data loader)")
        if label.dtype != torch.int64 or label.shape != (image.shape[0], *image.shape[2:]):
            raise DataError(
                f"Batch.label: must be int64 (B_l, H, W) = {(image.shape[0], *image.shape[2:])}, "
                f"got {label.dtype} {tuple(label.shape)} (labels are class indices of the labelled images' size)"
            )
        unlabelled = self.unlabelled_image
        if unlabelled is not None and (unlabelled.dim() != 4 or unlabelled.shape[1:] != image.shape[1:]):
            raise DataError(
                f"Batch.unlabelled_image: must be (B_u, {image.shape[1]}, {image.shape[2]}, {image.shape[3]}), "
                f"got {tuple(unlabelled.shape)} (unlabelled images must match the labelled ones' channels and size)"
            )


class LossOutput(NamedTuple):
    """``total``: float scalar with gradient; ``terms``: detached float scalars for logging (names are
    objective-specific, e.g. ``sup``, ``ce``, ``dice``, ``consistency``)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class of training objectives.

    Build the objective *after* loading any pretrained weights into ``model``: teachers are copies of
    the student made at construction (as released, both start from the pretrained checkpoint; docs/shared.md,
    'EMA teacher').

    Subclasses set the class attributes, build their teacher/heads in ``__init__`` and implement
    :meth:`loss`. The student is ``self.student``; every other trained or stateful part must be a
    submodule or a registered buffer so that ``state_dict`` covers it.

    Class attributes:
        name: the registry name.
        config_class: the frozen config dataclass (validated in its ``__post_init__``).
        requires_unlabelled: the engine must fill ``Batch.unlabelled_image``.
        requires_strong_augment: the engine must fill ``Batch.strong_augment``.
        mixes_strong_views: its strong views go through ``StrongAugment.mix``, whose kind is ``data.strong_mix`` (ISD
            pretraining's views do not): the setting then changes what a pretraining stage of it trains.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    requires_unlabelled: ClassVar[bool] = False
    requires_strong_augment: ClassVar[bool] = False
    mixes_strong_views: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: Any = None) -> None:
        super().__init__()
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__}: needs a {self.config_class.__name__}, got {type(config).__name__} "
                f"(build it with methods.registry.build_objective)"
            )
        self.config = config
        self.student = model
        self.logged_steps: Callable[[int, int], bool] | None = None
        #: Set by a caller that calls :meth:`after_backward` every step (the engine's loop): gradient-free logged
        #: terms may then be computed there, after the step's activations are freed, instead of in :meth:`loss`.
        self.defer_logged_terms = False

    def is_logged_step(self, step: int, max_steps: int) -> bool:
        """Whether the engine records a curve row after ``step`` (``logged_steps(step, max_steps)``; every step
        when no schedule was set, e.g. a direct call).

        Terms that cannot change training (no gradient, no state that a later step reads) are computed only
        at logged steps; the engine averages every term over the steps that reported it."""
        return True if self.logged_steps is None else bool(self.logged_steps(step, max_steps))

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        """The loss of one step; ``step`` counts from 0 to ``max_steps - 1``."""
        raise NotImplementedError

    def after_backward(self, step: int) -> dict[str, torch.Tensor]:
        """Called once after every backward pass, before the optimiser step (the weights are still the step's),
        when :attr:`defer_logged_terms` is set: the detached logging terms :meth:`loss` left for later (e.g.
        MONA's gradient-free L_nn, docs/methods.md, 'L_nn after the backward pass'); {} by default."""
        return {}

    def after_optimizer_step(self, step: int) -> None:
        """Called once after every optimiser step (e.g. EMA update); nothing by default."""

    def eval_model(self) -> nn.Module:
        """The network used for validation and test (the student, as released; docs/shared.md, 'EMA teacher')."""
        return self.student

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (everything with ``requires_grad``; not the teacher)."""
        return (p for p in self.parameters() if p.requires_grad)

    def check_batch(self, batch: Batch) -> None:
        """A one-line :class:`DataError` when the batch lacks what this objective declares it needs."""
        if self.requires_unlabelled and batch.unlabelled_image is None:
            raise DataError(f"objective {self.name!r}: needs Batch.unlabelled_image (give the trial unlabelled data)")
        if self.requires_strong_augment and batch.strong_augment is None:
            raise DataError(f"objective {self.name!r}: needs Batch.strong_augment (the engine must attach a StrongAugment)")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a network's output: ``output.logits`` (e.g. :class:`methods.unet.UNetOutput`) or the
    output itself when the network returns a tensor."""
    return output if isinstance(output, torch.Tensor) else output.logits


def detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detach every logging term (no host sync)."""
    return {key: value.detach() for key, value in terms.items()}


# -- config validation helpers (one-line ConfigErrors naming ``Config.field``) ------------------------

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
    """Validate ``config.field`` as a (finite) number in the given range; :class:`ConfigError` naming the field."""
    value = getattr(config, field)
    where = f"{type(config).__name__}.{field}"
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: must be a finite {'int' if integer else 'number'}, got {value!r} (fix the objective parameter)")
    low_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
    high_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
    if not (low_ok and high_ok):
        low = "(-inf" if minimum is None else ("[" if min_inclusive else "(") + f"{minimum:g}"
        high = "inf)" if maximum is None else f"{maximum:g}" + ("]" if max_inclusive else ")")
        raise ConfigError(f"{where}: must be in {low}, {high}, got {value!r} (fix the objective parameter)")


def check_int_argument(where: str, name: str, value: Any, minimum: int) -> int:
    """A function argument (not a config field) checked as a whole number >= ``minimum`` (Python or NumPy ints, not
    bools); returned as an int; :class:`ConfigError` naming ``where: name`` otherwise."""
    if type(value) is int and value >= minimum:  # the common case, per training step: a plain int
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{where}: {name} must be an int >= {minimum}, got {value!r} (pass a whole number >= {minimum})")
    return int(value)


def check_choice(config: Any, field: str, choices: Sequence[str]) -> None:
    """Validate ``config.field`` as one of ``choices``; :class:`ConfigError` listing them."""
    value = getattr(config, field)
    if value not in choices:
        raise ConfigError(f"{type(config).__name__}.{field}: {value!r} is not a choice (use one of {list(choices)})")


def config_from_dict(config_class: type, values: dict[str, Any] | None) -> Any:
    """Build ``config_class(**values)``; unknown keys raise a :class:`ConfigError` listing the valid ones, and so does a
    value of a field annotated ``bool`` or ``str`` that is not one (:func:`check_annotated_kinds`)."""
    valid = [f.name for f in dataclasses.fields(config_class)]
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"objective_params: a dict of {config_class.__name__} keys, got {values!r} (valid keys: {valid})")
    values = dict(values or {})
    unknown = sorted(set(values) - set(valid))
    if unknown:
        close = sorted({match for key in unknown for match in difflib.get_close_matches(key, valid, n=2, cutoff=0.6)})
        raise ConfigError(f"objective_params: unknown {config_class.__name__} keys {unknown}"
                          + (f" (close: {', '.join(close)})" if close else "") + f" (valid keys: {valid})")
    check_annotated_kinds(config_class, values)
    return config_class(**values)


def check_annotated_kinds(config_class: type, values: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` for a value of a ``bool`` field that is not a bool, or of a ``str`` field that is not a
    text: a new objective's ``"false"`` from Python or a JSON file was truthy and trained the other way, silently (the
    extension review; ``--set`` parses by the annotation already). Numbers are the configs' own checks
    (:func:`check_number`), which also bound them."""
    try:
        hints = typing.get_type_hints(config_class)
    except (NameError, TypeError):  # an annotation that does not resolve: the class's own checks only
        return
    for name, value in values.items():
        kind = hints.get(name)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{config_class.__name__}.{name}: must be a bool, got {value!r} (use true or false)")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{config_class.__name__}.{name}: must be a text, got {value!r} (give it as a quoted string)")
