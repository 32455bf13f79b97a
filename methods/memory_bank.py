"""Per-class FIFO memory banks of negative keys for MONA/ARCO's U2PL contrast (docs/mona.md, 'Memory banks').

As released (``M:code/train_arco_2d.py:147-154``, ``dequeue_and_enqueue``), each class c keeps a list of
teacher representations of "unreliable" pixels: new keys are appended, and when the list reaches the
capacity only the newest ``capacity`` keys are kept (30 000 per class, 50 000 for background). Every bank
starts with one all-zero vector, which survives until the bank first overflows (docs/mona.md, 'Negative
mask') and gives cosine 0 in the loss.

Differences from the release, none of which changes what the loss sees:

* the banks are registered buffers on the module's device (the release keeps them on the CPU and copies
  them to the GPU every step; docs/mona.md, 'Cost of the released code'), so ``state_dict`` checkpoints them;
* a ring buffer replaces the concatenate-and-truncate list: an enqueue writes at most two contiguous
  slices (no Python loop over keys, no reallocation). :meth:`ClassMemoryBank.keys` returns the contents in
  FIFO order (oldest first), the order the ARCO samplers stratify over (docs/arco.md, 'What ARCO changes');
  :meth:`~ClassMemoryBank.gather` reads FIFO positions straight from the ring without copying the bank;
* ``init="empty"`` starts every bank empty, a fix for the zero vector (selected explicitly; the default
  ``"zero"`` is as released);
* :meth:`~ClassMemoryBank.gather_transient` reads into one reused scratch buffer for readers that keep nothing
  (the contrast, whose backward gathers again), the same keys without a fresh block per gather.

Multi-worker (DDP) training: each rank keeps its own banks (the release all-gathers keys before
enqueueing in U2PL, not in MONA's single-GPU scripts); do not let DDP broadcast these buffers.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from methods.errors import ConfigError, DataError

INITS = ("zero", "empty")


class ClassMemoryBank(nn.Module):
    """Per-class FIFO banks of D-dim keys (MONA/ARCO; docs/mona.md, 'Memory banks').

    Args:
        num_classes: C >= 1 (background included).
        dim: key dimension D >= 1 (496 as released).
        capacities: one int >= 1 for every class, or C ints (as released ``(50000, 30000, 30000, 30000)``).
        init: ``"zero"`` (as released: each bank starts with one all-zero key that survives until the bank
            first overflows) or ``"empty"`` (a fix: banks start empty).
        dtype: storage dtype (float32 default); keys are cast on enqueue.
        device: initial device; ``.to(device)`` moves the banks with the model.

    State: buffers ``bank_<c>`` float (capacity_c, D) (ring storage), ``pointer`` int64 (C,) (next write
    slot) and ``count`` int64 (C,) (fill level). Python mirrors of pointer and count make every method
    free of host-device syncs; they are refreshed when a state dict is loaded.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        capacities: Sequence[int] | int,
        init: str = "zero",
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"ClassMemoryBank: num_classes must be an int >= 1, got {num_classes!r} (the model's class count)")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"ClassMemoryBank: dim must be an int >= 1, got {dim!r} (the representation width)")
        caps = (capacities,) * num_classes if isinstance(capacities, int) and not isinstance(capacities, bool) else tuple(capacities)
        if len(caps) != num_classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in caps):
            raise ConfigError(
                f"ClassMemoryBank: capacities must be an int >= 1 or {num_classes} ints >= 1, got {capacities!r} "
                f"(set bank_capacity_background / bank_capacity_foreground >= 1)"
            )
        if init not in INITS:
            raise ConfigError(f"ClassMemoryBank: init {init!r} is not a choice (use one of {list(INITS)})")
        self.num_classes = num_classes
        self.dim = dim
        self.capacities = caps
        self.init = init
        for c, cap in enumerate(caps):
            self.register_buffer(f"bank_{c}", torch.zeros(cap, dim, dtype=dtype, device=device))
        start = 1 if init == "zero" else 0  # the zero key already sits in slot 0 (the buffer is zeros)
        self._count = [start] * num_classes
        self._pointer = [start % cap for cap in caps]
        self._writes = 0  # see `writes`
        self._scratch: torch.Tensor | None = None  # see `gather_transient`
        self.register_buffer("pointer", torch.tensor(self._pointer, dtype=torch.int64, device=device))
        self.register_buffer("count", torch.tensor(self._count, dtype=torch.int64, device=device))

    # -- helpers ------------------------------------------------------------------------------------------

    def _check_class(self, class_index: int) -> int:
        if isinstance(class_index, bool) or not isinstance(class_index, int) or not 0 <= class_index < self.num_classes:
            raise DataError(
                f"ClassMemoryBank: class_index must be an int in [0, {self.num_classes}), got {class_index!r} "
                f"(labels must lie in [0, num_classes))"
            )
        return class_index

    def _bank(self, class_index: int) -> torch.Tensor:
        return getattr(self, f"bank_{class_index}")

    def _start(self, class_index: int) -> int:
        """Ring slot of the oldest key."""
        return (self._pointer[class_index] - self._count[class_index]) % self.capacities[class_index]

    # -- API ----------------------------------------------------------------------------------------------

    def size(self, class_index: int) -> int:
        """Fill level n_c of class ``class_index`` (a host int; no sync)."""
        return self._count[self._check_class(class_index)]

    def capacity(self, class_index: int) -> int:
        return self.capacities[self._check_class(class_index)]

    @property
    def writes(self) -> int:
        """How many times the bank's contents have changed (enqueues and state-dict loads), a host int: a reader
        that gathers again later (``methods.recompute``) compares it to know the keys are still the same."""
        return self._writes

    @torch.no_grad()
    def enqueue(self, class_index: int, keys: torch.Tensor) -> None:
        """Append ``keys`` float (M, D) to class ``class_index``'s bank, dropping the oldest beyond capacity.

        Keys are detached and cast to the bank's device and dtype. M may be 0 (no-op) or exceed the
        capacity (only the newest ``capacity`` keys are kept, as released). At most two slice copies.
        """
        c = self._check_class(class_index)
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise DataError(f"ClassMemoryBank.enqueue: keys must be (M, {self.dim}), got {tuple(keys.shape)} (rows of the bank's width)")
        m = keys.shape[0]
        if m == 0:
            return
        bank = self._bank(c)
        cap = self.capacities[c]
        keys = keys.detach().to(device=bank.device, dtype=bank.dtype)
        if m >= cap:
            bank.copy_(keys[m - cap:])
            pointer, count = 0, cap
        else:
            pointer = self._pointer[c]
            end = pointer + m
            if end <= cap:
                bank[pointer:end].copy_(keys)
            else:
                split = cap - pointer
                bank[pointer:].copy_(keys[:split])
                bank[: end - cap].copy_(keys[split:])
            pointer, count = end % cap, min(self._count[c] + m, cap)
        self._pointer[c], self._count[c] = pointer, count
        self._writes += 1
        self.pointer[c] = pointer  # a device-side fill, no sync
        self.count[c] = count

    def keys(self, class_index: int) -> torch.Tensor:
        """The current keys of class ``class_index`` in FIFO order (oldest first): float (n_c, D).

        A view of the storage while the contents are contiguous in the ring (always before the first
        wrap-around; valid until the next :meth:`enqueue` — clone it to keep it), otherwise a new tensor
        (one copy of the bank). With ``init="zero"`` the first row is the zero key until the first overflow.
        """
        c = self._check_class(class_index)
        bank, start, count = self._bank(c), self._start(c), self._count[c]
        if start + count <= self.capacities[c]:
            return bank[start:start + count]
        return torch.cat([bank[start:], bank[: start + count - self.capacities[c]]])

    def gather(self, class_index: int, positions: torch.Tensor) -> torch.Tensor:
        """Keys at FIFO positions (0 = oldest), read from the ring without copying the bank.

        positions: int64 of any shape with values in [0, n_c) (not checked: that would need a sync), e.g.
        from ``methods.samplers.sample_indices(n_c, ...)``. Returns float (*positions.shape, D), detached.
        """
        c = self._check_class(class_index)
        bank = self._bank(c)
        return bank.index_select(0, self._ring(c, positions)).view(*positions.shape, self.dim)

    def gather_transient(self, class_index: int, positions: torch.Tensor) -> torch.Tensor:
        """:meth:`gather` into one scratch buffer that this bank reuses: the result is valid only until the
        next :meth:`gather_transient` call on this bank (of any class), which overwrites it.

        For a reader that consumes the keys at once and keeps no reference, as MONA/ARCO's contrast does (its
        autograd graph gathers them again in backward, ``methods.recompute``). The numbers are :meth:`gather`'s;
        only the output block is reused, because on the CPU a fresh (num_anchors x num_negatives, D) block costs
        more than the copy into it (docs/methods.md, 'Bank negatives are gathered into a reused buffer').
        The scratch grows to the largest request and follows the bank's device and dtype; it is not part of
        ``state_dict``.
        """
        c = self._check_class(class_index)
        bank = self._bank(c)
        ring = self._ring(c, positions)
        size = ring.numel() * self.dim
        scratch = self._scratch
        if scratch is None or scratch.device != bank.device or scratch.dtype != bank.dtype or scratch.numel() < size:
            scratch = self._scratch = torch.empty(size, device=bank.device, dtype=bank.dtype)
        out = scratch[:size].view(ring.numel(), self.dim)
        torch.index_select(bank, 0, ring, out=out)
        return out.view(*positions.shape, self.dim)

    def _ring(self, c: int, positions: torch.Tensor) -> torch.Tensor:
        """Ring slots (flat int64) of FIFO positions of class ``c``."""
        return torch.remainder(positions.to(self._bank(c).device) + self._start(c), self.capacities[c]).flatten()

    # -- checkpoints --------------------------------------------------------------------------------------

    def _refresh_mirrors(self) -> None:
        pointer, count = self.pointer.tolist(), self.count.tolist()
        for c, cap in enumerate(self.capacities):
            if not (0 <= count[c] <= cap and 0 <= pointer[c] < cap):
                raise DataError(
                    f"ClassMemoryBank: loaded state has pointer={pointer[c]}, count={count[c]} for class {c} "
                    f"of capacity {cap} (the checkpoint is from another bank configuration or corrupt; start over)"
                )
        self._pointer, self._count = pointer, count
        self._writes += 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_mirrors()  # one host read per checkpoint load

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, capacities={self.capacities}, init={self.init!r}"
