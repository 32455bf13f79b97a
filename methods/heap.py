"""Hand the C heap's free pages back to the operating system (docs/methods.md, 'L_nn after the backward pass').

On the CPU, PyTorch allocates tensors with the C allocator. glibc serves blocks below its mmap threshold (at most
32 MiB) from its heap and keeps them there when they are freed, so after a paper-size MONA backward pass the
process stays at 3.2-3.7 GiB resident although about 1.1 GiB is live. A later allocation of larger blocks (a
130 MB full-resolution NN pool row) is mapped fresh on top of that. :func:`release_free_heap` calls glibc's
``malloc_trim(0)``, which returns the free pages anywhere in the heap; the next step faults them in again.
Where the C library has no ``malloc_trim`` (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``int malloc_trim(size_t pad)``, or None where the C library lacks it."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; True where ``malloc_trim`` exists (whether or not it freed
    anything), False where it does not. Costs a walk of the heap (milliseconds) plus the page faults of
    reusing the memory later."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
