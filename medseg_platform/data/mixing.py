"""The strong view's first step: CutMix / ClassMix / CutOut with the partner image (i+1) mod B (docs/data.md,
'Strong view', step 2). :func:`medseg_platform.data.augment.strong_mix` calls :func:`mix_batch` and then the released
8-bit round trip.
"""

from __future__ import annotations

import torch

from medseg_platform.data.augment_checks import _check_generator, _check_image_batch, _check_map_batch, _fail, _to_device


MIX_MODES = ("cutmix", "classmix", "cutout", "none")


def sample_boxes(batch_size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Draw one CutMix/CutOut box per image on CPU (docs/data.md, 'Strong view', step 2).

    Box area ≈ HW/2: width w ~ U{floor(W/2)+1, ..., W-1}, height h = round(HW/2 / w) (half to even, as
    ``np.round``; at most H), top-left corner uniform over the positions that keep the box inside.

    Returns: (B, 4) int64 on CPU, columns (y0, x0, h, w).
    """
    where = "sample_boxes"
    _check_generator(where, generator)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
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
        image: (B, C, H, W) floating; pseudo_label (B, H, W) signed integer in [-1, num_classes) (the range is not
            checked here, which would cost a device synchronisation: :func:`~medseg_platform.data.augment.strong_augment`
            checks it unless told not to); confidence (B, H, W) floating.
        generator: CPU generator.
        mix: one of :data:`MIX_MODES`.
        num_classes: classes for ``classmix``; if None it is inferred as ``pseudo_label.max() + 1``
            (one device synchronisation; pass it explicitly in GPU training loops).

    Returns: new image, pseudo_label, confidence with the input shapes/dtypes.
    """
    where = "mix_batch"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "pseudo_label", pseudo_label, image, integer=True, signed=True)
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
