"""The strong view's photometric step: brightness/contrast jitter and Gaussian blur, continuous or on 8-bit grey
levels as the released PIL path (docs/data.md, 'Strong view', step 3; the 8-bit round trip itself is
:mod:`methods.intensity`'s). :func:`medseg_platform.data.augment.strong_perturb` and
:func:`~medseg_platform.data.augment.pretrain_views` chain these.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medseg_platform.data.augment_checks import (
    _check_factor,
    _check_generator,
    _check_image_batch,
    _check_probability,
    _check_range_pair,
    _fail,
    _to_device,
)


#: Largest blur sigma of the released strong view (radius ~ U(0.15, 1.15)).
SIGMA_MAX = 1.15
#: Half-width of the fixed blur kernel: ceil(3 * 1.15) = 4, i.e. 9 taps.
_BLUR_HALF_WIDTH = math.ceil(3 * SIGMA_MAX)


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

    Runs on the CPU: on another device only the images to blur make the round trip (one host sync when any does; the
    others are cast to 8 bits and back where they are, the same values the round trip gave them).

    Args:
        levels: (B, C, H, W) floating, whole grey levels in [0, 255] (:func:`methods.intensity.to_grey_levels`).
        sigma: (B,) radii in pixels; an image with sigma 0 is returned unchanged.
    Returns: new (B, C, H, W) tensor of whole grey levels, ``levels``' dtype and device.
    """
    from PIL import Image, ImageFilter

    _check_image_batch("pil_gaussian_blur", "levels", levels)
    radii = sigma.detach().to("cpu", torch.float64).view(-1).tolist()
    out = levels.detach().to(torch.uint8).to(levels.dtype)  # every image as 8 bits, on its device
    fired = [i for i, radius in enumerate(radii) if radius > 0]
    if not fired:
        return out
    index = torch.tensor(fired, device=levels.device)
    grey = levels.detach().index_select(0, index).to("cpu", torch.uint8).numpy()
    blurred = np.empty_like(grey)
    for j, i in enumerate(fired):
        for c in range(grey.shape[1]):
            blurred[j, c] = np.asarray(Image.fromarray(grey[j, c]).filter(ImageFilter.GaussianBlur(radius=radii[i])))
    out[index] = torch.from_numpy(blurred).to(device=levels.device, dtype=levels.dtype)
    return out


def random_gaussian_blur(
    image: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, SIGMA_MAX),
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
    if levels is None and sigma_range[1] > SIGMA_MAX:  # the fixed 9-tap kernel cut a wider Gaussian short (the augmentation review)
        raise _fail(where, f"sigma_range {tuple(sigma_range)!r}: the continuous blur's 9-tap kernel holds sigma <= {SIGMA_MAX}",
                    f"e.g. (0.15, {SIGMA_MAX}), or blur 8-bit grey levels (levels=255), which Pillow blurs at any radius")
    b = image.shape[0]
    fire = torch.rand(b, generator=generator) < p
    sigma = torch.empty(b, dtype=torch.float64).uniform_(*sigma_range, generator=generator)
    sigma = torch.where(fire, sigma, torch.zeros_like(sigma))
    if levels is not None:
        return pil_gaussian_blur(image, sigma)
    return gaussian_blur(image, _to_device(sigma, image.device))
