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


@pytest.mark.parametrize("change", ["slices", "patch", "mode"])
def test_a_different_request_is_a_different_entry(tiny_root, change):
    ds = AcdcLayout(tiny_root)
    SliceBank(ds, ds.train_slices, (8, 8))
    slices, patch, mode = ds.train_slices, (8, 8), "nearest"
    if change == "slices":
        slices = list(reversed(ds.train_slices))
    elif change == "patch":
        patch = (6, 8)
    else:
        mode = "bicubic"
    other = SliceBank(ds, slices, patch, mode)
    assert not other.from_cache
    assert tuple(other.images.shape[-2:]) == patch


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


def test_items_of_a_shared_bank_are_copies(tiny_root):
    ds = AcdcLayout(tiny_root)
    bank = SliceBank(ds, ds.train_slices, (8, 8))
    before = bank.images.clone()
    bank[0]["image"].fill_(7.0)
    images, labels = bank.batch(torch.tensor([0, 1]))
    images.fill_(7.0)
    labels.fill_(3)
    assert torch.equal(bank.images, before)
