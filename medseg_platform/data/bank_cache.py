"""A process-wide cache of resized slice stacks, so that the trials one worker process runs one after another
read a dataset's slice files once (docs/data.md, 'Batches and epochs').

A study runs its trials in a few long-lived Ray worker processes (one per concurrent trial); each trial builds
its :class:`~medseg_platform.data.datasets.SliceBank` of the same slices at the same patch size. Reading and
resizing 466 slice files of the quick phantom takes about 1.5-2 s per trial on a 2-core machine, about 3% of the
default study's trial time (``benchmarks/RESULTS.md``, 'Slice stacks cached per worker process').

An entry is the (N, 1, h, w) float32 image stack and the (N, h, w) uint8 label stack of one ordered list of
slice ids at one patch size and image resize mode. Banks built from an entry **share** its tensors; nothing
writes into a bank's stacks (batches are copies made by indexing with a tensor). An entry is valid while every
one of its files has the inode, size, modification time and status-change time it had when it was read (one
``stat`` per file per lookup), so a dataset written again (``medseg data phantom`` into the same folder, a re-run
converter, a file edited in place or touched) is read again. Entries are evicted least recently used first beyond
:data:`CACHE_BYTES`; a stack larger than that is never cached (at the paper's label fractions, ACDC's unlabelled
slices at 256 x 256 are about 420 MB, read once per paper-size trial of 30 000 steps).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

CACHE_BYTES = 256 * 2**20
"""Most bytes of image and label stacks one process keeps (the quick phantom's stacks are a few MB)."""

Key = tuple[str, tuple[str, ...], tuple[int, int], str]


@dataclass(frozen=True)
class _Entry:
    images: torch.Tensor  # (N, 1, h, w) float32
    labels: torch.Tensor  # (N, h, w) uint8
    signature: tuple[tuple[int, int, int, int], ...]  # (inode, size, mtime_ns, ctime_ns) per file, in slice order

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes


_entries: OrderedDict[Key, _Entry] = OrderedDict()
_lock = threading.Lock()


def bank_key(root: Path, slice_ids: Sequence[str], patch_size: tuple[int, int], image_mode: str) -> Key:
    """The cache key of one slice stack: dataset root, slice ids in order, patch size (h, w), image resize mode."""
    return str(root), tuple(slice_ids), (int(patch_size[0]), int(patch_size[1])), str(image_mode)


def file_signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int, int], ...] | None:
    """``(inode, size, mtime_ns, ctime_ns)`` of each file, or None when one cannot be stat'ed (then nothing is
    cached and the reader reports the missing file). The status-change time catches a same-size rewrite whose
    modification time was set back (``cp -p``, ``touch -d``)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def lookup(key: Key, signature: tuple | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached ``(images, labels)`` of ``key`` if its files still have ``signature``, else None (a stale
    entry is dropped)."""
    if signature is None:
        return None
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            return None
        if entry.signature != signature:
            del _entries[key]
            return None
        _entries.move_to_end(key)
        return entry.images, entry.labels


def store(key: Key, signature: tuple | None, images: torch.Tensor, labels: torch.Tensor) -> bool:
    """Keep ``(images, labels)`` under ``key``; evicts the least recently used entries beyond :data:`CACHE_BYTES`.
    Returns False (nothing kept) when the stacks alone exceed the budget or the files could not be stat'ed."""
    if signature is None:
        return False
    entry = _Entry(images, labels, signature)
    if entry.nbytes > CACHE_BYTES:
        return False
    with _lock:
        _entries.pop(key, None)
        _entries[key] = entry
        while _held_bytes() > CACHE_BYTES:
            _entries.popitem(last=False)
    return True


def clear() -> None:
    """Forget every entry (tests; a process that wants its memory back)."""
    with _lock:
        _entries.clear()


def cached_bytes() -> int:
    """Bytes held by the cache now."""
    with _lock:
        return _held_bytes()


def _held_bytes() -> int:
    """Bytes of every entry (the caller holds the lock)."""
    return sum(e.nbytes for e in _entries.values())
