"""Random thin-plate-spline (TPS) warps for MONA/ARCO's equivariance loss ``L_eqv`` (docs/mona.md, 'TPS warp').

MONA (You et al., "Mine yOur owN Anatomy", TPAMI 2024) and ARCO (You et al., NeurIPS 2023) borrow SCOPS'
random-TPS equivariance: every image of the batch gets its own random warp ``T``, and the student's
prediction on ``T(x)`` is pulled towards ``T(prediction on x)``. The warp is a map from *target*
(output) coordinates to *source* (input) coordinates, in grid_sample's normalised units ``[-1, 1]``
(``x`` along the width, ``y`` along the height, ``align_corners=True``). As released (docs/mona.md, 'TPS warp'):

1. a TPS displacement: a ``grid_points x grid_points`` (5 x 5) lattice of control points on ``[-1, 1]^2``,
   each moved by ``U(-sigma, sigma)`` per axis (``sigma = 0.01``); the TPS
   ``f(p) = a_0 + A p + sum_i w_i U(|p - c_i|)`` with ``U(r) = r^2 log r^2`` interpolates the moved points
   exactly (``f(c_i) = c_i + delta_i``) and is the identity when every ``delta_i = 0``;
2. a similarity transform on top (the released ``affine`` mode): ``src = s R(theta) f(p) + t`` with
   ``theta ~ U(-60, 60)`` degrees, ``s ~ U(1/scale_max, 1/scale_min) = U(1/1.2, 1/0.8)`` (the scale applies
   target -> source, so ``s < 1`` zooms in) and ``t ~ U(-0.1, 0.1)^2``;
3. one horizontal mirror shared by the whole batch with probability 0.5: ``src_x <- -src_x``.

Sampling with the grid (:func:`apply_warp`) is bilinear with zero padding, as released. There is no
"paper" variant: the papers do not describe the warp beyond "random TPS"; every range is a field of
:class:`TPSConfig` so that ablations can shrink the warp (all zero/one = the identity).

Randomness: a ``torch.Generator`` (reproducible; parameters are drawn on the generator's device and then
moved) or, with ``generator=None``, torch's global RNG of ``device``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.errors import ConfigError, DataError
from methods.objective import check_number


@dataclass(frozen=True)
class TPSConfig:
    """Ranges of the random warp (defaults = as released; docs/mona.md, 'Defaults').

    * ``sigma`` (>= 0): control-point jitter half-width in normalised units (``--tps_sigma`` 0.01).
    * ``rotation_deg`` in [0, 180]: rotation ``~ U(-rotation_deg, rotation_deg)`` degrees (60).
    * ``scale_min``, ``scale_max`` (> 0, min <= max): the target->source scale is ``U(1/scale_max, 1/scale_min)``
      ((0.8, 1.2)); both 1 = no scaling.
    * ``translation`` (>= 0): shift ``~ U(-translation, translation)`` per axis, normalised units (0.1).
    * ``mirror_p`` in [0, 1]: probability of one horizontal mirror for the whole batch (0.5).
    * ``grid_points`` (int >= 2): control lattice side (5 -> 25 control points).
    """

    sigma: float = 0.01
    rotation_deg: float = 60.0
    scale_min: float = 0.8
    scale_max: float = 1.2
    translation: float = 0.1
    mirror_p: float = 0.5
    grid_points: int = 5

    def __post_init__(self) -> None:
        check_number(self, "sigma", minimum=0.0)
        check_number(self, "rotation_deg", minimum=0.0, maximum=180.0)
        check_number(self, "scale_min", minimum=0.0, min_inclusive=False)
        check_number(self, "scale_max", minimum=0.0, min_inclusive=False)
        if self.scale_min > self.scale_max:
            raise ConfigError(f"TPSConfig: scale_min must be <= scale_max, got {self.scale_min} > {self.scale_max} (swap or widen the scale range)")
        check_number(self, "translation", minimum=0.0)
        check_number(self, "mirror_p", minimum=0.0, maximum=1.0)
        check_number(self, "grid_points", minimum=2, integer=True)


def control_points(grid_points: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The regular control lattice: float (grid_points**2, 2) of (x, y) in [-1, 1], row-major (y outer)."""
    axis = torch.linspace(-1.0, 1.0, grid_points, device=device, dtype=dtype)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def identity_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """grid_sample's identity grid with ``align_corners=True``: float (H, W, 2) of (x, y) in [-1, 1]."""
    y = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    x = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def _radial_basis(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``U(r) = r^2 log r^2`` (0 at r = 0) between points (P, 2) and centres (n, 2) -> (P, n)."""
    r2 = (points[:, None, :] - centres[None, :, :]).pow(2).sum(-1)
    return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-30)), torch.zeros_like(r2))


@functools.lru_cache(maxsize=16)
def _tps_weights(grid_points: int, height: int, width: int, device: str) -> torch.Tensor:
    """``Φ L^{-1}[:, :n]``: float32 (H*W, n), the displacement at every pixel per unit move of each control point.

    ``L = [[K, P], [P^T, 0]]`` is the TPS system of the fixed lattice (``K_ij = U(|c_i - c_j|)``, ``P = [1, c]``)
    and ``Φ = [U(|p - c_j|), 1, p]`` its basis at the pixels. Solved once in float64 on the CPU and cached per
    (lattice, size, device): no per-step solve, hence no device synchronisation.
    """
    n = grid_points * grid_points
    centres = control_points(grid_points, dtype=torch.float64)
    system = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    system[:n, :n] = _radial_basis(centres, centres)
    affine = torch.cat([torch.ones(n, 1, dtype=torch.float64), centres], dim=1)  # (n, 3)
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    inverse = torch.linalg.inv(system)[:, :n]  # the right-hand side is [offsets; 0]
    pixels = identity_grid(height, width, dtype=torch.float64).reshape(-1, 2)
    basis = torch.cat([_radial_basis(pixels, centres), torch.ones(pixels.shape[0], 1, dtype=torch.float64), pixels], dim=1)
    return (basis @ inverse).to(torch.float32).to(device)


def tps_displacement(offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Displacement field of the TPS that moves the regular control lattice by ``offsets``.

    Args:
        offsets: float (B, n, 2), the (x, y) move of each of the ``n = g*g`` control points of
            :func:`control_points` (g inferred from n).
        height, width: the output grid size.

    Returns float (B, H, W, 2): ``f(p) - p`` at every pixel ``p`` of :func:`identity_grid`. The TPS
    interpolates (``f(c_i) = c_i + offsets_i``) and its affine part reproduces ``p`` exactly, so the field is
    linear in the offsets (zero offsets give an exactly zero field): one cached (H*W, n) matrix times the
    offsets, no solve per call.
    """
    batch, n, _ = offsets.shape
    g = math.isqrt(n)
    if g * g != n or g < 2 or offsets.shape[-1] != 2:
        raise DataError(f"tps_displacement: offsets must be (B, g*g, 2) with g >= 2, got {tuple(offsets.shape)} (one 2-D offset per control point)")
    weights = _tps_weights(g, height, width, str(offsets.device)).to(offsets.dtype)
    return torch.matmul(weights, offsets).reshape(batch, height, width, 2)


def _uniform(shape, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return (torch.rand(shape, generator=generator, device=where) * (high - low) + low).to(device)


def sample_tps_grid(
    batch: int,
    height: int,
    width: int,
    config: TPSConfig = TPSConfig(),
    *,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """One random warp per image (see the module docstring): float32 (B, H, W, 2) source coordinates.

    With ``sigma = 0``, ``rotation_deg = 0``, ``scale_min = scale_max = 1``, ``translation = 0`` and
    ``mirror_p = 0`` the result is exactly :func:`identity_grid`. Computed in float32 with autocast off: under
    ``--amp bf16`` the displacement's product ran in bfloat16 and moved sample points by up to 1.2 pixels at 256 x 256
    (the GPU-path review).
    """
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    with torch.autocast(device.type, enabled=False):
        return _sample_tps_grid(batch, height, width, config, generator, device)


def _sample_tps_grid(batch: int, height: int, width: int, config: TPSConfig, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor:
    """:func:`sample_tps_grid`'s body, with autocast off."""
    n = config.grid_points ** 2
    offsets = _uniform((batch, n, 2), -config.sigma, config.sigma, generator, device)
    angle = _uniform((batch,), -config.rotation_deg, config.rotation_deg, generator, device) * (math.pi / 180.0)
    scale = _uniform((batch,), 1.0 / config.scale_max, 1.0 / config.scale_min, generator, device)
    shift = _uniform((batch, 2), -config.translation, config.translation, generator, device)
    mirror = _uniform((), 0.0, 1.0, generator, device) < config.mirror_p

    points = identity_grid(height, width, device=device) + tps_displacement(offsets, height, width)  # (B, H, W, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    source = torch.einsum("bij,bhwj->bhwi", rotation * scale[:, None, None], points) + shift[:, None, None, :]
    flip = torch.where(mirror, -1.0, 1.0).to(source.dtype)
    return torch.stack([source[..., 0] * flip, source[..., 1]], dim=-1)


def apply_warp(tensor: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``tensor`` (B, C, H, W) at ``grid`` (B, H', W', 2): bilinear (or ``mode``), zero padding,
    ``align_corners=True`` (as released). Returns (B, C, H', W') in the tensor's dtype.

    Sampled in the tensor's dtype, at least float32, with autocast off, so that a half-precision tensor
    (MONA's logits and masks under ``--amp``) is read at the same points as a float32 one: the grid rounded to
    bfloat16 moved them by up to half a pixel at 256 x 256, so the equivariance target sat off its input (the GPU-path
    review). A float32 or float64 tensor is sampled as before."""
    if tensor.dim() != 4 or grid.dim() != 4 or grid.shape[0] != tensor.shape[0] or grid.shape[-1] != 2:
        raise DataError(
            f"apply_warp: need tensor (B, C, H, W) and grid (B, H', W', 2), got {tuple(tensor.shape)} and {tuple(grid.shape)} "
            f"(one grid per image, from sample_tps_grid)"
        )
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    with torch.autocast(tensor.device.type, enabled=False):
        sampled = F.grid_sample(tensor.to(dtype), grid.to(dtype), mode=mode, padding_mode="zeros", align_corners=True)
    return sampled.to(tensor.dtype)
