"""Pluggable index samplers for pixel contrast: uniform (MONA), stratified and stratified-antithetic (ARCO).

Papers: MONA = You et al., "Mine yOur owN Anatomy: Revisiting Medical Image Segmentation with Extremely
Limited Labels", TPAMI 2024; ARCO = You et al., "Rethinking Semi-Supervised Medical Image Segmentation: A
Variance-Reduction Perspective", NeurIPS 2023. The sampler is the only thing that distinguishes ARCO from
MONA (docs/arco.md, 'What ARCO changes'; the interface: docs/arco.md, 'Sampler interface').

A sampler draws ``num_samples`` indices (with replacement) into a candidate list of length
``num_candidates``: the anchor pool of a class (``n = 256``, list in (image, row, column) raster order) or
its memory bank (``n = 256 * 512 = 131 072`` negatives, FIFO order). The estimator that the sample feeds
(the mean of the contrastive loss over anchors/negatives) should be unbiased with a lower variance than
uniform sampling; that is ARCO's claim.

Strategies (:data:`SAMPLERS`, the papers' NS / SG / SAG; flag ``--func rand|smc|asmc``):

* ``"uniform"`` (NS, MONA): ``n`` independent uniform draws from ``[0, N)``.
* ``"stratified"`` (SG, ARCO ``smc``): split the candidates into ``groups`` strata and draw a quota in each.
* ``"stratified_antithetic"`` (SAG, ARCO ``asmc``): as SG, but half of each stratum's quota is drawn and the
  other half are antithetic partners (reflections) of those draws.

Groupings (:data:`GROUPINGS`) for the two stratified strategies:

* ``"flat"`` -- **as released** (default): strata are blocks of a pseudo-square laid over the *flattened
  candidate list* (not over the image), ``groups = 16`` fixed (docs/arco.md, 'Stratified group sampling (SG)'
  and 'Stratified antithetic sampling (SAG)'). Small pools fall back to a 1-D stratified sampler; as released
  this happens whenever a block would have side < 2 (``min_block_side``; docs/arco.md, 'Fallback for small pools').
* ``"spatial"`` -- **as described in the paper** ("partition the image ... into grids with the same size,
  then sample within the same grid"; paper Table 7 tries 9/16/25 grids): strata are ``sqrt(groups) x
  sqrt(groups)`` equal cells of the *image*, located through each candidate's pixel position, with the
  sample allocated proportionally to the cells' candidate counts (the paper's unbiasedness condition
  ``|D_m| ∝ |P_m|``).

All functions are vectorised (no Python loop over samples or groups), device-agnostic and free of host
synchronisation: the flat path is pure integer arithmetic on host-known sizes; the spatial path uses
``scatter_add_``/``cumsum``/``searchsorted``/``argsort`` only. A ``generator`` may live on another device than
the output (e.g. a CPU generator for CUDA output): random numbers are then drawn on the generator's device and
the result is moved once.

Bad arguments raise :class:`methods.errors.ConfigError` (sizes, names, options) or
:class:`methods.errors.DataError` (candidate positions).

Public API: :data:`SAMPLERS`, :data:`GROUPINGS`, :data:`ALLOCATIONS`, :func:`sample_indices`,
:class:`SamplerConfig`, and helpers used by the samplers and their tests: :func:`grid_edge`, :func:`sampler_quota`,
:func:`stratified_1d_indices`, :func:`spatial_cell_ids`, :func:`spatial_allocation`; :func:`flat_block_ids` (the blocks of
the flat grid, for tests and inspection).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from methods.errors import ConfigError, DataError
from methods.objective import check_choice, check_int_argument, check_number

SAMPLERS = ("uniform", "stratified", "stratified_antithetic")  # the papers' NS / SG / SAG
GROUPINGS = ("flat", "spatial")  # as released / as described in the paper
ALLOCATIONS = ("systematic", "largest_remainder")  # rounding of proportional allocation (spatial only)

RELEASED_GROUPS = 16  # cut_count = 4 -> 4 x 4 blocks, no CLI flag (docs/overview.md, 'Ablation axes and released values')
# The released grid samplers index a NumPy array with a one-element torch tensor for every block; for a block of
# a single cell that yields a scalar, the next indexing raises, and the released ``except`` falls back to the 1-D
# sampler. So the grid is used only when its blocks have side >= 2 (pools of 57+ candidates for 16 groups).
RELEASED_MIN_BLOCK_SIDE = 2


# -- argument checks -------------------------------------------------------------------------------------------


#: The settings of an objective config that shape the stratified samplers' strata (those the config has).
STRATA_SETTINGS = ("sampler_groups", "sampler_grouping", "sampler_allocation", "sampler_min_block_side")


def check_strata_used(config) -> None:
    """A :class:`ConfigError` when ``config`` (a MONA/ARCO or ACTION objective config, a dataclass with ``sampler``)
    sets a strata setting off its default under the ``"uniform"`` sampler, which has no strata, or
    ``sampler_allocation`` off its default under the ``"flat"`` grouping, which allocates no spatial strata: the trial
    would train exactly as with the default under a key of its own, an ablation row that cannot differ (the MONA
    review; the flat case, the data-docs review). ``sampler_min_block_side`` stays free under ``"spatial"``: MONA/ARCO's
    negatives are drawn from the banks by the flat sampler whatever the anchors' grouping."""
    if config.sampler != "uniform":
        allocation = next(f for f in dataclasses.fields(config) if f.name == "sampler_allocation")
        if config.sampler_grouping != "spatial" and config.sampler_allocation != allocation.default:
            raise ConfigError(
                f"{type(config).__name__}.sampler_allocation: {config.sampler_allocation!r} rounds the spatial strata's "
                f"allocation; sampler_grouping {config.sampler_grouping!r} has no such allocation and would train exactly "
                f"as with {allocation.default!r} (set sampler_grouping 'spatial', or leave sampler_allocation at "
                f"{allocation.default!r})"
            )
        return
    for field in dataclasses.fields(config):
        if field.name in STRATA_SETTINGS and getattr(config, field.name) != field.default:
            raise ConfigError(
                f"{type(config).__name__}.{field.name}: {getattr(config, field.name)!r} shapes the strata of the stratified "
                f"samplers; the sampler 'uniform' has none and would train exactly as with {field.default!r} (use sampler "
                f"'stratified' or 'stratified_antithetic', or leave {field.name} at {field.default!r})"
            )

def _grid_side(groups: object, name: str = "groups") -> int:
    """``g = sqrt(groups)``; ``groups`` must be a perfect square >= 1 (9, 16, 25, ...)."""
    groups = check_int_argument("sampler", name, groups, 1)
    side = math.isqrt(groups)
    if side * side != groups:
        raise ConfigError(f"sampler: {name} must be a perfect square, got {groups} (use a g x g grid: 9, 16, 25, ...)")
    return side


def _check_grid_shape(grid_shape: object) -> tuple[int, int]:
    if not isinstance(grid_shape, Sequence) or len(grid_shape) != 2:
        raise ConfigError(f"sampler: grid_shape must be (H, W), got {grid_shape!r} (pass the image's height and width)")
    height = check_int_argument("sampler", "grid_shape[0] (H)", grid_shape[0], 1)
    width = check_int_argument("sampler", "grid_shape[1] (W)", grid_shape[1], 1)
    return height, width


def _check_positions(positions: object, num_candidates: int) -> torch.Tensor:
    if not isinstance(positions, torch.Tensor):
        raise DataError(
            f"sampler: positions must be a (num_candidates, 2) tensor for grouping='spatial', got "
            f"{type(positions).__name__} (pass each candidate's (row, column))"
        )
    if positions.shape != (num_candidates, 2):
        raise DataError(
            f"sampler: positions must have shape (num_candidates, 2) = ({num_candidates}, 2), got "
            f"{tuple(positions.shape)} (one (row, column) per candidate)"
        )
    if positions.dtype == torch.bool or positions.is_complex():
        raise DataError(f"sampler: positions must be a real (float or integer) tensor, got {positions.dtype} (convert them)")
    return positions


# -- random draws on the generator's device, moved to the output device ----------------------------------------

def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float64 U[0, 1) (53-bit, so ``floor(u * size)`` is uniform for any realistic stratum size)."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randint(high, (size,), generator=generator, device=device, dtype=torch.int64)


def _randperm(size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randperm(size, generator=generator, device=device)


def _uniform_int(u: torch.Tensor, size: torch.Tensor | int) -> torch.Tensor:
    """``floor(u * size)`` as int64, clamped into ``[0, size - 1]`` (``size >= 1``)."""
    value = torch.floor(u * size).to(torch.int64)
    if isinstance(size, torch.Tensor):
        return torch.minimum(value, size - 1)
    return value.clamp_(max=size - 1)


# -- flat (as released) ----------------------------------------------------------------------------------------

def grid_edge(num_candidates: int) -> int:
    """``e = round(sqrt(N))`` computed exactly (SG step 1); the flat grid is ``e x e``."""
    num_candidates = check_int_argument("sampler", "num_candidates", num_candidates, 1)
    edge = math.isqrt(num_candidates)
    # round half can't happen for integers: (e + 1/2)^2 = e^2 + e + 1/4
    return edge + 1 if num_candidates - edge * edge > edge else edge


def sampler_quota(num_candidates: int, num_samples: int, groups: int = RELEASED_GROUPS) -> int:
    """Per-block quota of the flat SG grid, ``q = floor(floor(n e^2 / N) / groups)`` (SG step 2).

    SAG draws ``floor(q / 2)`` per block plus as many partners. Returns 0 when the grid does not exist
    (``floor(e / g) = 0``); :func:`sample_indices` falls back to :func:`stratified_1d_indices` already when
    ``floor(e / g) < min_block_side`` (2 as released).
    Examples (released sizes): ``sampler_quota(50_000, 256) == 16``; ``sampler_quota(30_000, 131_072) == 8172``.
    """
    num_candidates = check_int_argument("sampler", "num_candidates", num_candidates, 1)
    num_samples = check_int_argument("sampler", "num_samples", num_samples, 1)
    side = _grid_side(groups)
    edge = grid_edge(num_candidates)
    if edge // side == 0:
        return 0
    return (num_samples * edge * edge // num_candidates) // groups


def flat_block_ids(indices: torch.Tensor, num_candidates: int, groups: int = RELEASED_GROUPS) -> torch.Tensor:
    """Block id in ``[0, groups)`` (row-major over the g x g blocks) of each index of the flat grid.

    indices: int64 tensor (any shape) in ``[0, N)``. Returns int64, same shape; -1 for indices outside the
    ``e x e`` grid (``>= e^2``, possible when ``e^2 < N``) or when the grid does not exist (``floor(e/g) = 0``).
    """
    num_candidates = check_int_argument("sampler", "num_candidates", num_candidates, 1)
    side = _grid_side(groups)
    edge = grid_edge(num_candidates)
    block = edge // side
    if block == 0:
        return torch.full_like(indices, -1, dtype=torch.int64)
    indices = indices.to(torch.int64)
    row_block = torch.clamp(torch.div(indices, edge, rounding_mode="floor") // block, max=side - 1)
    col_block = torch.clamp((indices % edge) // block, max=side - 1)
    ids = row_block * side + col_block
    return torch.where(indices < edge * edge, ids, torch.full_like(ids, -1))


def _finish(
    drawn: torch.Tensor,
    num_candidates: int,
    num_samples: int,
    max_invalid: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """SG step 4: drop draws ``>= N``, shuffle, top up with uniform draws to ``n``, truncate to ``n``.

    ``max_invalid``: host-known bound on the number of draws ``>= N`` (0 when ``e^2 <= N``). Sync-free form:
    the kept draws are the first ``min(M, n)`` valid ones of a random permutation (``M`` = number of valid
    draws), scattered to the front of a buffer whose tail holds enough uniform top-up draws. The output is
    finally shuffled, so every position is exchangeable (the release leaves the top-ups at the end; order only
    decides which anchor meets which negatives and does not change any estimator).
    """
    count = drawn.numel()
    if max_invalid == 0 and count <= num_samples:
        top_up = _randint(num_candidates, num_samples - count, generator, device)
        out = torch.cat([drawn, top_up])
    else:
        if count > num_samples:  # truncation must keep a random subset
            drawn = drawn.index_select(0, _randperm(count, generator, device))
        # at most n - min(M, n) <= n - (count - max_invalid) top-ups are needed; they fill the buffer's tail
        needed = min(num_samples, max(0, num_samples - count + max_invalid))
        top_up = _randint(num_candidates, needed, generator, device)
        buffer = torch.cat([top_up.new_zeros(num_samples - needed), top_up, top_up.new_zeros(1)])  # last: dummy
        valid = drawn < num_candidates
        rank = torch.cumsum(valid, 0) - 1
        keep = valid & (rank < num_samples)
        buffer.scatter_(0, torch.where(keep, rank, torch.full_like(rank, num_samples)), drawn)
        out = buffer[:num_samples]
    return out.index_select(0, _randperm(num_samples, generator, device))


def _flat_grid_indices(
    num_candidates: int,
    num_samples: int,
    side: int,
    antithetic: bool,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """SG / SAG over the flattened candidate list (SG steps 1-4 and SAG), on ``device``."""
    groups = side * side
    edge = grid_edge(num_candidates)
    block = edge // side
    quota = sampler_quota(num_candidates, num_samples, groups)  # the grid exists here: block >= min_block_side
    per_block = quota // 2 if antithetic else quota
    # block geometry along one axis: side-1 blocks of `block` cells, the last extended to the border;
    # block b = (b // side, b % side); columns of `geometry`: row start, row size, column start, column size
    starts = [k * block for k in range(side)]
    sizes = [block] * (side - 1) + [edge - (side - 1) * block]
    geometry = torch.tensor(
        [[starts[b // side], sizes[b // side], starts[b % side], sizes[b % side]] for b in range(groups)],
        dtype=torch.int64,
    ).to(device)
    row_start, row_size, col_start, col_size = (geometry[:, k : k + 1] for k in range(4))  # (groups, 1) each
    # one draw per sample, scaled to its block's cell count, then split into (row, column) within the block
    local = _uniform_int(_rand((groups, per_block), generator, device), row_size * col_size)
    rows = row_start + torch.div(local, col_size, rounding_mode="floor")
    cols = col_start + local % col_size
    if antithetic:
        # point reflection through the block centre: (r, c) -> (r0 + r1 - r, c0 + c1 - c), r1/c1 inclusive
        rows = torch.cat([rows, 2 * row_start + row_size - 1 - rows], 1)
        cols = torch.cat([cols, 2 * col_start + col_size - 1 - cols], 1)
    drawn = (rows * edge + cols).reshape(-1)
    # cells >= N all lie in the grid's last row, i.e. in the last block row: bound the invalid draws by its draws
    max_invalid = side * rows.shape[1] if edge * edge > num_candidates else 0
    return _finish(drawn, num_candidates, num_samples, max_invalid, generator, device)


def stratified_1d_indices(
    num_candidates: int,
    num_samples: int,
    stratum_size: int = RELEASED_GROUPS,
    *,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The released 1-D fallback sampler (docs/arco.md, 'Fallback for small pools'); (n,) int64.

    Strata are ``B = floor(N / p)`` runs of ``p = stratum_size`` consecutive indices (the ``N mod p`` tail
    is no stratum); each stratum gets ``floor(n / B)`` uniform draws (antithetic: ``floor(floor(n / B) / 2)``
    draws ``x`` plus partners ``(2 i + 1) p - 1 - x``, the reflection within stratum ``i``); the rest of the
    ``n`` are uniform draws from ``[0, N)``; the result is shuffled. Reverts to plain uniform sampling when
    ``N < p`` or ``floor(N / p) > n``, as released.

    The release hard-codes ``p = 16`` (independent of ``cut_count``); :func:`sample_indices` passes
    ``p = groups`` (16 as released). :func:`sample_indices` falls back here when the grid's blocks would have
    side ``floor(e / g) < min_block_side``: as released (2) that is ``N <= 56`` for 16 groups, so pools of 16-56
    candidates get 1-D strata and smaller ones uniform draws; with ``min_block_side=1`` only ``N <= 12``
    (always uniform).
    """
    num_candidates = check_int_argument("sampler", "num_candidates", num_candidates, 1)
    num_samples = check_int_argument("sampler", "num_samples", num_samples, 1)
    stratum_size = check_int_argument("sampler", "stratum_size", stratum_size, 1)
    if device is not None:
        out_device = torch.device(device)
    else:
        out_device = generator.device if generator is not None else torch.device("cpu")
    work = _draw_device(generator, out_device)
    strata = num_candidates // stratum_size
    if num_candidates < stratum_size or strata > num_samples:
        return _randint(num_candidates, num_samples, generator, work).to(out_device)
    per = num_samples // strata
    draws = per // 2 if antithetic else per
    base = torch.arange(strata, device=work, dtype=torch.int64)[:, None] * stratum_size
    drawn = base + _uniform_int(_rand((strata, draws), generator, work), stratum_size)
    if antithetic:
        drawn = torch.cat([drawn, 2 * base + stratum_size - 1 - drawn], 1)
    return _finish(drawn.reshape(-1), num_candidates, num_samples, 0, generator, work).to(out_device)


# -- spatial (as described in the paper) -----------------------------------------------------------------------

def spatial_cell_ids(
    positions: torch.Tensor, grid_shape: tuple[int, int], groups: int = RELEASED_GROUPS
) -> torch.Tensor:
    """Cell id in ``[0, groups)`` of each candidate: the image is split into g x g equal cells, row-major.

    positions: (N, 2) float/int (row, column) pixel coordinates; grid_shape: (H, W). Cell row
    ``floor(row * g / H)``, clamped into ``[0, g - 1]`` (coordinates outside the image fall in the border
    cells). Returns int64 (N,) on ``positions.device``.
    """
    side = _grid_side(groups)
    height, width = _check_grid_shape(grid_shape)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[1] != 2:
        raise DataError(f"spatial_cell_ids: positions must be an (N, 2) tensor, got {getattr(positions, 'shape', positions)!r} "
                        "(one (row, column) per candidate)")
    coords = positions.to(torch.float64)
    cell_rows = torch.floor(coords[:, 0] * side / height).clamp_(0, side - 1).to(torch.int64)
    cell_cols = torch.floor(coords[:, 1] * side / width).clamp_(0, side - 1).to(torch.int64)
    return cell_rows * side + cell_cols


def spatial_allocation(
    cell_counts: torch.Tensor,
    num_samples: int,
    allocation: str = "systematic",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-cell sample sizes ``n_m`` with ``sum n_m = n`` and ``n_m ∈ {floor(q_m), ceil(q_m)}``, ``q_m = n P_m / N``.

    cell_counts: int64 (G,) candidate counts ``P_m`` (sum ``N >= 1``). Returns int64 (G,) on the same device;
    ``n_m = 0`` wherever ``P_m = 0``. Integer arithmetic, no host sync.

    * ``"systematic"`` (default): randomised systematic rounding, ``n_m = floor((n C_m + u) / N) -
      floor((n C_{m-1} + u) / N)`` with cumulative counts ``C`` and one ``u ~ U{0..N-1}``. Then
      ``E[n_m] = q_m`` exactly, so the plain sample mean is an exactly unbiased estimator of the population
      mean (the paper's condition ``|D_m| ∝ |P_m|`` holding in expectation).
    * ``"largest_remainder"``: deterministic ``floor(q_m)`` plus one for the cells with the largest remainders
      (ties: lower cell id). The plain mean then carries an O(1/n) rounding bias.
    """
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"sampler: allocation must be one of {list(ALLOCATIONS)}, got {allocation!r} (pick one of them)")
    num_samples = check_int_argument("sampler", "num_samples", num_samples, 1)
    counts = cell_counts.to(torch.int64)
    total = counts.sum()
    if allocation == "systematic":
        work = _draw_device(generator, counts.device)
        u = torch.randint(2**62, (1,), generator=generator, device=work, dtype=torch.int64).to(counts.device) % total
        ends = torch.cumsum(counts, 0) * num_samples
        starts = ends - counts * num_samples
        return torch.div(ends + u, total, rounding_mode="floor") - torch.div(starts + u, total, rounding_mode="floor")
    scaled = counts * num_samples
    base = torch.div(scaled, total, rounding_mode="floor")
    remainder = scaled - base * total
    missing = num_samples - base.sum()
    order = torch.argsort(-remainder, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return base + (rank < missing).to(torch.int64)


def _spatial_indices(
    num_samples: int,
    side: int,
    antithetic: bool,
    positions: torch.Tensor,
    grid_shape: tuple[int, int],
    allocation: str,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    groups = side * side
    height, width = grid_shape
    positions = positions.to(device)
    cells = spatial_cell_ids(positions, grid_shape, groups)
    # within-cell order: raster order of the pixel (row-major), ties (same pixel of several images) kept in
    # input order; candidates of cell m occupy sorted[offset_m : offset_m + P_m]
    coords = positions.to(torch.float64)
    pixel_rows = torch.floor(coords[:, 0]).clamp_(0, height - 1)
    pixel = (pixel_rows * width + torch.floor(coords[:, 1]).clamp_(0, width - 1)).to(torch.int64)
    order = torch.argsort(cells * (height * width) + pixel, stable=True)
    counts = torch.zeros(groups, dtype=torch.int64, device=device).scatter_add_(0, cells, torch.ones_like(cells))
    offsets = torch.cumsum(counts, 0) - counts
    alloc = spatial_allocation(counts, num_samples, allocation, generator=generator)
    alloc_end = torch.cumsum(alloc, 0)
    slots = torch.arange(num_samples, device=device)
    slot_cell = torch.searchsorted(alloc_end, slots, right=True)  # cell of each of the n slots
    slot_rank = slots - (alloc_end - alloc)[slot_cell]  # k-th slot of its cell
    size = counts[slot_cell]  # >= 1: a cell with no candidates gets no slot
    work = _draw_device(generator, device)
    rank = _uniform_int(_rand((num_samples,), generator, work).to(device), size)
    if antithetic:
        # slot 2j+1 of a cell is the antithetic partner of slot 2j: reflected rank P_m - 1 - rank
        partner = size - 1 - torch.roll(rank, 1)
        rank = torch.where(slot_rank % 2 == 1, partner, rank)
    drawn = order[offsets[slot_cell] + rank]
    return drawn.index_select(0, _randperm(num_samples, generator, work).to(device))


# -- public entry point ----------------------------------------------------------------------------------------

def sample_indices(
    num_candidates: int,
    num_samples: int,
    strategy: str = "uniform",
    *,
    groups: int = RELEASED_GROUPS,
    grouping: str = "flat",
    positions: torch.Tensor | None = None,
    grid_shape: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    allocation: str = "systematic",
    min_block_side: int = RELEASED_MIN_BLOCK_SIDE,
) -> torch.Tensor:
    """(num_samples,) int64 indices into ``range(num_candidates)``, drawn with replacement (docs/arco.md,
    'Sampler interface').

    Args:
        num_candidates: ``N >= 1``, length of the candidate list (anchor pool or memory bank).
        num_samples: ``n >= 1`` (256 anchors; 256 * 512 negatives).
        strategy: one of :data:`SAMPLERS`: ``"uniform"`` (NS, MONA, ``--func rand``), ``"stratified"``
            (SG, ARCO ``smc``), ``"stratified_antithetic"`` (SAG, ARCO ``asmc``).
        groups: number of strata, a perfect square ``g^2`` (9, 16, 25, ...); released 16 (``cut_count=4``).
            Ignored by ``"uniform"`` (but still validated).
        grouping: ``"flat"`` = **as released** (default) or ``"spatial"`` = **as described in the paper**;
            ignored by ``"uniform"``.
        positions: float/int (N, 2) (row, column) pixel coordinates of each candidate; required for
            ``grouping="spatial"`` with a stratified strategy.
        grid_shape: (H, W) of the image the positions live in; required with ``positions``.
        generator: optional ``torch.Generator``; may live on another device than the output (draws happen on
            the generator's device, the result is moved).
        device: output device; default ``positions.device`` (spatial), else the generator's device, else CPU.
        allocation: spatial only, rounding of the proportional allocation, one of :data:`ALLOCATIONS`
            (see :func:`spatial_allocation`; default ``"systematic"``, exactly unbiased).
        min_block_side: flat stratified only: the grid is used when its blocks have side ``floor(e / g) >=
            min_block_side``, else the 1-D fallback. **2 as released** (:data:`RELEASED_MIN_BLOCK_SIDE`: the
            released grid sampler raises on one-cell blocks and falls back, i.e. for ``N <= 56`` with 16
            groups); 1 = the grid whenever it exists (``N >= 13`` with 16 groups).

    Flat grouping (as released): lay ``0..e^2-1`` (``e = round(sqrt N)``) row-major on an ``e x e``
    grid; cut it into ``g x g`` blocks of side ``floor(e / g)``, the last block row/column extended to the
    border; draw ``q = floor(floor(n e^2 / N) / groups)`` indices per block uniformly with replacement (SAG:
    ``floor(q / 2)`` plus their point reflections through the block centre,
    ``(r, c) -> (r0 + r1 - r, c0 + c1 - c)``); drop draws ``>= N``; keep a random ``min(M, n)`` of the ``M``
    valid draws; top up with uniform draws from ``[0, N)`` to ``n``; shuffle. If ``floor(e / g) <
    min_block_side`` (``N`` too small for the grid) fall back to :func:`stratified_1d_indices` with strata of
    ``groups`` consecutive indices (the release: 16), which reverts to uniform when ``N < groups``.
    As released this is only approximately unbiased: equal quotas for the larger last-row/column blocks, and
    when ``e^2 < N`` the tail ``[e^2, N)`` is reached only by the top-up draws.

    Spatial grouping (as the paper describes): cells are the ``g x g`` equal cells of the ``H x W`` image
    (:func:`spatial_cell_ids`); cell ``m`` with ``P_m`` candidates gets ``n_m ≈ n P_m / N`` slots
    (:func:`spatial_allocation`, total exactly ``n``, no top-up needed); each slot is a uniform draw among the
    cell's candidates. Antithetic: within each cell the candidates are listed in raster order (row-major
    pixel order, ties in input order), slots are paired and the second slot of a pair takes the *reflected
    rank* ``P_m - 1 - k`` of the first's rank ``k`` (an odd last slot is an independent draw). This is the
    within-cell analogue of the released point reflection: when a cell is completely filled with candidates,
    reflecting the raster rank is exactly the point reflection through the cell centre; for a partially
    filled cell it still maps uniform to uniform (so the estimator stays unbiased) and pairs candidates from
    opposite corners of the cell. The output is shuffled.

    Returns int64 (num_samples,) on the output device. No host synchronisation.
    """
    num_candidates = check_int_argument("sampler", "num_candidates", num_candidates, 1)
    num_samples = check_int_argument("sampler", "num_samples", num_samples, 1)
    if strategy not in SAMPLERS:
        raise ConfigError(f"sampler: strategy must be one of {list(SAMPLERS)}, got {strategy!r} (pick one of them)")
    if grouping not in GROUPINGS:
        raise ConfigError(f"sampler: grouping must be one of {list(GROUPINGS)}, got {grouping!r} (pick one of them)")
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"sampler: allocation must be one of {list(ALLOCATIONS)}, got {allocation!r} (pick one of them)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"sampler: generator must be a torch.Generator or None, got {type(generator).__name__} "
                          "(pass a torch.Generator)")
    side = _grid_side(groups)
    min_block_side = check_int_argument("sampler", "min_block_side", min_block_side, 1)
    spatial = strategy != "uniform" and grouping == "spatial"
    if spatial:
        if positions is None or grid_shape is None:
            raise ConfigError("sampler: grouping='spatial' with a stratified strategy needs positions and grid_shape "
                              "(pass both, or use grouping='flat')")
        positions = _check_positions(positions, num_candidates)
        grid_shape = _check_grid_shape(grid_shape)
    if device is not None:
        out_device = torch.device(device)
    elif spatial:
        out_device = positions.device
    elif generator is not None:
        out_device = generator.device
    else:
        out_device = torch.device("cpu")
    antithetic = strategy == "stratified_antithetic"
    if spatial:
        return _spatial_indices(num_samples, side, antithetic, positions, grid_shape, allocation, generator, out_device)
    work = _draw_device(generator, out_device)
    if strategy == "uniform":
        return _randint(num_candidates, num_samples, generator, work).to(out_device)
    if grid_edge(num_candidates) // side < min_block_side:
        return stratified_1d_indices(
            num_candidates, num_samples, side * side, antithetic=antithetic, generator=generator, device=out_device
        )
    return _flat_grid_indices(num_candidates, num_samples, side, antithetic, generator, work).to(out_device)


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler an objective uses for anchors and negatives (docs/arco.md, 'Sampler interface').

    * ``strategy``: one of :data:`SAMPLERS`; MONA = ``"uniform"``, ARCO as released = ``"stratified"``
      (``smc``; ``"stratified_antithetic"`` = ``asmc``, the 3D default).
    * ``groups``: perfect square >= 1; 16 as released (paper Table 7: 9/16/25).
    * ``grouping``: ``"flat"`` (as released) or ``"spatial"`` (as described in the paper).
    * ``allocation``: spatial rounding, one of :data:`ALLOCATIONS`.
    * ``min_block_side``: int >= 1; the flat grid's smallest block side before the 1-D fallback, 2 as released
      (see :func:`sample_indices`).
    """

    strategy: str = "uniform"
    groups: int = RELEASED_GROUPS
    grouping: str = "flat"
    allocation: str = "systematic"
    min_block_side: int = RELEASED_MIN_BLOCK_SIDE

    def __post_init__(self) -> None:
        check_choice(self, "strategy", SAMPLERS)
        check_number(self, "groups", minimum=1, integer=True)
        if math.isqrt(self.groups) ** 2 != self.groups:
            raise ConfigError(f"SamplerConfig.groups: must be a perfect square, got {self.groups} (use 9, 16 or 25)")
        check_choice(self, "grouping", GROUPINGS)
        check_choice(self, "allocation", ALLOCATIONS)
        check_number(self, "min_block_side", minimum=1, integer=True)

    def sample(
        self,
        num_candidates: int,
        num_samples: int,
        *,
        positions: torch.Tensor | None = None,
        grid_shape: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """:func:`sample_indices` with this configuration."""
        return sample_indices(
            num_candidates,
            num_samples,
            self.strategy,
            groups=self.groups,
            grouping=self.grouping,
            positions=positions,
            grid_shape=grid_shape,
            generator=generator,
            device=device,
            allocation=self.allocation,
            min_block_side=self.min_block_side,
        )
