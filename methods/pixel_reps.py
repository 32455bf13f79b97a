"""Pixel representations where the losses read them: dense maps or straight from the decoder pyramid.

The pixel-contrast losses of MONA/ARCO and ACTION never read a representation map as a whole: they read it
at a few sampled pixels (anchors, bank negatives, relation-graph negatives), as masked class means
(prototypes) and average-pooled to g x g (MONA's nearest-neighbour pool). Every representation head of
these methods is *linear* in the decoder pyramid (``docs/methods.md`` "Sparse representations"):

* MONA/ARCO's ``FE`` (:class:`methods.heads.MonaFeatureExtractor`): bias-free 1x1 convolutions, residual
  sums, concatenations and bilinear upsampling; the predictor ``Pred`` is two bias-free 1x1 convolutions;
* ACTION's head (:class:`methods.heads.ActionProjectionHead`): each level upsampled to the output size,
  concatenated, conv3x3 (no bias) then conv1x1 (bias).

Bilinear upsampling (``align_corners=True``) is separable: a level ``p`` (c, h, w) becomes ``R p C^T`` on the
output grid, with 1-D interpolation matrices ``R`` (H, h) and ``C`` (W, w) (for MONA the product of the
matrices of every 2x step on the way up, since ``FE`` upsamples level by level). Point evaluation, masked
sums and average pooling are linear functionals of the output grid, so they commute with the channel
mixing of the heads: apply them to every pyramid level first (a few taps per point, a mask pulled back by
``R^T m C``, a pooling matrix composed with ``R``), then run the heads' weights on the resulting rows. The
numbers are the dense path's up to float rounding; gradients reach every head weight and the pyramid
through the same linear maps (autograd of the same expressions).

Two interchangeable sources of rows, both with ``num_images``, ``height``, ``width``, ``dim``:

* :class:`DenseReps`: a materialised (N, D, H, W) map (the reference path, ``representation="dense"``);
* :class:`SparseMonaReps` / :class:`SparseActionReps`: the pyramid plus the head, nothing of size
  (N, D, H, W) is ever built (``representation="sparse"``, the default).

Methods: ``rows(flat_positions)`` -> (M, D) representations at flat positions over (N, H, W);
``class_means(labels, valid, num_classes)`` -> ``(prototypes (C, D), present (C,))`` as
:func:`methods.contrast.class_prototypes`; ``pooled(g)`` -> (N, D, g, g) as ``F.adaptive_avg_pool2d``;
``dense(images=None)`` -> the (N, D, H, W) map, or the images of a slice of it (the last two on :class:`DenseReps` and :class:`SparseMonaReps` only: MONA's
NN pool reads pooled or full-resolution rows, ACTION reads neither). Gradients flow unless the caller runs
under ``torch.no_grad``.

Flat positions. :class:`MaskRanks` turns ranks of sampled pixels within a mask into flat positions
(the samplers draw ranks), :func:`gather_pixels` reads a dense map at flat positions; both losses use these
two and no other copy.
"""

from __future__ import annotations

import functools
import warnings
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.contrast import class_prototypes
from methods.errors import ConfigError

REPRESENTATIONS = ("sparse", "dense")
#: Gathered floats per chunk of point evaluations (bounds the temporary (M, taps, c) tensor: 64 MiB in float32).
_CHUNK_FLOATS = 1 << 24
#: Point requests at least this long are deduplicated first (ACTION draws 256 x 512 negatives per class with
#: replacement from a few thousand pixels at small sizes).
_DEDUPLICATE_FROM = 4096


# -- 1-D linear operators ---------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def _interpolation_weights(size_in: int, size_out: int) -> torch.Tensor:
    """float64 (size_out, size_in): 1-D linear interpolation with ``align_corners=True`` (``F.interpolate``'s
    source coordinate ``dst * (in - 1) / (out - 1)``, floor index, clamped upper neighbour)."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    if size_in == size_out:
        return matrix.copy_(torch.eye(size_in, dtype=torch.float64))
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    for dst in range(size_out):
        src = scale * dst
        low = min(int(src), size_in - 1)
        high = min(low + 1, size_in - 1)
        frac = src - low
        matrix[dst, low] += 1.0 - frac
        matrix[dst, high] += frac
    return matrix


@lru_cache(maxsize=256)
def _average_pool_weights(size_in: int, size_out: int) -> torch.Tensor:
    """float64 (size_out, size_in): 1-D ``adaptive_avg_pool`` (bins ``[floor(i n / g), ceil((i + 1) n / g))``)."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _chain(sizes: Sequence[int]) -> torch.Tensor:
    """float64 (sizes[-1], sizes[0]): bilinear steps sizes[0] -> sizes[1] -> ... composed (one step per size)."""
    matrix = torch.eye(sizes[0], dtype=torch.float64)
    for size_in, size_out in zip(sizes[:-1], sizes[1:]):
        matrix = _interpolation_weights(size_in, size_out) @ matrix
    return matrix


class _Taps:
    """The non-zero entries of a 1-D operator (out, in), padded to ``k`` per row: int64 ``index`` (out, k),
    ``weight`` (out, k) (padding: index 0, weight 0)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        nonzero = matrix != 0
        k = max(1, int(nonzero.sum(1).max()))
        order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :k]  # non-zero columns first
        self.index = order
        self.weight = torch.gather(matrix, 1, order)
        self.k = k


class LevelOperators:
    """Per pyramid level, the 1-D operators (rows, columns) from the level's grid to the output grid.

    ``mode="chain"``: MONA's ``FE`` (level i reaches the output through every finer level's size);
    ``mode="direct"``: ACTION's head (every level resized straight to the output size).
    float64 on the host; moved to a device and dtype on demand (cached).
    """

    def __init__(self, level_sizes: Sequence[tuple[int, int]], out_size: tuple[int, int], mode: str) -> None:
        if mode not in ("chain", "direct"):
            raise ConfigError(f"LevelOperators: mode {mode!r} is not a choice (use 'chain' or 'direct')")
        self.level_sizes = [tuple(s) for s in level_sizes]
        self.out_size = tuple(out_size)
        self.rows, self.cols = [], []
        for i, (h, w) in enumerate(self.level_sizes):
            if mode == "chain":
                hs = [h] + [s[0] for s in self.level_sizes[i + 1:]]
                ws = [w] + [s[1] for s in self.level_sizes[i + 1:]]
                if hs[-1] != self.out_size[0] or ws[-1] != self.out_size[1]:
                    hs.append(self.out_size[0])
                    ws.append(self.out_size[1])
                self.rows.append(_chain(_dedupe(hs)))
                self.cols.append(_chain(_dedupe(ws)))
            else:
                self.rows.append(_interpolation_weights(h, self.out_size[0]))
                self.cols.append(_interpolation_weights(w, self.out_size[1]))
        self.row_taps = [_Taps(m) for m in self.rows]
        self.col_taps = [_Taps(m) for m in self.cols]
        self._moved: dict = {}

    def on(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The operators as tensors on ``device``: matrices in ``dtype``, taps (index int64, weight dtype)."""
        key = (str(device), dtype)
        if key not in self._moved:
            self._moved[key] = {
                "rows": [m.to(device, dtype) for m in self.rows],
                "cols": [m.to(device, dtype) for m in self.cols],
                "row_taps": [(t.index.to(device), t.weight.to(device, dtype)) for t in self.row_taps],
                "col_taps": [(t.index.to(device), t.weight.to(device, dtype)) for t in self.col_taps],
            }
        return self._moved[key]

    def pixel_table(self, level: int, kind: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per output pixel (raster order over (H, W)), the level pixels and weights that make it: int64 and
        float (H*W, T) for one image (add ``image * h * w`` to the indices, times 9 for ``kind="footprint"``).
        ``kind``: ``"point"`` (:func:`level_taps`) or ``"footprint"`` (:func:`footprint_taps`). Cached."""
        moved = self.on(device, dtype)
        key = (kind, level)
        if key not in moved:
            height, width = self.out_size
            pixel = torch.arange(height * width, device=device)
            zero = torch.zeros_like(pixel)
            taps = (*moved["row_taps"][level], *moved["col_taps"][level])
            build = level_taps if kind == "point" else footprint_taps
            moved[key] = build(taps, self.level_sizes[level], self.out_size, zero, pixel // width, pixel % width)
        return moved[key]


def _dedupe(sizes: list[int]) -> list[int]:
    """Drop repeated consecutive sizes (a resize to the same size is the identity, as in ``heads._resize``)."""
    out = [sizes[0]]
    for s in sizes[1:]:
        if s != out[-1]:
            out.append(s)
    return out


@lru_cache(maxsize=64)
def level_operators(level_sizes: tuple[tuple[int, int], ...], out_size: tuple[int, int], mode: str) -> LevelOperators:
    return LevelOperators(level_sizes, out_size, mode)


# -- linear functionals of an upsampled pyramid -----------------------------------------------------------------

def _channels_last_rows(level: torch.Tensor) -> torch.Tensor:
    """(B, c, h, w) -> (B*h*w, c) rows in raster order (a copy unless the level is channels-last already)."""
    return level.permute(0, 2, 3, 1).reshape(-1, level.shape[1])


def level_taps(taps: tuple, size: tuple[int, int], out_size: tuple[int, int], image: torch.Tensor,
               y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which level pixels, with which weights, make the upsampled level at points: int64 (M, T) row indices
    into the level's raster-order rows (B*h*w) and float (M, T) weights, T = taps per point.

    Args:
        taps: ``(row index, row weight, column index, column weight)`` of the level (:meth:`LevelOperators.on`).
        size: (h, w) of the level. out_size: (H, W).
        image, y, x: int64 (M,) points; points outside the output grid get weight 0 (3x3 zero padding).
    """
    height, width = out_size
    h, w = size
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    y, x = y.clamp(0, height - 1), x.clamp(0, width - 1)
    r_index, r_weight, c_index, c_weight = taps
    base = (image * h).unsqueeze(1) + r_index[y]                                           # (M, kr)
    index = (base.unsqueeze(2) * w + c_index[x].unsqueeze(1)).reshape(y.shape[0], -1)      # (M, kr*kc)
    weight = (r_weight[y].unsqueeze(2) * c_weight[x].unsqueeze(1)).reshape(y.shape[0], -1)
    return index, weight * inside.unsqueeze(1).to(weight.dtype)


def footprint_taps(taps: tuple, size: tuple[int, int], out_size: tuple[int, int], image: torch.Tensor,
                   y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`level_taps` of the 9 points of each point's 3x3 footprint at once: int64 (M, 9 T) indices
    ``9 t + s`` into a table with 9 rows per level pixel t (one per kernel position s = 3 (dy + 1) + dx + 1)
    and float (M, 9 T) weights (0 where the neighbour is outside the grid)."""
    height, width = out_size
    h, w = size
    r_index, r_weight, c_index, c_weight = taps
    offsets = torch.tensor([-1, 0, 1], device=y.device)
    ys, xs = y.unsqueeze(1) + offsets, x.unsqueeze(1) + offsets                             # (M, 3)
    y_in = ((ys >= 0) & (ys < height)).unsqueeze(2)
    x_in = ((xs >= 0) & (xs < width)).unsqueeze(2)
    ys, xs = ys.clamp(0, height - 1), xs.clamp(0, width - 1)
    rows = (image * h).view(-1, 1, 1) + r_index[ys]                                          # (M, 3, kr)
    row_w = r_weight[ys] * y_in.to(r_weight.dtype)
    cols, col_w = c_index[xs], c_weight[xs] * x_in.to(c_weight.dtype)                        # (M, 3, kc)
    shift = torch.arange(len(_SHIFTS), device=y.device).view(1, 3, 3, 1, 1)
    index = (rows[:, :, None, :, None] * w + cols[:, None, :, None, :]) * len(_SHIFTS) + shift  # (M, 3, 3, kr, kc)
    weight = row_w[:, :, None, :, None] * col_w[:, None, :, None, :]
    return index.reshape(y.shape[0], -1), weight.reshape(y.shape[0], -1)


def combine_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[m] = Σ_t weight[m, t] table[index[m, t]]``: (R, c), (M, T), (M, T) -> (M, c); gradients reach ``table``.

    On the CPU a CSR sparse matrix times the table (:func:`_csr_rows`; about 15x faster than gather-multiply-sum,
    measured in ``benchmarks/RESULTS.md``); on a GPU ``embedding_bag`` with per-sample weights
    (:func:`_bag_rows`), which never writes the (M, T, c) gathered block; elsewhere a chunked gather-multiply-sum
    (:func:`_gathered_rows`). The three are the same sums up to float rounding."""
    if table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64):
        return _csr_rows(table, index, weight)
    if table.device.type == "cuda":
        return _bag_rows(table, index, weight)
    return _gathered_rows(table, index, weight)


def _csr_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`combine_rows` as a CSR matrix (M, R) with T entries a row, times the table."""
    count, taps = index.shape
    rows = torch.arange(0, count * taps + 1, taps, device=index.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": CSR @ dense is stable
        matrix = torch.sparse_csr_tensor(rows, index.reshape(-1), weight.reshape(-1).to(table.dtype),
                                         (count, table.shape[0]), check_invariants=False)
        return matrix @ table


def _bag_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`combine_rows` as ``F.embedding_bag`` (bags of T rows, weighted sums): one kernel each way, reading
    the table rows without materialising them. On an H200 an ACTION training step at the paper size is 1.3-1.4x
    faster than with :func:`_gathered_rows` (MONA's about the same; ``benchmarks/RESULTS.md``, 'One GPU'); on the
    CPU it is slower than :func:`_csr_rows`."""
    if index.shape[0] == 0:
        return table.new_zeros(0, table.shape[1])
    return F.embedding_bag(index, table, mode="sum", per_sample_weights=weight.to(table.dtype))


def _gathered_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`combine_rows` as gather, multiply and sum, in chunks of at most ``_CHUNK_FLOATS`` gathered floats."""
    count, taps = index.shape
    if count == 0:
        return table.new_zeros(0, table.shape[1])
    chunk = max(1, _CHUNK_FLOATS // max(1, taps * table.shape[1]))
    parts = []
    for start in range(0, count, chunk):
        idx, wts = index[start:start + chunk], weight[start:start + chunk]
        gathered = table.index_select(0, idx.reshape(-1)).view(idx.shape[0], taps, -1)     # (m, T, c)
        parts.append((gathered * wts.unsqueeze(2).to(gathered.dtype)).sum(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def interpolate_rows(table: torch.Tensor, ops: LevelOperators, level: int, image: torch.Tensor, pixel: torch.Tensor,
                     kind: str = "point") -> torch.Tensor:
    """Level ``level`` upsampled to the output grid at points (``kind="point"``: (M, c)), or the 9 kernel
    positions' copies around them summed (``"footprint"``, see :func:`footprint_taps`), from the cached
    per-pixel tables of ``ops``. ``table``: float (B*h*w, c) (or (B*h*w*9, c)) rows in raster order;
    ``image``, ``pixel``: int64 (M,) image and raster position ``y * W + x`` of each point."""
    index, weight = ops.pixel_table(level, kind, table.device, table.dtype)
    h, w = ops.level_sizes[level]
    per_image = h * w * (len(_SHIFTS) if kind == "footprint" else 1)
    return combine_rows(table, index[pixel] + (image * per_image).unsqueeze(1), weight[pixel])


def sample_levels(pyramid: Sequence[torch.Tensor], ops: LevelOperators, image: torch.Tensor, pixel: torch.Tensor,
                  level_rows: list[torch.Tensor] | None = None, levels: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Every level (or ``levels``) upsampled to the output grid, evaluated at points: list of (M, c_i).

    Args:
        pyramid: L float (B, c_i, h_i, w_i) levels. ops: their :class:`LevelOperators`.
        image, pixel: int64 (M,) image and raster position ``y * W + x`` of each point.
        level_rows: optional cached :func:`_channels_last_rows` of each level.
    """
    out = []
    for i in (range(len(pyramid)) if levels is None else levels):
        table = level_rows[i] if level_rows is not None else _channels_last_rows(pyramid[i])
        out.append(interpolate_rows(table, ops, i, image, pixel))
    return out


def masked_level_sums(pyramid: Sequence[torch.Tensor], ops: LevelOperators, masks: torch.Tensor) -> list[torch.Tensor]:
    """``Σ_{b, pixel} masks[b, k] * upsampled level_i[b, :]`` for every level: list of (K, c_i).

    masks: float (B, K, H, W) on the output grid; pulled back to each level as ``R_i^T m C_i`` (two small
    matrix products) and contracted with the level."""
    moved = ops.on(masks.device, masks.dtype)
    out = []
    for p, rows, cols in zip(pyramid, moved["rows"], moved["cols"]):
        same = tuple(p.shape[2:]) == tuple(masks.shape[2:])                  # the output grid itself
        pulled = masks if same else rows.t() @ (masks @ cols)                 # (B, K, h_i, w_i)
        out.append(torch.einsum("bkhw,bchw->kc", pulled.to(p.dtype), p))
    return out


def pooled_levels(pyramid: Sequence[torch.Tensor], ops: LevelOperators, size: int) -> list[torch.Tensor]:
    """Every level upsampled to the output grid then ``adaptive_avg_pool2d(., size)``: list of (B*g*g, c_i)
    rows in raster order over (B, g, g)."""
    height, width = ops.out_size
    level = pyramid[0]
    pool_rows = _average_pool_weights(height, size).to(level.device, level.dtype)
    pool_cols = _average_pool_weights(width, size).to(level.device, level.dtype)
    moved = ops.on(level.device, level.dtype)
    out = []
    for p, rows, cols in zip(pyramid, moved["rows"], moved["cols"]):
        value = (pool_rows @ rows) @ p @ (pool_cols @ cols).t()               # (B, c, g, g)
        out.append(_channels_last_rows(value))
    return out


# -- the heads applied to rows ----------------------------------------------------------------------------------

def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution's weight as an (out, in) matrix (a view)."""
    return conv.weight.view(conv.weight.shape[0], -1)


def mona_fe_rows(fe: nn.Module, levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """:class:`methods.heads.MonaFeatureExtractor` on rows: per-level (M, c_i) values of the *same* linear
    functional of each upsampled level -> (M, out_channels) (the functional of ``FE(pyramid)``).

    ``a = v_0 + W_0 v_0``; ``a = cat[a, v_i]`` then ``a + W_i a`` (i < L-1); ``r = W_L a`` — the module's own
    recursion with the spatial work already done."""
    fused = levels[0] + F.linear(levels[0], _matrix(fe.residual[0]))
    for i in range(1, len(levels)):
        fused = torch.cat([fused, levels[i]], dim=1)
        if i < len(fe.residual):
            fused = fused + F.linear(fused, _matrix(fe.residual[i]))
    return F.linear(fused, _matrix(fe.project))


def predictor_rows(predictor: nn.Sequential, rows: torch.Tensor) -> torch.Tensor:
    """:class:`methods.heads.LinearPredictor` (two bias-free 1x1 convolutions) on (M, D) rows."""
    for conv in predictor:
        rows = F.linear(rows, _matrix(conv))
    return rows


# -- the sources of rows ----------------------------------------------------------------------------------------

def _decode(flat_positions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions over (N, H, W) -> (image, raster position within the image)."""
    pixels = height * width
    return flat_positions // pixels, flat_positions % pixels


class MaskRanks:
    """The True entries of a 1-D bool mask, addressed by rank: ``positions(ranks)`` = ``nonzero(mask)[ranks]``, the
    flat positions of the ``ranks``-th (0-based) True entries in raster order (the samplers draw ranks).

    On the CPU the nonzero list is built once and indexed: at ACTION's quick negatives (4 x 64 x 128 ranks into a
    73 728-entry mask) that is about 7x faster than a binary search (``benchmarks/RESULTS.md``, 'Positions of sampled
    ranks and distinct pixels on the CPU'). Elsewhere a binary search in the mask's cumsum, which needs no host sync
    (``nonzero`` would). Both give the same int64 positions.

    Args:
        mask: bool (P,). ``positions(ranks)``: int64 ranks of any shape, each in ``[0, mask.sum())``; returns int64
        of the shape of ``ranks``.
        search: the binary search (True) or the indexed list (False); None: by the mask's device, as above.
    """

    def __init__(self, mask: torch.Tensor, search: bool | None = None) -> None:
        self._search = mask.device.type != "cpu" if search is None else search
        self._table = mask.cumsum(0) if self._search else mask.nonzero().squeeze(1)

    def positions(self, ranks: torch.Tensor) -> torch.Tensor:
        if self._search:
            return torch.searchsorted(self._table, ranks + 1)
        return self._table[ranks]


def gather_pixels(maps: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """Rows ``maps[n, :, h, w]`` for flat positions over (N, H, W): int64 (M,) -> (M, D); no copy of ``maps``.

    Channels-last maps are gathered as whole contiguous rows (4-7x faster on CPU than the strided gather,
    coalesced on GPU); any other layout uses the strided gather. Same values and gradients."""
    rows = maps.permute(0, 2, 3, 1)
    if rows.is_contiguous():
        return rows.reshape(-1, maps.shape[1]).index_select(0, flat_positions)
    pixels = maps.shape[2] * maps.shape[3]
    return maps.flatten(2)[flat_positions // pixels, :, flat_positions % pixels]


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over a class's pixels are taken in: float32, or float64 for float64 inputs (never half: a class
    of a 256 x 256 batch sums more than half precision's largest number, 65 504)."""
    return torch.promote_types(dtype, torch.float32)


def summed_in_full_precision(method):
    """Run a row source's ``class_means`` with autocast off (its inputs cast by :func:`sum_dtype`): under ``--amp fp16``
    the sums of pyramid features over every pixel of a class, taken before the head, overflowed to inf at the paper
    size (the GPU-path audit: 1984 of MONA's 1984 prototype entries). Full-precision runs are unchanged."""
    @functools.wraps(method)
    def wrapped(self, labels: torch.Tensor, *args, **kwargs):
        with torch.autocast(labels.device.type, enabled=False):
            return method(self, labels, *args, **kwargs)
    return wrapped


class DenseReps:
    """Rows of a materialised float (N, D, H, W) map (the reference path)."""

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps = maps
        self.num_images, self.dim, self.height, self.width = maps.shape

    def rows(self, flat_positions: torch.Tensor) -> torch.Tensor:
        return gather_pixels(self.maps, flat_positions)

    @summed_in_full_precision
    def class_means(self, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        return class_prototypes(self.maps.to(sum_dtype(self.maps.dtype)), labels, valid, num_classes)

    def pooled(self, size: int) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.maps, size)

    def dense(self, images: slice | None = None) -> torch.Tensor:
        return self.maps if images is None else self.maps[images]


class _SparseReps:
    """Shared parts of the pyramid-backed sources: point requests (deduplicated when long) and bookkeeping."""

    def __init__(self, pyramid: Sequence[torch.Tensor], out_size: tuple[int, int], dim: int, mode: str) -> None:
        self.pyramid = list(pyramid)
        self.num_images = self.pyramid[0].shape[0]
        self.height, self.width = (int(s) for s in out_size)
        self.dim = dim
        sizes = tuple(tuple(int(s) for s in p.shape[2:]) for p in self.pyramid)
        self.ops = level_operators(sizes, (self.height, self.width), mode)
        self._level_rows: list[torch.Tensor] | None = None

    def level_rows(self) -> list[torch.Tensor]:
        if self._level_rows is None:
            self._level_rows = [_channels_last_rows(p) for p in self.pyramid]
        return self._level_rows

    def rows(self, flat_positions: torch.Tensor) -> torch.Tensor:
        if flat_positions.numel() >= _DEDUPLICATE_FROM:
            unique, inverse = self._distinct(flat_positions.reshape(-1))
            if unique.numel() < flat_positions.numel():
                return self._rows(unique).index_select(0, inverse)
        return self._rows(flat_positions.reshape(-1))

    def _distinct(self, flat_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.unique(flat_positions, return_inverse=True)`` (sorted distinct positions, and each entry's index
        among them) through a mark per pixel of the (N, H, W) grid instead of a sort, for long point lists and
        ACTION's footprint pixels; one host sync on a GPU (``nonzero``). 3x faster on the CPU at ACTION's quick
        negatives (``benchmarks/RESULTS.md``, 'Positions of sampled ranks and distinct pixels on the CPU').
        (M,) int64 -> (U,), (M,) int64."""
        grid = self.num_images * self.height * self.width
        used = torch.zeros(grid, dtype=torch.bool, device=flat_positions.device)
        used[flat_positions] = True
        unique = used.nonzero().squeeze(1)
        slot = torch.empty(grid, dtype=torch.int64, device=flat_positions.device)
        slot[unique] = torch.arange(unique.shape[0], device=flat_positions.device)
        return unique, slot[flat_positions]

    def _rows(self, flat_positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SparseMonaReps(_SparseReps):
    """``Pred(FE(pyramid))`` (student, with ``predictor``) or ``FE(pyramid)`` (teacher, ``predictor=None``)
    read at pixels, as class means or pooled, from the pyramid (MONA/ARCO, ``docs/methods.md``)."""

    def __init__(self, pyramid: Sequence[torch.Tensor], fe: nn.Module, predictor: nn.Sequential | None = None) -> None:
        out_size = tuple(pyramid[-1].shape[2:])
        super().__init__(pyramid, out_size, _matrix(fe.project).shape[0], "chain")
        self.fe, self.predictor = fe, predictor

    def _head(self, levels: list[torch.Tensor]) -> torch.Tensor:
        rows = mona_fe_rows(self.fe, levels)
        return predictor_rows(self.predictor, rows) if self.predictor is not None else rows

    def _rows(self, flat_positions: torch.Tensor) -> torch.Tensor:
        image, pixel = _decode(flat_positions, self.height, self.width)
        return self._head(sample_levels(self.pyramid, self.ops, image, pixel, self.level_rows()))

    @summed_in_full_precision
    def class_means(self, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        pyramid = [level.to(sum_dtype(level.dtype)) for level in self.pyramid]
        classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
        member = (labels.unsqueeze(1) == classes) & valid.bool().unsqueeze(1)          # (B, C, H, W)
        counts = member.sum((0, 2, 3))
        sums = self._head(masked_level_sums(pyramid, self.ops, member.to(pyramid[0].dtype)))  # (C, D)
        return sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype), counts > 0

    def pooled(self, size: int) -> torch.Tensor:
        rows = self._head(pooled_levels(self.pyramid, self.ops, size))
        return rows.view(self.num_images, size, size, -1).permute(0, 3, 1, 2)

    def dense(self, images: slice | None = None) -> torch.Tensor:
        """The full (N, D, H, W) map, or only ``images`` of it (per-image maps bound the temporaries of ``FE``)."""
        pyramid = self.pyramid if images is None else [level[images] for level in self.pyramid]
        maps = self.fe(pyramid)
        return self.predictor(maps) if self.predictor is not None else maps


_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # conv3x3 kernel order (ky, kx) = (dy + 1, dx + 1)
#: Points per chunk when ACTION's head runs on im2col rows (bounds the (m, 9 c) temporary).
_HEAD_CHUNK = 8192
#: Largest table of 9 projected copies of a level (floats; 256 MiB in float32) that ACTION's head builds.
_PROJECTED_FLOATS = 1 << 26
#: Cost of one sparse (gathered) multiply-add relative to one GEMM multiply-add, measured on the CPU
#: (``benchmarks/RESULTS.md``); decides which order ACTION's head uses per level.
_SPARSE_COST = 7.0


def _shift(masks: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = masks[..., y - dy, x - dx]`` (zero outside): (B, K, H, W) -> (B, K, H, W)."""
    height, width = masks.shape[-2:]
    padded = F.pad(masks, (1, 1, 1, 1))
    return padded[..., 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


class SparseActionReps(_SparseReps):
    """ACTION's head ``conv1x1(conv3x3(cat_i upsample(level_i)))`` read at pixels or as class means, from the
    pyramid (``docs/methods.md``): each point needs the 9 neighbours of its 3x3 footprint on every level. The
    upsampled levels are evaluated once per distinct pixel of the union of the footprints; every point then
    reads its 9 neighbours from those rows (im2col) and the two convolutions become two matrix products."""

    def __init__(self, pyramid: Sequence[torch.Tensor], head: nn.Module, out_size: Sequence[int]) -> None:
        conv3, conv1 = head.project[0], head.project[1]
        super().__init__(pyramid, tuple(out_size), conv1.weight.shape[0], "direct")
        self.conv3, self.conv1 = conv3, conv1

    def _kernel(self, levels: Sequence[int]) -> torch.Tensor:
        """conv3x3's weight restricted to the input channels of ``levels``: (D', c, 3, 3)."""
        bounds = [0]
        for p in self.pyramid:
            bounds.append(bounds[-1] + p.shape[1])
        return torch.cat([self.conv3.weight[:, bounds[i]:bounds[i + 1]] for i in levels], dim=1)

    def _head(self, columns: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """im2col columns (M, 9, c) (kernel position ky*3+kx, then input channel) of every level -> (M, D).
        ``counts`` (M,): the rows are sums over that many pixels (the bias is added that many times)."""
        return self._project(self._conv3(columns, range(len(self.pyramid))), counts)

    def _conv3(self, columns: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
        kernel = self._kernel(levels).flatten(2).transpose(1, 2).flatten(1)               # (D', 9 c), a small copy
        return F.linear(columns.flatten(1), kernel)

    def _project(self, hidden: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        weight = _matrix(self.conv1)
        if counts is None:
            return F.linear(hidden, weight, self.conv1.bias)
        return F.linear(hidden, weight) + counts.unsqueeze(1).to(hidden.dtype) * self.conv1.bias

    def _projects_first(self, level: torch.Tensor, taps: int, points: int) -> bool:
        """Whether a level is cheaper through its 9 projected copies. Per point, projecting first costs
        ``9 k^2 D'`` sparse multiply-adds (``_SPARSE_COST`` times a GEMM's each) plus the projection of the
        level's own cells spread over the points, ``(cells / points) 9 c D'``; reading the level at the
        footprints costs ``9 c D'`` GEMM multiply-adds. The copies must also stay small."""
        cells = level.shape[0] * level.shape[2] * level.shape[3]
        channels = level.shape[1]
        cheaper = taps * _SPARSE_COST + channels * cells / max(points, 1) < channels
        return cheaper and cells * len(_SHIFTS) * self.conv3.weight.shape[0] <= _PROJECTED_FLOATS

    def _rows(self, flat_positions: torch.Tensor) -> torch.Tensor:
        """Two exact orders of the same sums, chosen per level (``docs/methods.md`` "Sparse representations"):

        * coarse levels (fewer pixels than points): ``Z_δ = W_δ p`` at the level's own resolution for the 9
          kernel positions δ, then ``Σ_δ upsample(Z_δ)(q + δ)`` at each point q (interpolating D'-vectors);
        * fine levels: the upsampled level at the distinct pixels of the points' 3x3 footprints, then each
          point's 9 neighbours (im2col) times the kernel, accumulated in place when no gradient is taken.
        """
        height, width, pixels = self.height, self.width, self.height * self.width
        image, pixel = _decode(flat_positions, height, width)
        points = flat_positions.shape[0]
        first = [i for i, p in enumerate(self.pyramid)
                 if self._projects_first(p, self.ops.row_taps[i].k * self.ops.col_taps[i].k, points)]
        late = [i for i in range(len(self.pyramid)) if i not in first]
        hidden = None
        for i in first:
            level = self.pyramid[i]
            kernel = self._kernel([i]).permute(2, 3, 0, 1).reshape(-1, level.shape[1])         # (9 D', c_i)
            table = F.linear(self.level_rows()[i], kernel).view(-1, kernel.shape[0] // len(_SHIFTS))  # (B h w 9, D')
            part = interpolate_rows(table, self.ops, i, image, pixel, kind="footprint")
            hidden = part if hidden is None else hidden + part
        if late:
            y, x = pixel // width, pixel % width
            dy = torch.tensor([s[0] for s in _SHIFTS], device=y.device)
            dx = torch.tensor([s[1] for s in _SHIFTS], device=y.device)
            ny, nx = y.unsqueeze(1) + dy, x.unsqueeze(1) + dx                                 # (M, 9)
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            neighbour = image.unsqueeze(1) * pixels + ny.clamp(0, height - 1) * width + nx.clamp(0, width - 1)
            needed, inside_slot = self._distinct(neighbour[inside])                           # sorted distinct pixels
            n_image, n_pixel = _decode(needed, height, width)
            upsampled = torch.cat(sample_levels(self.pyramid, self.ops, n_image, n_pixel, self.level_rows(), late), dim=1)
            upsampled = torch.cat([upsampled, upsampled.new_zeros(1, upsampled.shape[1])])    # last row: zero padding
            slot = torch.full_like(neighbour, needed.shape[0])                                 # (M, 9): outside -> padding
            slot[inside] = inside_slot
            # without a graph to keep, each chunk's product is added into its rows in place: no (M, D')
            # concatenation and sum (the keys' reads, 464 MB each at 256 x 256)
            keep_graph = torch.is_grad_enabled() and (upsampled.requires_grad or self.conv3.weight.requires_grad)
            parts = []
            for start in range(0, slot.shape[0], _HEAD_CHUNK):
                chunk = slot[start:start + _HEAD_CHUNK]
                columns = upsampled.index_select(0, chunk.reshape(-1)).view(chunk.shape[0], len(_SHIFTS), -1)
                product = self._conv3(columns, late)           # (m, 9, c) columns; F.linear: autocast's dtype
                if keep_graph:
                    parts.append(product)
                else:
                    if hidden is None:
                        hidden = product.new_zeros(points, product.shape[1])
                    hidden[start:start + chunk.shape[0]] += product
            if keep_graph:
                part = parts[0] if len(parts) == 1 else torch.cat(parts)
                hidden = part if hidden is None else hidden + part
        return self._project(hidden)

    @summed_in_full_precision
    def class_means(self, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        pyramid = [level.to(sum_dtype(level.dtype)) for level in self.pyramid]
        classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
        member = (labels.unsqueeze(1) == classes) & valid.bool().unsqueeze(1)           # (B, C, H, W)
        counts = member.sum((0, 2, 3))
        masks = member.to(pyramid[0].dtype)
        # Σ_p m(p) u(p + δ) = Σ_q m(q - δ) u(q): the mask shifted by +δ, pulled back to every level (one call)
        shifted = torch.cat([_shift(masks, dy, dx) for dy, dx in _SHIFTS], dim=1)            # (B, 9 C, H, W)
        sums = torch.cat(masked_level_sums(pyramid, self.ops, shifted), dim=1)              # (9 C, c)
        columns = sums.view(len(_SHIFTS), num_classes, -1).transpose(0, 1)                  # (C, 9, c)
        sums = self._head(columns, counts)
        return sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype), counts > 0
