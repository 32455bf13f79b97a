"""Augmentations as batched torch ops (docs/data.md, 'Resizing', 'Weak view', 'Strong view').

Three entry points, all vectorised over the batch and device-agnostic (every tensor they
create lives on the input's device; random numbers come only from an explicit CPU
``torch.Generator`` and are moved to the device afterwards):

* :func:`resize_slice` / :func:`resize_to_patch` -- the dataloader resize to the patch size
  (nearest for image and label as in MONA/ARCO; the cubic spline image zoom as in ACTION).
* :func:`weak_augment` -- the MONA/ARCO ``RandomGenerator`` weak view (rot90 + flip, or a small
  rotation, or identity).  ACTION's weak view has no geometric augmentation: call it with
  ``p_rot90_flip=0, p_rotate=0`` (or skip it), i.e. resize only.
* :func:`strong_augment` -- the strong view of unlabelled images: CutMix / ClassMix / CutOut,
  then brightness/contrast jitter and Gaussian blur, with the released 8-bit PIL round-trip
  (:mod:`methods.intensity`) by default.  It is :func:`strong_mix` then :func:`strong_perturb`, the two
  stages that training calls (the engine's strong-view adapter: one mix, then one perturbation per strong
  draw).  The random ``AdvMorph`` diffeomorphic warp that the released code applies after these steps
  (docs/data.md, 'AdvMorph warp') lives in :mod:`medseg_platform.data.advmorph`; the adapter
  chains it after :func:`strong_perturb`.

Nothing is modified in place: every function returns new tensors.  (The released pretraining
jitter writes into the shared batch tensor, docs/data.md, 'Pretraining views': :func:`pretrain_views` reproduces its
effect by returning the jittered images for the student too, not by writing in place.)

Errors for bad input are ``ValueError`` with a one-line message
``<function>: <what is wrong> (<what to do>)`` naming the offending argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg_platform.config import IMAGE_RESIZE_MODES
from methods.intensity import from_grey_levels, round_trip_8bit, to_grey_levels
from methods.isd_pretrain import PRETRAIN_COINS

__all__ = [
    "WeakParams",
    "MIX_MODES",
    "resize_slice",
    "resize_to_patch",
    "sample_weak_params",
    "apply_weak",
    "weak_augment",
    "sample_boxes",
    "box_masks",
    "classmix_keep_masks",
    "mix_batch",
    "round_trip_8bit",
    "adjust_brightness",
    "adjust_contrast",
    "color_jitter",
    "gaussian_kernels",
    "gaussian_blur",
    "pil_gaussian_blur",
    "random_gaussian_blur",
    "strong_mix",
    "strong_perturb",
    "pretrain_views",
    "strong_augment",
]

MIX_MODES = ("cutmix", "classmix", "cutout", "none")

#: Largest blur sigma of the released strong view (radius ~ U(0.15, 1.15)).
_SIGMA_MAX = 1.15
#: Half-width of the fixed blur kernel: ceil(3 * 1.15) = 4, i.e. 9 taps.
_BLUR_HALF_WIDTH = math.ceil(3 * _SIGMA_MAX)


# --------------------------------------------------------------------------------------------
# validation helpers (shape/dtype checks only: no device synchronisation)
# --------------------------------------------------------------------------------------------


def _fail(where: str, what: str, todo: str) -> ValueError:
    """Build the one-line ``ValueError`` used for all bad input."""
    return ValueError(f"{where}: {what} ({todo})")


def _check_generator(where: str, generator: torch.Generator) -> None:
    """Require a CPU ``torch.Generator`` (the per-sample parameters are drawn on CPU)."""
    if not isinstance(generator, torch.Generator):
        raise _fail(where, f"generator must be a torch.Generator, got {type(generator).__name__}",
                    "pass torch.Generator().manual_seed(seed)")
    if generator.device.type != "cpu":
        raise _fail(where, f"generator must live on CPU, got device {generator.device}",
                    "create it with torch.Generator() (no device argument)")


def _check_probability(where: str, name: str, p: float) -> None:
    """Require a Python number in [0, 1]."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise _fail(where, f"{name} must be a probability in [0, 1], got {p!r}", "pass a float in [0, 1]")


def _check_image_batch(where: str, name: str, image: torch.Tensor) -> None:
    """Require a floating (B, C, H, W) tensor with B >= 1."""
    if not isinstance(image, torch.Tensor):
        raise _fail(where, f"{name} must be a torch.Tensor, got {type(image).__name__}", "pass a (B,1,H,W) tensor")
    if image.ndim != 4:
        raise _fail(where, f"{name} must be 4-D (B,C,H,W), got shape {tuple(image.shape)}",
                    "add the channel axis with image.unsqueeze(1)")
    if not image.is_floating_point():
        raise _fail(where, f"{name} must be a floating tensor, got {image.dtype}", "convert with .float()")
    if image.shape[0] < 1 or image.shape[2] < 1 or image.shape[3] < 1:
        raise _fail(where, f"{name} must be non-empty, got shape {tuple(image.shape)}", "pass at least one image")


def _check_map_batch(where: str, name: str, x: torch.Tensor, image: torch.Tensor, integer: bool) -> None:
    """Require a (B, H, W) tensor matching ``image`` (B, C, H, W) in B/H/W and device."""
    if not isinstance(x, torch.Tensor):
        raise _fail(where, f"{name} must be a torch.Tensor, got {type(x).__name__}", "pass a (B,H,W) tensor")
    expected = (image.shape[0], image.shape[2], image.shape[3])
    if x.ndim != 3 or tuple(x.shape) != expected:
        raise _fail(where, f"{name} must have shape (B,H,W)={expected} to match the image, got {tuple(x.shape)}",
                    "pass one (H,W) map per image")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise _fail(where, f"{name} must be an integer tensor, got {x.dtype}", "convert with .long()")
    if not integer and not x.is_floating_point():
        raise _fail(where, f"{name} must be a floating tensor, got {x.dtype}", "convert with .float()")
    if x.device != image.device:
        raise _fail(where, f"{name} is on {x.device} but the image is on {image.device}", "move both to one device")


def _check_range_pair(where: str, name: str, pair: Sequence[float]) -> None:
    """Require (lo, hi) with 0 <= lo <= hi (factor or sigma ranges)."""
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
            or not 0 <= pair[0] <= pair[1]):
        raise _fail(where, f"{name} must be a pair (lo, hi) with 0 <= lo <= hi, got {pair!r}", "e.g. (0.75, 1.25)")


def _check_factor(where: str, name: str, factor: torch.Tensor, x: torch.Tensor) -> None:
    """Require a (B,) tensor of per-image factors for the (B, C, H, W) batch ``x``."""
    if not isinstance(factor, torch.Tensor) or factor.shape != (x.shape[0],):
        raise _fail(where, f"{name} must be a (B,)=({x.shape[0]},) tensor, got {getattr(factor, 'shape', factor)!r}",
                    "pass one value per image")


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small CPU tensor to ``device`` without blocking the host on CUDA (pinned, async copy)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --------------------------------------------------------------------------------------------
# resize to the patch size (dataloader)
# --------------------------------------------------------------------------------------------


def _patch_hw(where: str, patch_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise ``patch_size`` (int or (h, w)) to a pair of positive ints."""
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        pair = (patch_size, patch_size)
    elif isinstance(patch_size, (tuple, list)) and len(patch_size) == 2:
        pair = tuple(patch_size)
    else:
        raise _fail(where, f"patch_size must be an int or a pair (h, w), got {patch_size!r}", "e.g. 256 or (256, 256)")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise _fail(where, f"patch_size entries must be positive ints, got {patch_size!r}", "e.g. 256 or (256, 256)")
    return int(pair[0]), int(pair[1])


def _nearest_zoom_indices(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices of ``scipy.ndimage.zoom(order=0)`` along one axis (docs/data.md, 'Resizing').

    scipy's zoom (``grid_mode=False``) aligns the corner pixels: output index ``o`` samples input
    coordinate ``o * (n_in - 1) / (n_out - 1)``, rounded half up, computed in float64 as scipy does.
    When rounding error puts the last coordinate just above ``n_in - 1`` scipy fills that row/column
    with 0 (``mode="constant"``); the returned validity reproduces that quirk (it never happens for an
    output size of 256 and inputs of 100-500 px).

    Returns: (n_out,) int64 source indices and (n_out,) bool validity, on ``device``.
    """
    if n_out == 1 or n_in == 1:
        return (torch.zeros(n_out, dtype=torch.int64, device=device),
                torch.ones(n_out, dtype=torch.bool, device=device))
    step = (n_in - 1) / (n_out - 1)
    coord = torch.arange(n_out, dtype=torch.float64, device=device) * step
    return torch.floor(coord + 0.5).to(torch.int64).clamp_(0, n_in - 1), coord <= n_in - 1


def resize_slice(
    image: torch.Tensor,
    label: torch.Tensor,
    patch_size: int | Sequence[int] = 256,
    image_mode: str = "nearest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize one slice and its label to the patch size (docs/data.md, 'Resizing').

    As released in MONA/ARCO (``scipy.ndimage.zoom`` with order 0 for both), the image and the label
    are resized with corner-aligned nearest neighbour; the indices reproduce scipy's exactly.
    ``image_mode="cubic"`` is ACTION's released image zoom (the label stays nearest): ``scipy.ndimage.zoom`` with
    order 3 (a prefiltered cubic B-spline) and scipy's default boundary handling, called as the released loader
    calls it, so the values are scipy's (not clamped: a spline can overshoot the input's range).
    ``image_mode="bicubic"`` is torch's Keys bicubic convolution on the same corner-aligned grid
    (``align_corners=True``), clamped to [0, 1]: another interpolant, not the released one (on noise it differs from
    the spline by up to about 0.2, everywhere in the image, not only near edges), kept because ACTION trials trained
    before ``"cubic"`` existed recorded it (docs/data.md, 'Resizing').

    Args:
        image: (H, W) floating tensor (values in [0, 1] for the bicubic clamp to be meaningful).
        label: (H, W) integer tensor (e.g. uint8 class ids), same shape and device as ``image``.
        patch_size: output size, int or (h, w).
        image_mode: ``"nearest"`` (MONA/ARCO), ``"cubic"`` (ACTION) or ``"bicubic"`` (see above).

    Returns:
        image (1, h, w) float32 and label (h, w) int64, on the input's device.
    """
    where = "resize_slice"
    h, w = _patch_hw(where, patch_size)
    if not isinstance(image, torch.Tensor) or image.ndim != 2:
        raise _fail(where, f"image must be a 2-D (H,W) tensor, got {getattr(image, 'shape', type(image))}",
                    "pass one slice")
    if not image.is_floating_point():
        raise _fail(where, f"image must be a floating tensor, got {image.dtype}", "convert with .float()")
    if not isinstance(label, torch.Tensor) or tuple(label.shape) != tuple(image.shape):
        raise _fail(where, f"label must have the image's shape {tuple(image.shape)}, "
                    f"got {getattr(label, 'shape', type(label))}", "pass the slice's own label")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise _fail(where, f"label must be an integer tensor, got {label.dtype}", "convert with .long()")
    if label.device != image.device:
        raise _fail(where, f"label is on {label.device} but image is on {image.device}", "move both to one device")
    if image_mode not in IMAGE_RESIZE_MODES:
        raise _fail(where, f"image_mode must be one of {', '.join(map(repr, IMAGE_RESIZE_MODES))}, got {image_mode!r}",
                    "pick one of them")

    rows, row_ok = _nearest_zoom_indices(image.shape[0], h, image.device)
    cols, col_ok = _nearest_zoom_indices(image.shape[1], w, image.device)
    inside = row_ok.view(-1, 1) & col_ok.view(1, -1)
    label_out = label.index_select(0, rows).index_select(1, cols).to(torch.int64) * inside
    if image_mode == "nearest":
        image_out = image.index_select(0, rows).index_select(1, cols).to(torch.float32) * inside
    elif image_mode == "cubic":
        from scipy import ndimage

        source = image.detach().cpu().numpy()
        zoomed = ndimage.zoom(source, (h / source.shape[0], w / source.shape[1]), order=3)
        image_out = torch.from_numpy(zoomed.astype(np.float32, copy=False)).to(image.device)
    else:
        image_out = F.interpolate(image.to(torch.float32)[None, None], size=(h, w), mode="bicubic",
                                  align_corners=True)[0, 0].clamp_(0.0, 1.0)
    return image_out.unsqueeze(0), label_out


def resize_to_patch(
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    patch_size: int | Sequence[int] = 256,
    image_mode: str = "nearest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a list of differently sized slices and stack them (docs/data.md, 'Resizing').

    Slices have native sizes (~150-430 px), so each is resized on its own with :func:`resize_slice`
    (a loop over the list is unavoidable); the results are stacked.

    Args:
        images: sequence of (H_i, W_i) floating tensors.
        labels: sequence of (H_i, W_i) integer tensors, one per image.
        patch_size: output size, int or (h, w).
        image_mode: ``"nearest"`` (MONA/ARCO), ``"cubic"`` (ACTION) or ``"bicubic"`` (:func:`resize_slice`).

    Returns:
        images (B, 1, h, w) float32 and labels (B, h, w) int64.
    """
    where = "resize_to_patch"
    if isinstance(images, torch.Tensor) or isinstance(labels, torch.Tensor):
        raise _fail(where, "images and labels must be sequences of (H,W) tensors",
                    "wrap a single slice as [image] or use resize_slice")
    if len(images) == 0 or len(images) != len(labels):
        raise _fail(where, f"images and labels must be non-empty and of equal length, got {len(images)} and "
                    f"{len(labels)}", "pass one label per image")
    pairs = [resize_slice(im, lb, patch_size, image_mode) for im, lb in zip(images, labels)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------------------------
# weak view (MONA/ARCO RandomGenerator)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeakParams:
    """Per-sample weak-view parameters, all on CPU (docs/data.md, 'Weak view').

    Attributes:
        kind: (B,) int64, 0 identity, 1 rot90 + flip, 2 rotation.
        k: (B,) int64 in {0,1,2,3}, quarter turns (used where kind == 1).
        flip_axis: (B,) int64 in {0,1}, 0 flips rows (up/down), 1 flips columns (used where kind == 1).
        angle: (B,) int64 degrees in [-max_angle, max_angle - 1] (used where kind == 2).
        matrix: (B, 2, 2) float64, maps centred output coordinates (col, row) to centred source coordinates.
    """

    kind: torch.Tensor
    k: torch.Tensor
    flip_axis: torch.Tensor
    angle: torch.Tensor
    matrix: torch.Tensor


def _dihedral_matrices(k: torch.Tensor, flip_axis: torch.Tensor) -> torch.Tensor:
    """Source maps of ``flip(rot90(x, k), axis)`` in centred (col, row) coordinates.

    ``torch.rot90(x, 1)`` (= ``np.rot90``) gives ``out[i, j] = x[j, N-1-i]``, i.e. source = R @ out with
    R = [[0, -1], [1, 0]]; flipping rows negates the row coordinate, flipping columns the column one.
    The flip is applied after the rotation, so source = R^k @ F @ out.

    Args: k (B,) int64 in {0..3}; flip_axis (B,) int64 in {0, 1}.
    Returns: (B, 2, 2) float64 with entries in {-1, 0, 1}.
    """
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    powers = torch.stack([torch.linalg.matrix_power(quarter, n) for n in range(4)])  # (4, 2, 2)
    flips = torch.stack([torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)),   # axis 0: rows
                         torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))])  # axis 1: cols
    return powers[k] @ flips[flip_axis]


def _rotation_matrices(angle_deg: torch.Tensor) -> torch.Tensor:
    """Source maps of ``scipy.ndimage.rotate(x, angle, reshape=False)`` in centred (col, row) coordinates.

    A positive angle turns the picture counter-clockwise as displayed (row 0 at the top), as scipy does:
    source = [[cos, -sin], [sin, cos]] @ out.

    Args: angle_deg (B,) degrees (any real dtype).
    Returns: (B, 2, 2) float64.
    """
    theta = torch.deg2rad(angle_deg.to(torch.float64))
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def sample_weak_params(
    batch_size: int,
    generator: torch.Generator,
    p_rot90_flip: float = 0.5,
    p_rotate: float = 0.25,
    max_angle: int = 20,
) -> WeakParams:
    """Draw the per-sample weak-view choices on CPU (docs/data.md, 'Weak view', M/A ``RandomGenerator``).

    Probabilities are overall (unconditional): a single u ~ U[0,1) per sample selects rot90+flip if
    u < p_rot90_flip, a rotation if u < p_rot90_flip + p_rotate, identity otherwise.  The released
    chain "p=0.5 rot/flip, else p=0.5 rotate, else p=0.5 no-op centre crop" has overall
    probabilities 0.5 / 0.25 / 0.25 (the crop pads 3 and crops back to 256, a no-op, so it is not
    implemented).  The same number of random values is drawn whatever the choices are.

    Returns: :class:`WeakParams` (CPU tensors).
    """
    where = "sample_weak_params"
    _check_generator(where, generator)
    _check_probability(where, "p_rot90_flip", p_rot90_flip)
    _check_probability(where, "p_rotate", p_rotate)
    if p_rot90_flip + p_rotate > 1.0 + 1e-12:
        raise _fail(where, f"p_rot90_flip + p_rotate must be <= 1, got {p_rot90_flip} + {p_rotate}",
                    "they are overall probabilities of exclusive branches")
    if not isinstance(max_angle, int) or isinstance(max_angle, bool) or max_angle < 0:
        raise _fail(where, f"max_angle must be a non-negative int, got {max_angle!r}", "e.g. 20")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise _fail(where, f"batch_size must be a positive int, got {batch_size!r}", "pass image.shape[0]")

    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    k = torch.randint(0, 4, (batch_size,), generator=generator)
    flip_axis = torch.randint(0, 2, (batch_size,), generator=generator)
    angle = torch.randint(-max_angle, max(max_angle, 1), (batch_size,), generator=generator)  # 0 if max_angle=0
    kind = torch.where(u < p_rot90_flip, 1, torch.where(u < p_rot90_flip + p_rotate, 2, 0))
    eye = torch.eye(2, dtype=torch.float64).expand(batch_size, 2, 2)
    sel = kind[:, None, None]
    matrix = torch.where(sel == 1, _dihedral_matrices(k, flip_axis),
                         torch.where(sel == 2, _rotation_matrices(angle), eye))
    return WeakParams(kind=kind, k=k, flip_axis=flip_axis, angle=angle, matrix=matrix)


def _source_indices(matrix: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest source pixel of every output pixel under per-sample centred linear maps.

    Coordinates are centred on the array centre ((W-1)/2, (H-1)/2), as in ``scipy.ndimage.rotate`` with
    ``reshape=False`` and in ``grid_sample(align_corners=False)``.  Rounding is half up (scipy's order-0
    rule).  As in scipy's ``mode="constant"``, a pixel is filled when its *unrounded* source coordinate
    lies outside [0, n-1] (``grid_sample`` with zero padding tests the rounded one instead, so it keeps
    a slightly larger area).  Dihedral maps have entries in {-1, 0, 1} and half-integer centres, so
    their indices are exact and always valid.

    Args: matrix (B, 2, 2) floating on the target device.
    Returns: flat source index (B, H*W) int64 (clamped in range) and validity (B, H*W) bool.
    """
    device, dtype = matrix.device, matrix.dtype
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cols = torch.arange(width, device=device, dtype=dtype) - cx
    rows = torch.arange(height, device=device, dtype=dtype) - cy
    u = cols.view(1, 1, width)
    v = rows.view(1, height, 1)
    m = matrix.view(-1, 4, 1, 1)
    col = m[:, 0] * u + m[:, 1] * v + cx
    row = m[:, 2] * u + m[:, 3] * v + cy
    valid = (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)
    src_col = torch.floor(col + 0.5)
    src_row = torch.floor(row + 0.5)
    col_i = src_col.clamp(0, width - 1).to(torch.int64)
    row_i = src_row.clamp(0, height - 1).to(torch.int64)
    flat = row_i * width + col_i
    return flat.view(matrix.shape[0], -1), valid.view(matrix.shape[0], -1)


def apply_weak(image: torch.Tensor, label: torch.Tensor, params: WeakParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply drawn weak-view parameters to a batch (docs/data.md, 'Weak view').

    Every pixel of image and label is read from the same source pixel (one ``gather`` with a
    per-sample index map), so image and label move identically.  rot90/flip are exact pixel
    permutations; rotations are nearest-neighbour (as the released ``ndimage.rotate(order=0)``) with
    the same output size, image filled with 0 and label with 0 outside the source.  Index maps are
    computed in float64 and reproduce ``scipy.ndimage.rotate(order=0, reshape=False)`` pixel for pixel.
    This is ``affine_grid`` + ``grid_sample(mode="nearest", align_corners=False)`` except for the
    rounding of exact half-pixel ties and the border rule (see :func:`_source_indices`), done as one
    integer ``gather`` so the int64 label is never converted to float and rot90/flip stay exact.

    Args:
        image: (B, C, H, W) floating.
        label: (B, H, W) integer.
        params: from :func:`sample_weak_params` with the same B.

    Returns: new image (B, C, H, W) and label (B, H, W), same dtypes/device as the inputs.
    """
    where = "apply_weak"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "label", label, image, integer=True)
    b, c, h, w = image.shape
    if params.matrix.shape != (b, 2, 2):
        raise _fail(where, f"params are for {params.matrix.shape[0]} samples but the batch has {b}",
                    "draw params with batch_size=image.shape[0]")
    if h != w and bool(((params.kind == 1) & (params.k % 2 == 1)).any()):
        raise _fail(where, f"rot90 by an odd k needs square images, got H×W={h}×{w}",
                    "resize to a square patch first or use p_rot90_flip=0")
    matrix = _to_device(params.matrix, image.device)  # float64: matches scipy at near-ties
    flat, valid = _source_indices(matrix, h, w)
    image_out = image.reshape(b, c, h * w).gather(2, flat.unsqueeze(1).expand(b, c, h * w))
    image_out = torch.where(valid.unsqueeze(1), image_out, torch.zeros((), dtype=image.dtype, device=image.device))
    label_out = label.reshape(b, h * w).gather(1, flat)
    label_out = torch.where(valid, label_out, torch.zeros((), dtype=label.dtype, device=label.device))
    return image_out.view(b, c, h, w), label_out.view(b, h, w)


def weak_augment(
    image: torch.Tensor,
    label: torch.Tensor,
    generator: torch.Generator,
    p_rot90_flip: float = 0.5,
    p_rotate: float = 0.25,
    max_angle: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak view of a batch as released in MONA/ARCO (docs/data.md, 'Weak view').

    Per sample: with overall probability ``p_rot90_flip`` a rot90 by k ~ U{0..3} followed by a flip on
    a random axis; else with overall probability ``p_rotate`` a rotation by an integer angle in
    [-max_angle, max_angle - 1] degrees (nearest, same size, zero fill); else identity.  The released
    "centre crop" branch is a no-op at the patch size and is not implemented.  ACTION's weak view
    (resize only, no geometric augmentation) is ``p_rot90_flip=0, p_rotate=0``; in that case no random
    numbers are drawn and copies of the inputs are returned.

    Args:
        image: (B, C, H, W) floating (C = 1 for ACDC), H == W when ``p_rot90_flip > 0``.
        label: (B, H, W) integer class ids.
        generator: CPU ``torch.Generator``; the same seed reproduces the batch.

    Returns: new image (B, C, H, W) and label (B, H, W), same dtypes/device as the inputs.
    """
    where = "weak_augment"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "label", label, image, integer=True)
    _check_generator(where, generator)
    _check_probability(where, "p_rot90_flip", p_rot90_flip)
    _check_probability(where, "p_rotate", p_rotate)
    if p_rot90_flip > 0 and image.shape[2] != image.shape[3]:
        raise _fail(where, f"rot90 needs square images, got H×W={image.shape[2]}×{image.shape[3]}",
                    "resize to a square patch first or pass p_rot90_flip=0")
    if p_rot90_flip == 0 and p_rotate == 0:
        return image.clone(), label.clone()
    params = sample_weak_params(image.shape[0], generator, p_rot90_flip, p_rotate, max_angle)
    return apply_weak(image, label, params)


# --------------------------------------------------------------------------------------------
# strong view, step 1: mixing (CutMix / ClassMix / CutOut)
# --------------------------------------------------------------------------------------------


def sample_boxes(batch_size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Draw one CutMix/CutOut box per image on CPU (docs/data.md, 'Strong view', step 2).

    Box area ≈ HW/2: width w ~ U{floor(W/2)+1, ..., W-1}, height h = round(HW/2 / w) (half to even, as
    ``np.round``; at most H), top-left corner uniform over the positions that keep the box inside.

    Returns: (B, 4) int64 on CPU, columns (y0, x0, h, w).
    """
    where = "sample_boxes"
    _check_generator(where, generator)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise _fail(where, f"batch_size must be a positive int, got {batch_size!r}", "pass image.shape[0]")
    if width < 3 or height < 1:
        raise _fail(where, f"box mixing needs W >= 3, got H×W={height}×{width}", "use a larger patch or mix='none'")
    bw = torch.randint(width // 2 + 1, width, (batch_size,), generator=generator)
    bh = torch.round(height * width / 2.0 / bw.to(torch.float64)).to(torch.int64).clamp(1, height)
    y0 = torch.floor(torch.rand(batch_size, generator=generator, dtype=torch.float64) * (height - bh + 1))
    x0 = torch.floor(torch.rand(batch_size, generator=generator, dtype=torch.float64) * (width - bw + 1))
    return torch.stack([y0.to(torch.int64), x0.to(torch.int64), bh, bw], dim=1)


def box_masks(boxes: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Rasterise boxes with broadcasting.

    Args: boxes (B, 4) int64 (y0, x0, h, w), any device.
    Returns: (B, H, W) bool on ``device``, True inside the box.
    """
    boxes = _to_device(boxes, device) if boxes.device != device else boxes
    y0, x0, bh, bw = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    return (rows >= y0) & (rows < y0 + bh) & (cols >= x0) & (cols < x0 + bw)


def classmix_keep_masks(pseudo_label: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """ClassMix masks: pixels whose class is in a random half of the classes present in their image.

    Per image, floor(n/2) of its n present classes are chosen uniformly at random; pixels of those
    classes are kept from the image itself, the others are taken from the partner, as the released
    ``image_i * mask + partner * (1 - mask)`` blend does with its class mask (docs/data.md, 'Strong view').
    Ignore pixels (-1) are never kept.

    Args:
        pseudo_label: (B, H, W) integer in [-1, num_classes).
        num_classes: number of classes C.
        generator: CPU generator (draws a (B, C) table of uniforms).

    Returns: (B, H, W) bool, True where the pixel keeps its own image.
    """
    b, h, w = pseudo_label.shape
    device = pseudo_label.device
    idx = torch.where(pseudo_label >= 0, pseudo_label, num_classes).to(torch.int64).view(b, h * w)
    present = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=device).scatter_(1, idx, True)
    present = present[:, :num_classes]
    keys = _to_device(torch.rand(b, num_classes, generator=generator), device)
    keys = torch.where(present, keys, torch.full_like(keys, 2.0))
    rank = keys.argsort(dim=1).argsort(dim=1)
    n_keep = present.sum(dim=1, keepdim=True) // 2
    selected = present & (rank < n_keep)
    selected = torch.cat([selected, torch.zeros(b, 1, dtype=torch.bool, device=device)], dim=1)
    return selected.gather(1, idx).view(b, h, w)


def _partner(t: torch.Tensor) -> torch.Tensor:
    """Partner batch for mixing: ``out[i] = t[(i + 1) % B]`` along dim 0."""
    return torch.roll(t, shifts=-1, dims=0)


def _check_num_classes(where: str, num_classes: int | None) -> None:
    """Require None or a positive int."""
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise _fail(where, f"num_classes must be a positive int or None, got {num_classes!r}", "e.g. 4 for ACDC")


def mix_batch(
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    generator: torch.Generator,
    mix: str = "cutmix",
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image with its partner (i+1) mod B (docs/data.md, 'Strong view', step 2).

    * ``cutmix``: a box of area ≈ HW/2 (:func:`sample_boxes`) is filled from the partner; image,
      pseudo-label and confidence use the same mask.
    * ``classmix``: pixels of a random half of the image's present classes are kept, the rest comes
      from the partner (:func:`classmix_keep_masks`).
    * ``cutout``: the box is zeroed in the image and the pseudo-label set to -1 (ignore); the confidence
      is zeroed there too, as the released code multiplies it by the keep mask (harmless: the pixels are
      ignored).
    * ``none``: copies.

    With B = 1 the partner is the image itself, so cutmix/classmix return copies.

    Args:
        image: (B, C, H, W) floating; pseudo_label (B, H, W) integer; confidence (B, H, W) floating.
        generator: CPU generator.
        mix: one of :data:`MIX_MODES`.
        num_classes: classes for ``classmix``; if None it is inferred as ``pseudo_label.max() + 1``
            (one device synchronisation; pass it explicitly in GPU training loops).

    Returns: new image, pseudo_label, confidence with the input shapes/dtypes.
    """
    where = "mix_batch"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "pseudo_label", pseudo_label, image, integer=True)
    _check_map_batch(where, "confidence", confidence, image, integer=False)
    _check_generator(where, generator)
    if mix not in MIX_MODES:
        raise _fail(where, f"mix must be one of {MIX_MODES}, got {mix!r}", "e.g. mix='cutmix'")
    if mix == "none":
        return image.clone(), pseudo_label.clone(), confidence.clone()
    b, _, h, w = image.shape
    _check_num_classes(where, num_classes)
    if mix == "classmix":
        if num_classes is None:
            num_classes = max(int(pseudo_label.max()) + 1, 1)
        take_partner = ~classmix_keep_masks(pseudo_label, num_classes, generator)
    else:
        take_partner = box_masks(sample_boxes(b, h, w, generator), h, w, image.device)
    if mix == "cutout":
        zero_img = torch.zeros((), dtype=image.dtype, device=image.device)
        return (torch.where(take_partner.unsqueeze(1), zero_img, image),
                torch.where(take_partner, torch.full((), -1, dtype=pseudo_label.dtype, device=image.device),
                            pseudo_label),
                torch.where(take_partner, torch.zeros((), dtype=confidence.dtype, device=image.device), confidence))
    return (torch.where(take_partner.unsqueeze(1), _partner(image), image),
            torch.where(take_partner, _partner(pseudo_label), pseudo_label),
            torch.where(take_partner, _partner(confidence), confidence))


# --------------------------------------------------------------------------------------------
# strong view, step 3: photometric (brightness/contrast jitter, Gaussian blur; the 8-bit round trip is
# methods.intensity's)
# --------------------------------------------------------------------------------------------


def _per_sample(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) factor to broadcast against (B, C, H, W) ``x`` (on x's device and dtype)."""
    return factor.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Brightness jitter, as ``ColorJitter``/PIL ``ImageEnhance.Brightness``: out = factor · x (docs/data.md, 'Strong view').

    Args:
        x: (B, C, H, W) floating in [0, hi], hi = ``levels`` or 1.
        factor: (B,) per-image factors.
        levels: None for continuous values in [0, 1]; 255 when ``x`` holds 8-bit grey levels 0..255,
            then the result is truncated to an integer as PIL does.

    Returns: (B, C, H, W), clamped to [0, hi].
    """
    _check_image_batch("adjust_brightness", "x", x)
    _check_factor("adjust_brightness", "factor", factor, x)
    hi = 1.0 if levels is None else float(levels)
    out = (_per_sample(factor, x) * x).clamp(0.0, hi)
    return out if levels is None else torch.floor(out)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Contrast jitter: blend with the per-image mean, out = mean + factor · (x − mean).

    This is torchvision's definition (factor·x + (1−factor)·mean over all pixels of the greyscale
    image; for C > 1 the mean is taken over all channels, not over a luma conversion) (docs/data.md, 'Strong view').  With
    ``levels=255`` it follows PIL ``ImageEnhance.Contrast`` on 8-bit images: the mean is rounded to an
    integer grey level and the output truncated.

    Args / Returns: as :func:`adjust_brightness`.
    """
    _check_image_batch("adjust_contrast", "x", x)
    _check_factor("adjust_contrast", "factor", factor, x)
    hi = 1.0 if levels is None else float(levels)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    if levels is not None:
        mean = torch.floor(mean + 0.5)
    out = (mean + _per_sample(factor, x) * (x - mean)).clamp(0.0, hi)
    return out if levels is None else torch.floor(out)


def color_jitter(
    image: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    brightness: tuple[float, float] = (0.75, 1.25),
    contrast: tuple[float, float] = (0.75, 1.25),
    levels: int | None = None,
) -> torch.Tensor:
    """Per-image random brightness + contrast jitter (docs/data.md, 'Strong view', step 3).

    With probability ``p`` per image: brightness factor ~ U[brightness], contrast factor ~ U[contrast],
    applied in a random order per image (``ColorJitter`` shuffles its operations; saturation and hue
    are no-ops on greyscale and are omitted).  Images that do not fire are returned unchanged.

    Args:
        image: (B, C, H, W) floating, in [0, 1] (or 0..255 grey levels with ``levels=255``).
        generator: CPU generator (draws 4 values per image).
        levels: see :func:`adjust_brightness`.

    Returns: new (B, C, H, W) tensor.
    """
    where = "color_jitter"
    _check_image_batch(where, "image", image)
    _check_generator(where, generator)
    _check_probability(where, "p", p)
    _check_range_pair(where, "brightness", brightness)
    _check_range_pair(where, "contrast", contrast)
    b = image.shape[0]
    fire = torch.rand(b, generator=generator) < p
    bf = torch.empty(b, dtype=torch.float64).uniform_(*brightness, generator=generator)
    cf = torch.empty(b, dtype=torch.float64).uniform_(*contrast, generator=generator)
    brightness_first = torch.rand(b, generator=generator) < 0.5
    bf = torch.where(fire, bf, torch.ones_like(bf))
    cf = torch.where(fire, cf, torch.ones_like(cf))
    bf, cf = _to_device(bf, image.device), _to_device(cf, image.device)
    first = _to_device(brightness_first, image.device).view(-1, 1, 1, 1)
    bc = adjust_contrast(adjust_brightness(image, bf, levels), cf, levels)
    cb = adjust_brightness(adjust_contrast(image, cf, levels), bf, levels)
    out = torch.where(first, bc, cb)
    # factor 1 is an identity up to float rounding; make non-firing images exact copies
    return torch.where(_to_device(fire, image.device).view(-1, 1, 1, 1), out, image)


def gaussian_kernels(sigma: torch.Tensor, half_width: int = _BLUR_HALF_WIDTH) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels of a fixed size, one per sigma.

    A sigma of 0 gives the identity kernel (a single 1 in the centre).

    Args: sigma (B,) floating >= 0, any device; half_width: taps on each side.
    Returns: (B, 2*half_width + 1), same device/dtype as ``sigma``.
    """
    x = torch.arange(-half_width, half_width + 1, device=sigma.device, dtype=sigma.dtype).view(1, -1)
    s = sigma.view(-1, 1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    g = torch.exp(-0.5 * (x / safe) ** 2)
    g = torch.where(s > 0, g, (x == 0).to(g.dtype))
    return g / g.sum(dim=1, keepdim=True)


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur as one grouped convolution per axis.

    Edges are replicated (PIL's blur extends the border).  The released code uses PIL
    ``ImageFilter.GaussianBlur(radius=sigma)``, which approximates the Gaussian by repeated box blurs;
    this is the exact (truncated at 9 taps) Gaussian.

    Args:
        image: (B, C, H, W) floating.
        sigma: (B,) per-image standard deviations in pixels (0 = no blur), at most ~1.15 for the
            fixed 9-tap kernel to be accurate.

    Returns: new (B, C, H, W) tensor.
    """
    _check_image_batch("gaussian_blur", "image", image)
    _check_factor("gaussian_blur", "sigma", sigma, image)
    b, c, h, w = image.shape
    r = _BLUR_HALF_WIDTH
    k = gaussian_kernels(_per_sample(sigma, image).view(-1)).repeat_interleave(c, dim=0)  # (B*C, 2r+1)
    x = F.pad(image.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(b * c, 1, 2 * r + 1, 1), groups=b * c)
    x = F.conv2d(x, k.view(b * c, 1, 1, 2 * r + 1), groups=b * c)
    return x.view(b, c, h, w)


def pil_gaussian_blur(levels: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The released 8-bit blur: each image through Pillow's ``ImageFilter.GaussianBlur(radius=sigma)`` as an 8-bit
    greyscale ("L") image, as the released strong view and pretraining views run it after ``to_pil_image``
    (docs/data.md, 'Strong view'). Pillow approximates the Gaussian with three box blurs, each rounded to whole grey
    levels, with its own edge handling: the values are Pillow's, which no torch convolution reproduces.

    Runs on the CPU (an image on another device makes the round trip, as the release's did).

    Args:
        levels: (B, C, H, W) floating, whole grey levels in [0, 255] (:func:`methods.intensity.to_grey_levels`).
        sigma: (B,) radii in pixels; an image with sigma 0 is returned unchanged.
    Returns: new (B, C, H, W) tensor of whole grey levels, ``levels``' dtype and device.
    """
    from PIL import Image, ImageFilter

    _check_image_batch("pil_gaussian_blur", "levels", levels)
    grey = levels.detach().to("cpu", torch.uint8).numpy()
    radii = sigma.detach().to("cpu", torch.float64).view(-1).tolist()
    out = grey.copy()
    for i, radius in enumerate(radii):
        if radius > 0:
            for c in range(grey.shape[1]):
                out[i, c] = np.asarray(Image.fromarray(grey[i, c]).filter(ImageFilter.GaussianBlur(radius=radius)))
    return torch.from_numpy(out).to(device=levels.device, dtype=levels.dtype)


def random_gaussian_blur(
    image: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, _SIGMA_MAX),
    levels: int | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image, blur with sigma ~ U(sigma_range) (docs/data.md, 'Strong view', step 3).

    Args:
        image: (B, C, H, W) floating.
        generator: CPU generator (draws 2 values per image).
        levels: None (continuous: :func:`gaussian_blur`), or 255 for 8-bit grey levels, blurred by Pillow as released
            (:func:`pil_gaussian_blur`).

    Returns: new (B, C, H, W) tensor; images that do not fire are unchanged.
    """
    where = "random_gaussian_blur"
    _check_image_batch(where, "image", image)
    _check_generator(where, generator)
    _check_probability(where, "p", p)
    _check_range_pair(where, "sigma_range", sigma_range)
    b = image.shape[0]
    fire = torch.rand(b, generator=generator) < p
    sigma = torch.empty(b, dtype=torch.float64).uniform_(*sigma_range, generator=generator)
    sigma = torch.where(fire, sigma, torch.zeros_like(sigma))
    if levels is not None:
        return pil_gaussian_blur(image, sigma)
    return gaussian_blur(image, _to_device(sigma, image.device))


def pretrain_views(
    image: torch.Tensor,
    generator: torch.Generator,
    coins: str = "per_batch",
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    factors: tuple[float, float] = (0.8, 1.2),
    sigma_range: tuple[float, float] = (0.15, _SIGMA_MAX),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ISD pretraining views of a batch: ``(jittered, teacher)`` (docs/data.md, 'Pretraining views').

    ``jittered`` is the batch after the colour jitter only, ``teacher`` is ``jittered`` then blurred.

    * ``coins="per_batch"`` (released): one jitter decision for the batch (``p_jitter``); when it fires, every
      image gets its own brightness and contrast factors in ``factors`` in a random order, continuous (the
      released jitter works on the float tensor); then one blur decision and one sigma ~ U(sigma_range) for the
      batch (``p_blur``); when it fires the blur runs on 8-bit grey levels as the released PIL path does
      (truncation to grey levels, Pillow's blur, /255: :func:`pil_gaussian_blur`), otherwise ``teacher`` is
      ``jittered`` unchanged. The released jitter writes in place into the batch the student reads; the caller
      reproduces that by giving ``jittered`` to the student.
    * ``coins="per_image"``: per-image jitter (``p_jitter``) then per-image blur (``p_blur``), both continuous.

    Args:
        image: (B, C, H, W) floating in [0, 1].
        generator: CPU generator.
    Returns: two new (B, C, H, W) tensors.
    """
    where = "pretrain_views"
    _check_image_batch(where, "image", image)
    _check_generator(where, generator)
    _check_probability(where, "p_jitter", p_jitter)
    _check_probability(where, "p_blur", p_blur)
    _check_range_pair(where, "factors", factors)
    _check_range_pair(where, "sigma_range", sigma_range)
    if coins not in PRETRAIN_COINS:
        raise _fail(where, f"coins must be one of {PRETRAIN_COINS}, got {coins!r}", "e.g. coins='per_batch'")
    if coins == "per_image":
        jittered = color_jitter(image, generator, p_jitter, brightness=factors, contrast=factors)
        return jittered, random_gaussian_blur(jittered, generator, p_blur, sigma_range)
    jitter = bool(torch.rand((), generator=generator) < p_jitter)  # a CPU draw: no device sync
    jittered = color_jitter(image, generator, 1.0, brightness=factors, contrast=factors) if jitter else image.clone()
    blur = bool(torch.rand((), generator=generator) < p_blur)
    sigma = torch.empty((), dtype=torch.float64).uniform_(*sigma_range, generator=generator)
    if not blur:
        return jittered, jittered.clone()
    return jittered, from_grey_levels(pil_gaussian_blur(to_grey_levels(jittered), sigma.expand(image.shape[0])))


def _check_value_ranges(where: str, image: torch.Tensor, pseudo_label: torch.Tensor,
                        confidence: torch.Tensor, num_classes: int | None) -> None:
    """Range checks for :func:`strong_augment` with a single device synchronisation.

    image and confidence must lie in [0, 1] (no NaN); pseudo-labels in [-1, num_classes).
    """
    label_bad = pseudo_label.min() < -1
    if num_classes is not None:
        label_bad = label_bad | (pseudo_label.max() >= num_classes)
    flags = torch.stack([
        ~((image >= 0) & (image <= 1)).all(),
        ~((confidence >= 0) & (confidence <= 1)).all(),
        label_bad,
    ]).tolist()  # the one host synchronisation
    if flags[0]:
        raise _fail(where, "image values must lie in [0, 1]", "min-max normalise the images")
    if flags[1]:
        raise _fail(where, "confidence values must be probabilities in [0, 1]", "pass max softmax probabilities")
    if flags[2]:
        raise _fail(where, f"pseudo_label values must lie in [-1, {num_classes if num_classes is not None else 'C'})",
                    "pass argmax class ids (or -1 for ignore)")


def strong_mix(
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    generator: torch.Generator,
    mix: str = "cutmix",
    quantise_8bit: bool = True,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First stage of the strong view (docs/data.md, 'Strong view', step 2): mix, then the released 8-bit round trip.

    :func:`mix_batch` with partner (i+1) mod B, then with ``quantise_8bit`` the mixed image and confidence go
    through :func:`methods.intensity.round_trip_8bit` (the released code hands both to PIL as 8-bit images).
    Training calls it once per step and :func:`strong_perturb` once per strong draw (MONA draws two from one
    mix); :func:`strong_augment` chains the two.

    Args: as :func:`mix_batch`; ``quantise_8bit``: False keeps everything continuous.
    Returns: new image (B, C, H, W) (multiples of 1/255 with ``quantise_8bit``), pseudo_label (B, H, W),
    confidence (B, H, W), with the input dtypes.
    """
    image, pseudo_label, confidence = mix_batch(image, pseudo_label, confidence, generator, mix, num_classes)
    if quantise_8bit:
        image, confidence = round_trip_8bit(image), round_trip_8bit(confidence)
    return image, pseudo_label, confidence


def strong_perturb(
    image: torch.Tensor,
    generator: torch.Generator,
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    quantise_8bit: bool = True,
) -> torch.Tensor:
    """Second stage of the strong view (docs/data.md, 'Strong view', step 3): photometric jitter then blur, per image.

    With ``p_jitter`` brightness and contrast factors ~ U[0.75, 1.25] in a random order (:func:`color_jitter`),
    then with ``p_blur`` a Gaussian blur with sigma ~ U(0.15, 1.15) (:func:`random_gaussian_blur`).
    With ``quantise_8bit`` (the released PIL path) the image is taken to grey levels 0..255 first
    (:func:`methods.intensity.to_grey_levels`; exact for an image that :func:`strong_mix` already round-tripped),
    jitter and blur compute on grey levels with PIL's integer rounding (truncation after each jitter operation; the
    blur is Pillow's own, :func:`pil_gaussian_blur`), and the result is divided by 255.
    Without it everything stays continuous.

    Args:
        image: (B, C, H, W) floating in [0, 1].
        generator: CPU generator (6 values per image).
    Returns: new (B, C, H, W) tensor (multiples of 1/255 with ``quantise_8bit``).
    """
    levels = 255 if quantise_8bit else None
    if quantise_8bit:
        image = to_grey_levels(image)
    image = color_jitter(image, generator, p_jitter, levels=levels)
    image = random_gaussian_blur(image, generator, p_blur, levels=levels)
    return from_grey_levels(image) if quantise_8bit else image


def strong_augment(
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    generator: torch.Generator,
    mix: str = "cutmix",
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    quantise_8bit: bool = True,
    num_classes: int | None = None,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Strong view of unlabelled images (docs/data.md, 'Strong view', steps 2-3; docs/shared.md, 'Pseudo-label loss'):
    :func:`strong_mix` then :func:`strong_perturb`, with input checks.

    1. Mixing with partner (i+1) mod B (:func:`mix_batch`; ``cutmix`` in all released scripts).
    2. With ``quantise_8bit`` the mixed image and confidence go through the released 8-bit PIL round
       trip: truncation to grey levels 0..255, brightness/contrast/blur computed on grey levels with
       PIL's integer rounding (truncation after jitter, rounding after blur -- PIL's blur rounding is
       approximated), then /255.  Without it everything stays continuous.
    3. Photometric per image: with ``p_jitter`` brightness and contrast factors ~ U[0.75, 1.25] in a
       random order (:func:`color_jitter`), then with ``p_blur`` a Gaussian blur with sigma ~
       U(0.15, 1.15) (:func:`random_gaussian_blur`).  Only the image is changed.

    Training runs the same two stages through the engine's strong-view adapter
    (``medseg_platform.engine.augmentation.StrongAugmentAdapter``), which adds the random ``AdvMorph`` warp of
    the images that the released code applies afterwards (once per batch with p=0.5;
    :func:`medseg_platform.data.advmorph.random_diffeomorphic_warp`); crop/rescale are identities at the patch
    size and are not implemented.

    Args:
        image: (B, C, H, W) floating in [0, 1] (the weak view).
        pseudo_label: (B, H, W) integer teacher argmax (values in [-1, C)).
        confidence: (B, H, W) floating teacher max probability in [0, 1].
        generator: CPU generator; the same seed reproduces the batch.
        mix: ``"cutmix"``, ``"classmix"``, ``"cutout"`` or ``"none"``.
        p_jitter, p_blur: per-image probabilities.
        quantise_8bit: reproduce the 8-bit round trip (outputs are multiples of 1/255).
        num_classes: C, used by classmix and the label range check; pass it on GPU (see :func:`mix_batch`).
        check_values: check value ranges (one device synchronisation); pass False in hot GPU loops.

    Returns: new image (B, C, H, W), pseudo_label (B, H, W), confidence (B, H, W) with the input dtypes.
    """
    where = "strong_augment"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "pseudo_label", pseudo_label, image, integer=True)
    _check_map_batch(where, "confidence", confidence, image, integer=False)
    _check_generator(where, generator)
    _check_probability(where, "p_jitter", p_jitter)
    _check_probability(where, "p_blur", p_blur)
    if mix not in MIX_MODES:
        raise _fail(where, f"mix must be one of {MIX_MODES}, got {mix!r}", "e.g. mix='cutmix'")
    _check_num_classes(where, num_classes)
    if check_values:
        _check_value_ranges(where, image, pseudo_label, confidence, num_classes)

    image, pseudo_label, confidence = strong_mix(image, pseudo_label, confidence, generator, mix, quantise_8bit, num_classes)
    return strong_perturb(image, generator, p_jitter, p_blur, quantise_8bit), pseudo_label, confidence
