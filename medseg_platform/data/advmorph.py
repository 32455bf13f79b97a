"""Random ``AdvMorph`` diffeomorphic warp of the strong view (docs/data.md, 'AdvMorph warp').

After mixing and the photometric jitter, the released code warps the unlabelled images **once per
batch with probability p = 0.5** (one draw decides for the whole batch) with a random smooth
diffeomorphism, one field per image:

1. velocity ``v ~ U(-1, 1)`` of shape (2, H/8, W/8) per image (channel 0: x = column, channel 1:
   y = row displacement);
2. L2-normalised over the whole field of each image, times ``epsilon`` = 1.5;
3. Gaussian-smoothed (sigma 1, kernel forced to 7 taps, zero padding), bilinearly upsampled to H x W
   (``align_corners=False``);
4. integrated by scaling and squaring (8 steps): the map ``phi = id + v / 2**8`` composed with itself 8 times
   (``grid_sample`` with edge values outside); the displacement is ``phi - (id + v / 2**8)`` (the release moves its
   identity grid in place, so its displacement is short by ``v / 2**8``: reproduced);
5. the identity read at ``id + displacement`` (which clamps the positions to the image), its displacement smoothed
   again (zero padding), clamped to [-1, 1];
6. bilinear ``grid_sample`` of the images.

Only the images are warped, not the pseudo-labels or confidences: that is the released behaviour
(docs/data.md, 'AdvMorph warp'; it adds label noise of about a pixel and makes the two strong views differ
geometrically inside ``L_eqv``).  Apply the returned image in place of the strong view and keep the
labels as they are to reproduce it.

Conventions, as the released ``DemonsCompose`` fixes them (until 2026-12-06 the smoothing padded by replication, the
upsampling was corner-aligned and the second smoothing preceded the clamp; a review of the data pipeline against
the release found it: mean grid difference 0.2 px at 256 x 256):

* **Coordinates.** Everything is in ``grid_sample``'s normalised [-1, 1] coordinates with
  ``align_corners=True``: -1 and +1 are the *centres* of the corner pixels, one normalised unit is
  (W - 1) / 2 pixels along x and (H - 1) / 2 along y.  Consequences: the identity grid samples the
  pixel centres exactly, and a grid clamped to [-1, 1] never leaves the image, so the zero padding
  of the final sampling is never reached and a constant image stays exactly constant (no dark border).
* **Units of epsilon.** After step 2 the coarse field has Euclidean norm ``epsilon`` over all its
  2 * h * w entries (h = H // grid_factor, w = W // grid_factor), in normalised units.  So the RMS
  displacement per entry is ``epsilon / sqrt(2 h w)`` normalised units, i.e. about
  ``epsilon / sqrt(2 h w) * (W - 1) / 2`` pixels; for a square image that is
  ``~ epsilon * grid_factor / (2 sqrt 2)`` pixels, independent of the resolution: ~4.2 px for the
  released epsilon 1.5 and grid factor 8.  The first smoothing (sigma = 1 coarse cell) shrinks the
  white-noise field by about 1 / (2 sqrt(pi) sigma) ~ 0.28, so the final displacement is ~1 px RMS
  at 64 x 64 and at 256 x 256 (measured over 16 fields: mean |displacement| per axis 0.78 px at 64 x 64,
  0.85 px at 256 x 256, max 3-5 px; 0.95 and 0.90 px with the conventions before 2026-12-06).  Scaling and
  squaring changes the magnitude little at this size
  (the exponential of a small field is close to the field).
* **Clamp.** The final clamp to [-1, 1] (released) flattens the map where the displacement points out
  of the image: 3.1 % of the pixels at 64 x 64 and 0.8 % at 256 x 256 have a coordinate at the bound, the border
  rows included (they repeat edge pixels; the Jacobian determinant is ~0 there).  Elsewhere the map is
  orientation-preserving at the released size (the tests check det > 0 almost everywhere, also for a 10x field).
* **Smoothing.** Normalised ``kernel_size`` x ``kernel_size`` Gaussian with zero padding (the release's depthwise
  convolution), computed as two 1-D passes. Zero padding pulls a field towards 0 within (kernel_size // 2) pixels of
  the border. The second smoothing is applied to the displacement of the clamped map (the map minus the identity),
  so the identity itself is not smoothed.
* **Composition.** Inside scaling and squaring the map is resampled with bilinear ``grid_sample``,
  ``align_corners=True`` and ``padding_mode="border"`` (continued by its edge value). The upsampling in step 3 is
  bilinear with ``align_corners=False`` (the coarse cells' centres, not their corners, sit on the pixel grid).
* **Value range.** Bilinear sampling inside the image is a convex combination, so the output lies in
  the per-(image, channel) [min, max] of the input; the result is clamped to that range to remove
  float round-off (a [0, 1] image stays in [0, 1]; no extra device synchronisation).  The output is
  not re-quantised to 8 bits: the released warp runs on the float tensor after the PIL round trip.
* **Random numbers.** Drawn on CPU from the explicit generator and moved to the image's device.
  :func:`random_diffeomorphic_warp` always draws exactly ``1 + B * 2 * h * w`` values (the decision,
  then the velocity fields), whether or not the warp fires, so later augmentations see the same
  random stream for every p.

Errors for bad input are ``ValueError`` with a one-line message
``<function>: <what is wrong> (<what to do>)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg_platform.data.augment_checks import _check_generator, _check_image_batch, _check_probability, _fail, _to_device
from medseg_platform.data.photometric import gaussian_kernels

__all__ = [
    "coarse_field_size",
    "identity_grid",
    "diffeomorphic_grid",
    "random_diffeomorphic_warp",
]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_field_params(where: str, epsilon: float, sigma: float, kernel_size: int, steps: int,
                        grid_factor: int) -> None:
    """Check the warp's scalar parameters (all Python numbers)."""
    if not _is_real(epsilon) or float(epsilon) < 0:
        raise _fail(where, f"epsilon must be a finite number >= 0, got {epsilon!r}", "e.g. epsilon=1.5")
    if not _is_real(sigma) or float(sigma) < 0:
        raise _fail(where, f"sigma must be a finite number >= 0, got {sigma!r}",
                    "e.g. sigma=1.0 (0 disables smoothing)")
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise _fail(where, f"kernel_size must be an odd positive int, got {kernel_size!r}", "e.g. kernel_size=7")
    if not _is_int(steps) or steps < 0:
        raise _fail(where, f"steps must be an int >= 0, got {steps!r}", "e.g. steps=8")
    if not _is_int(grid_factor) or grid_factor < 1:
        raise _fail(where, f"grid_factor must be a positive int, got {grid_factor!r}", "e.g. grid_factor=8")


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def coarse_field_size(height: int, width: int, grid_factor: int = 8) -> tuple[int, int]:
    """Size (h, w) of the random velocity field: ``(max(1, H // grid_factor), max(1, W // grid_factor))``.

    The released field is H/8 x W/8 (32 x 32 for 256 x 256 patches); sizes that are not multiples of
    ``grid_factor`` are rounded down, with at least one cell.
    """
    return max(1, height // grid_factor), max(1, width // grid_factor)


def identity_grid(height: int, width: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Identity sampling grid for ``grid_sample(..., align_corners=True)``.

    Returns: (1, H, W, 2) with ``[..., 0]`` = x (column) and ``[..., 1]`` = y (row), from -1 (first
    pixel centre) to +1 (last pixel centre).  A size of 1 gives -1, which ``align_corners=True`` maps to
    that single pixel.
    """
    from methods.tps import identity_grid as single

    return single(height, width, device, dtype).unsqueeze(0)


def _smooth(field: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Gaussian smoothing of every channel with zero padding, as released (a depthwise ``nn.Conv2d`` with
    ``padding=kernel_size // 2`` and a normalised ``kernel_size`` x ``kernel_size`` Gaussian), computed as two 1-D
    passes (the same kernel: the 2-D Gaussian is the outer product of the 1-D one; equal up to float rounding).

    Args: field (B, K, H, W) floating; sigma in pixels (0 = identity); kernel_size odd.
    Returns: new (B, K, H, W).
    """
    if sigma == 0 or kernel_size == 1:
        return field.clone()
    b, k, h, w = field.shape
    r = kernel_size // 2
    kern = gaussian_kernels(torch.tensor([float(sigma)], dtype=torch.float64), half_width=r)
    kern = kern.to(device=field.device, dtype=field.dtype).view(-1)
    x = F.conv2d(field.reshape(1, b * k, h, w), kern.view(1, 1, -1, 1).expand(b * k, 1, -1, 1), padding=(r, 0), groups=b * k)
    x = F.conv2d(x, kern.view(1, 1, 1, -1).expand(b * k, 1, 1, -1), padding=(0, r), groups=b * k)
    return x.view(b, k, h, w)


def _identity_map(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """The identity map (B, 2, H, W), channel 0 = x, in [-1, 1] (``align_corners=True`` coordinates)."""
    return identity_grid(height, width, like.device, like.dtype).permute(0, 3, 1, 2).expand(batch, 2, height, width)


def _compose(field: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``field`` (B, 2, H, W) read at the positions ``at`` (B, 2, H, W): bilinear, edge values outside, as the released
    ``applyComposition2D`` (``grid_sample(..., padding_mode="border", align_corners=True)``)."""
    return F.grid_sample(field, at.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=True)


def _scaling_and_squaring(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Displacement of exp(velocity) by scaling and squaring, as released (step 4 of docs/data.md, 'AdvMorph warp').

    The map ``phi = id + v / 2**steps`` is composed with itself ``steps`` times (``phi <- phi o phi``, the map read
    at its own positions with edge values outside). The displacement is then ``phi - (id + v / 2**steps)``: the
    released code adds the scaled velocity to its identity grid in place and subtracts that grid at the end, so its
    displacement is short of ``phi - id`` by ``v / 2**steps`` (kept: it is the warp the methods trained with).

    Args: velocity (B, 2, H, W) in normalised units (channel 0 = x); steps >= 0.
    Returns: new (B, 2, H, W) displacement in normalised units.
    """
    b, _, h, w = velocity.shape
    start = _identity_map(b, h, w, velocity) + velocity / float(2 ** steps)
    phi = start
    for _ in range(steps):
        phi = _compose(phi, phi)
    return phi - start


def _grid_from_velocity(velocity: torch.Tensor, height: int, width: int, epsilon: float, sigma: float,
                        kernel_size: int, steps: int) -> torch.Tensor:
    """Steps 2-5 of the warp from raw U(-1, 1) coarse fields, as the released ``DemonsCompose`` (docs/data.md,
    'AdvMorph warp').

    Args: velocity (B, 2, h, w) floating, on the target device.
    Returns: (B, H, W, 2) sampling grid in [-1, 1] (align_corners=True convention).
    """
    b = velocity.shape[0]
    norm = velocity.reshape(b, -1).norm(dim=1).view(b, 1, 1, 1)
    v = velocity / (norm + 1e-20) * float(epsilon)
    v = _smooth(v, sigma, kernel_size)
    v = F.interpolate(v, size=(height, width), mode="bilinear", align_corners=False)
    ident = _identity_map(b, height, width, v)
    composed = _compose(ident, _scaling_and_squaring(v, steps) + ident)  # the identity read there: clamped positions
    composed = _smooth(composed - ident, sigma, kernel_size) + ident
    return composed.clamp(-1.0, 1.0).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def diffeomorphic_grid(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    epsilon: float = 1.5,
    sigma: float = 1.0,
    kernel_size: int = 7,
    steps: int = 8,
    grid_factor: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random diffeomorphic sampling grids, one per image (docs/data.md, 'AdvMorph warp').

    Draws ``batch * 2 * h * w`` values U(-1, 1) from ``generator`` on CPU (h, w from
    :func:`coarse_field_size`, in the order (B, 2, h, w)), moves them to ``device`` and builds the grid
    as described in the module docstring (normalise to norm ``epsilon``, smooth, upsample, scaling and
    squaring, read the identity there, smooth the displacement, clamp).

    Args:
        batch, height, width: B, H, W of the grids (positive ints).
        generator: CPU ``torch.Generator``.
        device: where the grid is built.
        epsilon: L2 norm of each coarse velocity field in normalised units (0 gives the identity).
        sigma, kernel_size: Gaussian smoothing (in pixels of the grid it is applied to); released 1.0, 7.
        steps: scaling-and-squaring steps (0 gives the identity, as released: see step 4 above).
        grid_factor: downsampling of the velocity field relative to H x W.
        dtype: floating dtype of the grid (float32 or float64).

    Returns:
        (B, H, W, 2) ``dtype`` on ``device``: ``[..., 0]`` = x (column), ``[..., 1]`` = y (row), values in
        [-1, 1], for ``F.grid_sample(image, grid, align_corners=True)``.
    """
    where = "diffeomorphic_grid"
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if not _is_int(value) or value < 1:
            raise _fail(where, f"{name} must be a positive int, got {value!r}", "pass the image batch's B, H, W")
    _check_generator(where, generator)
    _check_field_params(where, epsilon, sigma, kernel_size, steps, grid_factor)
    if dtype not in (torch.float32, torch.float64):
        raise _fail(where, f"dtype must be torch.float32 or torch.float64, got {dtype}", "pass torch.float32")
    device = torch.device(device)
    h, w = coarse_field_size(height, width, grid_factor)
    velocity = torch.rand((batch, 2, h, w), generator=generator, dtype=torch.float32) * 2.0 - 1.0
    velocity = _to_device(velocity.to(dtype), device)
    return _grid_from_velocity(velocity, height, width, epsilon, sigma, kernel_size, steps)


def random_diffeomorphic_warp(
    image: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    epsilon: float = 1.5,
    sigma: float = 1.0,
    kernel_size: int = 7,
    steps: int = 8,
    grid_factor: int = 8,
) -> torch.Tensor:
    """Random ``AdvMorph`` warp of a batch of images, once per batch with probability ``p`` (docs/data.md,
    'AdvMorph warp').

    One u ~ U[0, 1) decides for the whole batch (``u < p`` fires); when it fires every image gets its
    own random diffeomorphism (:func:`diffeomorphic_grid`) and is resampled bilinearly
    (``align_corners=True``, zero padding -- never reached, the grid is clamped to [-1, 1]).  Images
    only: warp neither pseudo-labels nor confidences, as released (docs/data.md, 'AdvMorph warp').

    Random numbers: exactly ``1 + B * 2 * h * w`` values are drawn from ``generator`` on every call,
    whether the warp fires or not (h, w = :func:`coarse_field_size` (H, W, grid_factor)); with p = 0
    the result is an exact copy.

    Args:
        image: (B, C, H, W) floating tensor, any device (float16/bfloat16 are sampled in float32).
        generator: CPU ``torch.Generator``.
        p: probability that the batch is warped (released 0.5).
        epsilon, sigma, kernel_size, steps, grid_factor: see :func:`diffeomorphic_grid`
            (released 1.5, 1.0, 7, 8, 8).

    Returns:
        new (B, C, H, W) tensor, same dtype and device, values within each (image, channel)'s input
        [min, max]; the input is not modified.
    """
    where = "random_diffeomorphic_warp"
    _check_image_batch(where, "image", image)
    _check_generator(where, generator)
    _check_probability(where, "p", p)
    _check_field_params(where, epsilon, sigma, kernel_size, steps, grid_factor)
    b, _, height, width = image.shape
    fire = bool(torch.rand((), generator=generator) < p)  # CPU draw: no device synchronisation
    h, w = coarse_field_size(height, width, grid_factor)
    velocity = torch.rand((b, 2, h, w), generator=generator, dtype=torch.float32) * 2.0 - 1.0
    if not fire:
        return image.clone()
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    velocity = _to_device(velocity.to(work), image.device)
    grid = _grid_from_velocity(velocity, height, width, epsilon, sigma, kernel_size, steps)
    x = image.to(work)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.minimum(torch.maximum(out, lo), hi).to(image.dtype)
