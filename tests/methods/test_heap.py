"""methods/heap.py: glibc's malloc_trim and mallopt where they exist, nothing elsewhere."""

import ctypes.util
import platform

import pytest

from methods import heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_free_heap_calls_malloc_trim_on_glibc(monkeypatch):
    heap._malloc_trim.cache_clear()
    real = heap._malloc_trim()
    assert real is not None
    calls = []

    def recording(pad):
        calls.append((pad,))
        return real(pad)

    monkeypatch.setattr(heap, "_malloc_trim", lambda: recording)
    assert heap.release_free_heap() is True
    assert calls == [(0,)]  # it returned True without trimming and passed (the tests review)


@pytest.mark.parametrize("call, loader", [("release_free_heap", "_malloc_trim"), ("keep_freed_blocks", "_mallopt")])
def test_heap_functions_do_nothing_without_a_c_library(monkeypatch, call, loader):
    getattr(heap, loader).cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    try:
        assert getattr(heap, call)() is False
    finally:
        getattr(heap, loader).cache_clear()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_blocks_sets_both_thresholds_on_glibc(monkeypatch):
    calls = []
    real = heap._mallopt()
    assert real is not None

    def recording(param, value):
        calls.append((param, value))
        return real(param, value)

    monkeypatch.setattr(heap, "_mallopt", lambda: recording)
    assert heap.keep_freed_blocks() is True
    assert calls == [(heap._M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD), (heap._M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD)]


def test_keep_freed_blocks_reports_a_refused_threshold(monkeypatch):
    monkeypatch.setattr(heap, "_mallopt", lambda: lambda param, value: int(param != heap._M_TRIM_THRESHOLD))
    assert heap.keep_freed_blocks() is False
