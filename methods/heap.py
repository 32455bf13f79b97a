"""Hand the C heap's free pages back to the operating system (docs/methods.md, 'L_nn after the backward pass').

On the CPU, PyTorch allocates tensors with the C allocator. glibc serves blocks below its mmap threshold (at most
32 MiB) from its heap and keeps them there when they are freed, so after a paper-size MONA backward pass the
process stays at 3.2-3.7 GiB resident although about 1.1 GiB is live. A later allocation of larger blocks (a
130 MB full-resolution NN pool row) is mapped fresh on top of that. :func:`release_free_heap` calls glibc's
``malloc_trim(0)``, which returns the free pages anywhere in the heap; the next step faults them in again.
Where the C library has no ``malloc_trim`` (macOS, musl) it does nothing.

:func:`keep_freed_blocks` is the other direction, for the CPU training process: glibc starts with a 128 KiB mmap
threshold that it raises as mapped blocks are freed, and trims the heap's top when more than twice that threshold
is free there. A training step frees and asks again for the same multi-MiB blocks every step, so some of them are
mapped (or trimmed) and faulted in afresh each time, which the kernel pays by zeroing every page. Fixed thresholds
(blocks up to 32 MiB from the heap, up to 256 MiB of free memory kept at its top) end that for the quick
profile's sizes; the paper size's larger blocks are still mapped and unmapped as before, so its peak memory does
not grow (docs/methods.md, 'Freed blocks kept by the C allocator').
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


def _libc_function(name: str, argtypes: list, restype):
    """The C library's function ``name`` with its ctypes signature, or None where the library or the function is
    missing."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``int malloc_trim(size_t pad)``, or None where the C library lacks it."""
    return _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``int mallopt(int param, int value)``, or None where the C library lacks it."""
    return _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


#: glibc's ``mallopt`` parameter numbers (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (glibc's own ceiling for its dynamic threshold).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top up to this size stays mapped.
TRIM_THRESHOLD = 256 << 20


def keep_freed_blocks() -> bool:
    """Fix glibc's thresholds for this process: blocks up to :data:`MMAP_THRESHOLD` are served from the heap and
    up to :data:`TRIM_THRESHOLD` of free memory at its top is kept, so a step's freed blocks are reused by the
    next step instead of being faulted in afresh. True where glibc accepted both, False elsewhere (other C
    libraries: nothing changes). Process-wide and permanent; an explicit :func:`release_free_heap` still trims."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; True where ``malloc_trim`` exists (whether or not it freed
    anything), False where it does not. Costs a walk of the heap (milliseconds) plus the page faults of
    reusing the memory later."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
