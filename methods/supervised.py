"""``supervised``: the labelled-only baseline, ``L = sup_weight (CE + Dice)`` (docs/baselines.md,
'Supervised only').

The student sees only ``Batch.labelled_image``; unlabelled images, if the batch has any, are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.losses import supervised_loss
from methods.objective import Batch, LossOutput, Objective, check_number, detached, logits_of


@dataclass(frozen=True)
class SupervisedConfig:
    """``sup_weight``: ``w`` in ``w (CE + Dice)``, > 0; 1.0 as MONA/ARCO fine-tuning (the default), 0.5 as
    ACTION (docs/shared.md, 'Supervised loss')."""

    sup_weight: float = 1.0

    def __post_init__(self) -> None:
        check_number(self, "sup_weight", minimum=0.0, min_inclusive=False)


class SupervisedObjective(Objective):
    """Supervised-only training on the labelled images (CE + batch Dice incl. background).

    Logged terms: ``sup`` (weighted total), ``ce``, ``dice`` (unweighted).
    """

    name = "supervised"
    config_class = SupervisedConfig
    requires_unlabelled = False

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        self.check_batch(batch)
        logits = logits_of(self.student(batch.labelled_image))
        total, parts = supervised_loss(logits, batch.label, self.config.sup_weight)
        return LossOutput(total, detached({"sup": total, **parts}))
