"""MONA's full-resolution nearest-neighbour pool Π stored by what determines its rows (docs/methods.md,
'A compact full-resolution NN pool'; the loss: docs/mona.md, 'Nearest-neighbour loss').

As released, each of the K = 36 pool rows is a teacher representation ``FE_t(pyramid)`` of one unlabelled
image, flattened and L2-normalised: 496·H·W floats, about 130 MB a row and 4.7 GB a pool at 256 x 256.
``FE_t`` is linear and the pyramid is 496 channels at 1/256 + ... + 1 of the pixels (about 8 MB at
256 x 256), so :class:`CompactNNPool` keeps, per row, the teacher pyramid of its image and the flattened
``FE_t`` parameters of the step that enqueued it (``FE_t`` moves by EMA every step), and rebuilds a row
only where L_nn reads it, one row at a time. Rows still at their random initialisation keep only their
seed: row k of a fresh pool is ``normalize(randn(F, generator seeded base + k))`` (:func:`random_row`),
on the dense and the compact storage alike.

The numbers are those of the dense pool up to float rounding (``tests/methods/test_dense_equivalence.py``);
the peak memory of a step that reads the pool drops by about the dense pool (one rebuilt row is alive at a
time).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from methods.errors import ConfigError, DataError

#: Highest base seed of a pool's random rows (drawn once from the global RNG when the pool is created).
SEED_RANGE = 2 ** 62


def draw_base_seed(device: torch.device) -> int:
    """The base seed of a new full-resolution pool: one draw from the global RNG of ``device`` (the dense and
    the compact storage draw it at the same point, so the training RNG streams agree)."""
    return int(torch.randint(SEED_RANGE, (), device=device))


def random_row(seed: int, features: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One pool row at its initialisation: N(0, 1) from its own generator, L2-normalised -> (features,).

    The numbers depend on the device's generator (CPU and CUDA draw different ones from one seed): a compact
    pool keeps only the seed of such a row, so a checkpoint moved between devices rebuilds it differently.
    Only rows not yet overwritten are affected: with the released logging, every row is written by the fill
    steps before the first logged step reads the pool."""
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return F.normalize(torch.randn(features, generator=generator, device=device, dtype=dtype), dim=0)


def random_rows(base_seed: int, count: int, features: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``count`` rows of a fresh dense pool: row k = :func:`random_row` (base_seed + k) -> (count, features)."""
    return torch.stack([random_row(base_seed + k, features, device, dtype) for k in range(count)])


class CompactNNPool(nn.Module):
    """K pool rows as (teacher pyramid of one image, flattened ``FE_t`` parameters) or a random-row seed.

    Buffers (allocated by :meth:`initialise` at the first step, when the image size is known; all in
    ``state_dict``): ``seeds`` int64 (K,) (>= 0: the row is :func:`random_row` of that seed; -1: built from
    the stored inputs), ``fe`` (K, P) with P the number of ``FE_t`` parameters, and ``level0`` ..
    ``level{L-1}`` (K, c_i, h_i, w_i), the stored pyramid levels.

    ``fe_module`` (the ``FE_t`` network, passed to the readers) supplies the architecture; its own weights
    are never read here.
    """

    def __init__(self, capacity: int, levels: int) -> None:
        super().__init__()
        self.capacity, self.levels = int(capacity), int(levels)
        self.register_buffer("seeds", torch.empty(0, dtype=torch.int64))
        self.register_buffer("fe", torch.empty(0))
        for i in range(self.levels):
            self.register_buffer(f"level{i}", torch.empty(0))

    # -- storage ---------------------------------------------------------------------------------------------

    def level(self, i: int) -> torch.Tensor:
        return getattr(self, f"level{i}")

    @property
    def initialised(self) -> bool:
        return self.seeds.numel() > 0

    def initialise(self, base_seed: int, pyramid: Sequence[torch.Tensor], fe_module: nn.Module, dtype: torch.dtype) -> None:
        """Every row at its random initialisation (seeds base_seed + k); storage in ``dtype`` (the images'),
        shaped like one image of ``pyramid`` and like ``fe_module``'s parameters."""
        if any(True for _ in fe_module.buffers()):
            raise ConfigError(
                f"CompactNNPool: {type(fe_module).__name__} has buffers, which a row rebuilt from stored weights would "
                f"read at their current values (use a buffer-free FE, or nn_pool_resolution=g or representation='dense')"
            )
        device = pyramid[0].device
        self.seeds = base_seed + torch.arange(self.capacity, device=device)
        self.fe = torch.zeros(self.capacity, _parameter_count(fe_module), device=device, dtype=dtype)
        for i, level in enumerate(pyramid):
            setattr(self, f"level{i}", torch.zeros((self.capacity, *level.shape[1:]), device=device, dtype=dtype))

    def check_pyramid(self, pyramid: Sequence[torch.Tensor], where: str) -> None:
        stored = [tuple(self.level(i).shape[1:]) for i in range(self.levels)]
        given = [tuple(level.shape[1:]) for level in pyramid]
        if stored != given:
            raise DataError(
                f"{where}: the NN pool holds pyramids {stored} but this step gives {given} (the image size changed: "
                f"give all images one size or set nn_pool_resolution to an int)"
            )

    @torch.no_grad()
    def write(self, slots: torch.Tensor, pyramid: Sequence[torch.Tensor], fe_module: nn.Module) -> None:
        """Rows ``slots`` (int64 (B,)) := the B images of ``pyramid`` under ``fe_module``'s current weights."""
        for i, level in enumerate(pyramid):
            self.level(i).index_copy_(0, slots, level.detach().to(self.level(i).dtype))
        flat = torch.cat([p.detach().reshape(-1) for p in fe_module.parameters()]).to(self.fe.dtype)
        self.fe.index_copy_(0, slots, flat.unsqueeze(0).expand(slots.shape[0], -1))
        self.seeds.index_fill_(0, slots, -1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "seeds")
        if stored is not None and stored.numel() not in (0, self.capacity):
            raise ConfigError(
                f"CompactNNPool: the checkpoint holds {stored.numel()} pool rows but nn_pool_capacity is {self.capacity} "
                f"(resume with the configuration the checkpoint was written with)"
            )
        for name, value in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != value.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=value.device)  # lazily allocated
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- reading ---------------------------------------------------------------------------------------------

    def row(self, k: int, fe_module: nn.Module, features: int, seed: int) -> torch.Tensor:
        """Row k as the dense pool holds it -> (features,), L2-normalised. ``seed``: ``seeds[k]``, read to the
        host by the caller once for all rows (one sync instead of one per row)."""
        if seed >= 0:
            return random_row(seed, features, self.fe.device, self.fe.dtype)
        params, start = {}, 0
        for name, p in fe_module.named_parameters():
            params[name] = self.fe[k, start:start + p.numel()].view_as(p)
            start += p.numel()
        maps = functional_call(fe_module, params, ([self.level(i)[k:k + 1] for i in range(self.levels)],))
        return F.normalize(maps.flatten(1), dim=1)[0]

    @torch.no_grad()
    def dots(self, rows: Sequence[torch.Tensor], fe_module: nn.Module) -> list[torch.Tensor]:
        """``x @ Π^T`` for each x (B, F) of ``rows`` -> list of (B, K), rebuilding one pool row at a time."""
        features = rows[0].shape[1]
        out = [x.new_empty(x.shape[0], self.capacity) for x in rows]
        seeds = self.seeds.tolist()
        for k in range(self.capacity):
            pool_row = self.row(k, fe_module, features, seeds[k])
            for x, o in zip(rows, out):
                o[:, k] = x.detach() @ pool_row.to(x.dtype)
        return out

    @torch.no_grad()
    def mean_rows(self, index: torch.Tensor, fe_module: nn.Module, features: int) -> torch.Tensor:
        """``mean_j Π[index[b, j]]`` for int64 index (B, k) -> (B, features), one distinct row built at a time."""
        out = torch.zeros(index.shape[0], features, device=self.fe.device, dtype=self.fe.dtype)
        seeds = self.seeds.tolist()
        for k in torch.unique(index).tolist():
            weight = (index == k).sum(1).to(out.dtype) / index.shape[1]          # (B,)
            out.addr_(weight, self.row(k, fe_module, features, seeds[k]))
        return out

    @torch.no_grad()
    def materialise(self, fe_module: nn.Module, channels: int) -> torch.Tensor:
        """The dense (K, channels·H·W) pool (tests and inspection; 4.7 GB at the paper size)."""
        height, width = self.level(self.levels - 1).shape[2:]
        seeds = self.seeds.tolist()
        return torch.stack([self.row(k, fe_module, channels * height * width, seeds[k]) for k in range(self.capacity)])


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compact_nn_loss(student: torch.Tensor, teacher: torch.Tensor, pool: CompactNNPool, fe_module: nn.Module, topk: int,
                    grad: str) -> torch.Tensor:
    """:func:`methods.mona.nn_loss` on a :class:`CompactNNPool` (``fe_module``: the ``FE_t`` network whose
    architecture rebuilds the rows; the other arguments as there).

    * ``"as_coded_none"``: ``d^s`` and ``d^t`` from one pass over the rows; no gradient.
    * ``"student_pull"``: neighbours from ``d^t``; then ``mean_b (2 - 2 u_b · mean_k Π_k)``, which equals
      ``mean_{b,k} (2 - 2 u_b · Π_k)`` and has the same gradient in ``u`` (it is linear in ``u``).
    """
    if grad not in ("as_coded_none", "student_pull"):
        raise ConfigError(f"compact_nn_loss: grad {grad!r} is not a choice (use 'as_coded_none' or 'student_pull')")
    if grad == "as_coded_none":
        with torch.no_grad():
            student_dots, teacher_dots = pool.dots([student, teacher], fe_module)
            index = (2 - 2 * student_dots).topk(topk, dim=1, largest=False).indices
            return torch.gather(2 - 2 * teacher_dots, 1, index).mean()
    with torch.no_grad():
        (teacher_dots,) = pool.dots([teacher], fe_module)
        index = (2 - 2 * teacher_dots).topk(topk, dim=1, largest=False).indices
        pull = pool.mean_rows(index, fe_module, student.shape[1]).to(student.dtype)
    return (2 - 2 * (student * pull).sum(1)).mean()
