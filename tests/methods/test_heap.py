"""methods/heap.py: glibc's malloc_trim where it exists, nothing elsewhere."""

import ctypes.util
import platform

import pytest

from methods import heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_free_heap_calls_malloc_trim_on_glibc():
    heap._malloc_trim.cache_clear()
    assert heap.release_free_heap() is True


def test_release_free_heap_does_nothing_without_a_c_library(monkeypatch):
    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    try:
        assert heap.release_free_heap() is False
    finally:
        heap._malloc_trim.cache_clear()
