"""Tiny synthetic segmentation batches shared by the objective tests."""

from __future__ import annotations

import torch

from methods.objective import Batch, IdentityStrongAugment


def square_batch(generator: torch.Generator, b_l: int = 4, b_u: int = 4, size: int = 16, augment=None) -> Batch:
    """Noisy dark images (B, 1, size, size) with a bright square of side in [size/4, size/2), labelled 1."""

    def images(n):
        image = torch.rand(n, 1, size, size, generator=generator) * 0.3
        label = torch.zeros(n, size, size, dtype=torch.int64)
        for i in range(n):
            side = int(torch.randint(size // 4, size // 2, (1,), generator=generator))
            top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
            image[i, 0, top:top + side, left:left + side] += 0.7
            label[i, top:top + side, left:left + side] = 1
        return image, label

    labelled, label = images(b_l)
    unlabelled, _ = images(b_u)
    return Batch(labelled, label, unlabelled, augment if augment is not None else IdentityStrongAugment())
