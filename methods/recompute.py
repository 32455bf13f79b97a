"""Keep a large, cheaply rebuilt tensor out of autograd's saved tensors (docs/methods.md, 'Bank negatives
are gathered again in backward').

MONA/ARCO's contrast multiplies each anchor by its gathered memory-bank negatives; for the anchors' gradient
autograd keeps those negatives until backward: 256 x 512 x 496 floats = 260 MB per contrasted class at the
paper size, about 1 GB a step. They are a gather from the banks with indices the step already holds, and
the banks do not change between the loss and its backward (they are written before the contrast, as
released), so :func:`rebuilt_in_backward` stores only the indices' closure and gathers again when backward
asks: the same numbers, a copy of one class's negatives alive at a time.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

_REBUILT = object()  # marks a saved tensor that unpacks by rebuilding


@contextlib.contextmanager
def rebuilt_in_backward(tensor: torch.Tensor, rebuild: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Inside the block, a tensor autograd saves for backward that lies in ``tensor``'s storage (``tensor`` or
    a view of it) is not kept: backward calls ``rebuild()``, which must return a tensor equal to ``tensor``
    with its layout (contiguous if ``tensor`` is), and reads the same view of it.

    Only a reference to ``rebuild`` is kept, not to ``tensor``. ``rebuild`` must read state that nothing
    changes before backward.
    """
    storage = tensor.untyped_storage().data_ptr()
    base_offset = tensor.storage_offset()
    device = tensor.device

    def pack(saved: torch.Tensor):
        if saved.device == device and saved.untyped_storage().data_ptr() == storage:
            return (_REBUILT, tuple(saved.shape), tuple(saved.stride()), saved.storage_offset() - base_offset)
        # detached: an op's own output saved with its grad_fn would form a cycle (output -> grad_fn -> output)
        # that Python's collector cannot free, keeping the whole graph alive if backward never runs; the
        # detached tensor shares storage and version counter, and autograd needs only its values
        return saved.detach()

    def unpack(packed):
        if isinstance(packed, tuple) and packed[0] is _REBUILT:
            _, shape, stride, offset = packed
            fresh = rebuild()
            return fresh.as_strided(shape, stride, fresh.storage_offset() + offset)
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
