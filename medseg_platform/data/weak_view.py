"""The MONA/ARCO weak view: ``RandomGenerator``'s rot90 + flip, small rotation or identity (docs/data.md, 'Weak view').

ACTION's weak view has no geometric augmentation: :func:`weak_augment` with ``p_rot90_flip=0, p_rotate=0`` (or
skip it). Batched torch ops; the per-image parameters are drawn on the CPU from an explicit generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medseg_platform.data.augment_checks import (
    _check_generator,
    _check_image_batch,
    _check_map_batch,
    _check_probability,
    _fail,
    _to_device,
)


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
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
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
