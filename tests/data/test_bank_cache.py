"""The process-wide slice-stack cache behind SliceBank: hits share the stacks, rewritten files are read again,
the byte budget holds, and a bank built from the cache equals one read from the files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_platform.data import bank_cache, layout
from medseg_platform.data.datasets import SliceBank
from medseg_platform.data.layout import AcdcLayout
from medseg_platform.errors import DataError


@pytest.fixture(autouse=True)
def empty_cache():
    bank_cache.clear()
    yield
    bank_cache.clear()


def test_second_bank_of_the_same_slices_reads_no_file(tiny_root, monkeypatch):
    ds = AcdcLayout(tiny_root)
    first = SliceBank(ds, ds.train_slices, (8, 8))
    assert not first.from_cache
    reads = []
    monkeypatch.setattr(AcdcLayout, "read_slice", lambda self, sid: reads.append(sid))
    second = SliceBank(AcdcLayout(tiny_root), ds.train_slices, (8, 8))
    assert second.from_cache and reads == []
    assert second.images is first.images and second.labels is first.labels
    assert bank_cache.cached_bytes() == first.images.nbytes + first.labels.nbytes


def test_cached_bank_equals_a_bank_read_from_the_files(tiny_root):
    ds = AcdcLayout(tiny_root)
    SliceBank(ds, ds.train_slices, (8, 8), "bicubic")
    cached = SliceBank(ds, ds.train_slices, (8, 8), "bicubic")
    bank_cache.clear()
    fresh = SliceBank(ds, ds.train_slices, (8, 8), "bicubic")
    assert cached.from_cache and not fresh.from_cache
    assert torch.equal(cached.images, fresh.images) and torch.equal(cached.labels, fresh.labels)
    # and both equal the files resized one by one, outside SliceBank
    from medseg_platform.data.augment import resize_to_patch

    for i, sid in enumerate(ds.train_slices):
        image, label = ds.read_slice(sid)
        img_t, lab_t = resize_to_patch([torch.from_numpy(image)], [torch.from_numpy(label.astype("int64"))], (8, 8),
                                       image_mode="bicubic")
        assert torch.equal(cached.images[i], img_t[0]) and torch.equal(cached.labels[i], lab_t[0].to(torch.uint8))


def test_the_same_slice_ids_under_another_root_are_another_entry(tmp_path):
    from tests.conftest import make_tiny_dataset

    first = make_tiny_dataset(tmp_path / "a", seed=0)
    second = make_tiny_dataset(tmp_path / "b", seed=1)
    a, b = AcdcLayout(first), AcdcLayout(second)
    assert a.train_slices == b.train_slices
    bank_a = SliceBank(a, a.train_slices, (8, 8))
    bank_b = SliceBank(b, b.train_slices, (8, 8))
    assert not bank_b.from_cache and not torch.equal(bank_a.images, bank_b.images)


@pytest.mark.parametrize("change", ["slices", "patch", "mode"])
def test_a_different_request_is_a_different_entry(tiny_root, change):
    ds = AcdcLayout(tiny_root)
    first = SliceBank(ds, ds.train_slices, (8, 8))
    slices, patch, mode = ds.train_slices, (8, 8), "nearest"
    if change == "slices":
        slices = list(reversed(ds.train_slices))
    elif change == "patch":
        patch = (6, 8)
    else:
        mode = "bicubic"
    other = SliceBank(ds, slices, patch, mode)
    assert not other.from_cache
    assert other.images is not first.images
    if change == "slices":
        assert torch.equal(other.images, first.images.flip(0))
    elif change == "patch":
        assert tuple(other.images.shape[-2:]) == patch
    else:
        assert not torch.equal(other.images, first.images)


def test_a_rewritten_slice_file_is_read_again(tiny_root):
    ds = AcdcLayout(tiny_root)
    before = SliceBank(ds, ds.train_slices, (12, 10))
    sid = ds.train_slices[0]
    image, label = ds.read_slice(sid)
    case, k = sid.rsplit("_slice_", 1)
    layout.write_slice(tiny_root, case, int(k), np.zeros_like(image), label)  # a new file under the same name
    after = SliceBank(ds, ds.train_slices, (12, 10))
    assert not after.from_cache
    assert after.images[0].abs().sum() == 0 and before.images[0].abs().sum() > 0
    assert torch.equal(after.images[1:], before.images[1:])


@pytest.mark.parametrize("mtime", ["changed", "set back"])
def test_a_touched_slice_file_is_read_again(tiny_root, mtime):
    """Same inode, size and content; only the file's times change (its modification time, or only its status-change
    time when the modification time is set back as ``cp -p`` or ``touch -d`` do), and that alone invalidates it."""
    import os
    import time

    ds = AcdcLayout(tiny_root)
    SliceBank(ds, ds.train_slices, (8, 8))
    path = ds.slice_path(ds.train_slices[1])
    before = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    if mtime == "set back":
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert (after.st_mtime_ns == before.st_mtime_ns) == (mtime == "set back")
    assert not SliceBank(ds, ds.train_slices, (8, 8)).from_cache
    assert SliceBank(ds, ds.train_slices, (8, 8)).from_cache


def test_a_missing_file_is_reported_not_served_from_the_cache(tiny_root):
    ds = AcdcLayout(tiny_root)
    SliceBank(ds, ds.train_slices, (8, 8))
    ds.slice_path(ds.train_slices[2]).unlink()
    with pytest.raises(DataError, match="file is missing"):
        SliceBank(ds, ds.train_slices, (8, 8))


def test_least_recently_used_entries_go_beyond_the_budget(tiny_root, monkeypatch):
    ds = AcdcLayout(tiny_root)
    one = SliceBank(ds, ds.train_slices, (8, 8))
    entry_bytes = one.images.nbytes + one.labels.nbytes
    monkeypatch.setattr(bank_cache, "CACHE_BYTES", 2 * entry_bytes)
    SliceBank(ds, ds.train_slices[::-1], (8, 8))  # second entry: both fit
    assert SliceBank(ds, ds.train_slices, (8, 8)).from_cache  # touches the first: the second is now the oldest
    SliceBank(ds, ds.train_slices[1:] + ds.train_slices[:1], (8, 8))  # third entry evicts the second
    assert bank_cache.cached_bytes() <= 2 * entry_bytes
    assert SliceBank(ds, ds.train_slices, (8, 8)).from_cache
    assert not SliceBank(ds, ds.train_slices[::-1], (8, 8)).from_cache


def test_a_stack_over_the_budget_is_not_kept(tiny_root, monkeypatch):
    monkeypatch.setattr(bank_cache, "CACHE_BYTES", 16)
    ds = AcdcLayout(tiny_root)
    SliceBank(ds, ds.train_slices, (8, 8))
    assert bank_cache.cached_bytes() == 0
    assert not SliceBank(ds, ds.train_slices, (8, 8)).from_cache


def test_items_and_batches_of_a_shared_bank_are_copies(tiny_root):
    ds = AcdcLayout(tiny_root)
    owner = SliceBank(ds, ds.train_slices, (8, 8))
    bank = SliceBank(ds, ds.train_slices, (8, 8))
    assert bank.from_cache and bank.images is owner.images
    images_before, labels_before = bank.images.clone(), bank.labels.clone()
    item = bank[0]
    item["image"].fill_(7.0)
    item["label"].fill_(3)
    images, labels = bank.batch(torch.tensor([0, 1]))
    images.fill_(7.0)
    labels.fill_(3)
    assert torch.equal(owner.images, images_before) and torch.equal(owner.labels, labels_before)
