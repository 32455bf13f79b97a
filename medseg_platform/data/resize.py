"""The dataloader's resize of a slice to the patch size (docs/data.md, 'Resizing').

:func:`resize_slice` / :func:`resize_to_patch`: nearest for image and label as in MONA/ARCO; the cubic spline image
zoom (``scipy.ndimage.zoom(order=3)``) as in ACTION (``data.image_resize``). Part of the augmentations whose entry
points :mod:`medseg_platform.data.augment` gathers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg_platform.config import IMAGE_RESIZE_MODES
from medseg_platform.data.augment_checks import _fail


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

        source = image.detach()
        if source.dtype not in (torch.float32, torch.float64):  # scipy zooms no half precision
            source = source.to(torch.float32)
        source = source.cpu().numpy()
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
