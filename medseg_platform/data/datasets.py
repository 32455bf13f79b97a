"""In-memory training slices for fast batching (docs/data.md, 'Batches and epochs').

Training draws 4 labelled + 4 unlabelled slices per step from at most a few thousand slices (ACDC:
1312 slices; at 256×256 that is 344 MB of float32 images and 86 MB of uint8 labels). We therefore read
every slice once, resize it to the patch size (``data.image_resize``: nearest for MONA/ARCO, scipy's cubic zoom for
ACTION, as released; docs/data.md, 'Resizing') and keep the stack in memory; a batch is then one fancy-index into
a tensor, with no per-step file I/O and no DataLoader worker processes (``benchmarks/bench_loader.py`` measures both paths).
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import torch
from torch.utils.data import Dataset

from medseg_platform.data import bank_cache
from medseg_platform.data.layout import AcdcLayout


class SliceBank(Dataset):
    """Slices of ``slice_ids`` resized to ``patch_size`` and held in memory.

    Attributes:
        images: float32 tensor (N, 1, h, w), values in [0, 1] (``image_resize`` "cubic", ACTION's spline zoom,
            overshoots it by a few hundredths at sharp edges: docs/data.md).
        labels: uint8 tensor (N, h, w) (class indices).
        slice_ids: the ids, in the given order (index i <-> slice_ids[i]).

    ``bank[i]`` returns ``{"image": (1,h,w) float32, "label": (h,w) int64, "index": i}`` so the bank also
    works with a ``torch.utils.data.DataLoader``; :meth:`batch` is the fast path.

    Banks of the same slices, patch size and resize mode in one process share their stacks through
    :mod:`medseg_platform.data.bank_cache` (``from_cache`` True when this one did not read the files): treat
    ``images`` and ``labels`` as read-only.
    """

    def __init__(
        self,
        layout: AcdcLayout,
        slice_ids: Sequence[str],
        patch_size: tuple[int, int] = (256, 256),
        image_mode: str = "nearest",
        progress: bool = False,
    ):
        from medseg_platform.data.augment import resize_to_patch

        if not slice_ids:
            raise ValueError("SliceBank needs at least one slice id")
        self.slice_ids = list(slice_ids)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        h, w = self.patch_size
        start = time.perf_counter()
        key = bank_cache.bank_key(layout.root, self.slice_ids, self.patch_size, image_mode)
        signature = bank_cache.file_signature([layout.slice_path(sid) for sid in self.slice_ids])
        cached = bank_cache.lookup(key, signature)
        self.from_cache = cached is not None
        if cached is not None:
            self.images, self.labels = cached
            self.load_seconds = time.perf_counter() - start
            return
        self.images = torch.empty((len(self.slice_ids), 1, h, w), dtype=torch.float32)
        self.labels = torch.empty((len(self.slice_ids), h, w), dtype=torch.uint8)
        for i, sid in enumerate(self.slice_ids):
            image, label = layout.read_slice(sid)
            img_t, lab_t = resize_to_patch([torch.from_numpy(image)], [torch.from_numpy(label.astype("int64"))], self.patch_size, image_mode=image_mode)
            self.images[i] = img_t[0]
            self.labels[i] = lab_t[0].to(torch.uint8)
            if progress and (i + 1) % 500 == 0:
                print(f"  loaded {i + 1}/{len(self.slice_ids)} slices ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        self.load_seconds = time.perf_counter() - start
        bank_cache.store(key, signature, self.images, self.labels)

    def __len__(self) -> int:
        return len(self.slice_ids)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index].clone(), "label": self.labels[index].long(), "index": index}

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B,1,h,w) float32, labels (B,h,w) int64)`` for a 1-D index tensor of length B."""
        return self.images[indices], self.labels[indices].long()

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """B indices drawn uniformly with replacement (the released ``RandomSampler(replacement=True)``; docs/data.md,
        'Batches and epochs')."""
        return torch.randint(len(self.slice_ids), (batch_size,), generator=generator)
