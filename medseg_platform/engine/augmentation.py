"""The data layer's strong views behind the objective's two-stage protocol (``methods.objective.StrongAugment``).

Training runs the tested functions of :mod:`medseg_platform.data.augment`: ``mix`` is
:func:`~medseg_platform.data.augment.strong_mix` and ``perturb`` is
:func:`~medseg_platform.data.augment.strong_perturb` followed by the AdvMorph warp, the two stages of
:func:`~medseg_platform.data.augment.strong_augment`, with the released 8-bit integer jitter and blur
(``docs/data.md``, 'Strong view' and '8-bit round trip').
"""

from __future__ import annotations

import torch

from medseg_platform.data import augment
from medseg_platform.data.advmorph import random_diffeomorphic_warp
from methods.objective import StrongView


class StrongAugmentAdapter:
    """The strong view of one training step's unlabelled batch, drawn from ``generator``.

    ``mix`` = CutMix/ClassMix/CutOut and the released 8-bit round trip of image and confidence
    (:func:`~medseg_platform.data.augment.strong_mix`); ``perturb`` = brightness/contrast jitter then Gaussian
    blur per image on 8-bit grey levels (:func:`~medseg_platform.data.augment.strong_perturb`, p = 0.5 each),
    then (once per batch with probability ``advmorph_p``) the random diffeomorphic AdvMorph warp of the images
    only. Every view is computed in float32 with autocast off: the objective calls these inside the training
    step's autocast region, and the augmented data must not depend on ``optim.amp``.
    """

    def __init__(self, generator: torch.Generator, mix: str, num_classes: int, advmorph_p: float = 0.5):
        self.generator = generator
        self.mode = mix
        self.num_classes = num_classes
        self.advmorph_p = advmorph_p

    def mix(self, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor) -> StrongView:
        """image (B, 1, H, W) in [0, 1], pseudo_label (B, H, W) int64, confidence (B, H, W) -> the mixed view."""
        with _full_precision(image):
            image, pseudo_label, confidence = augment.strong_mix(image.float(), pseudo_label, confidence.float(), self.generator,
                                                                 self.mode, num_classes=self.num_classes)
        return StrongView(image, pseudo_label, confidence)

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) mixed images in [0, 1] -> one photometric (and possibly warped) draw of them."""
        with _full_precision(image):
            image = augment.strong_perturb(image.float(), self.generator)
            if self.advmorph_p > 0:
                image = random_diffeomorphic_warp(image, self.generator, p=self.advmorph_p)
        return image

    def pretrain_views(self, image: torch.Tensor, coins: str) -> tuple[torch.Tensor, torch.Tensor]:
        """ISD views of (B, 1, H, W) images: ``(jittered, teacher)``, (B, 1, H, W) each, new tensors, with the jitter
        and blur decisions drawn per batch (``coins="per_batch"``, released) or per image
        (:func:`~medseg_platform.data.augment.pretrain_views`)."""
        with _full_precision(image):
            return augment.pretrain_views(image.float(), self.generator, coins)


def _full_precision(tensor: torch.Tensor):
    """Autocast off on ``tensor``'s device (a no-op context when no autocast region is active)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)
