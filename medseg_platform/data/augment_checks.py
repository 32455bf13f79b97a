"""Argument checks shared by the augmentation modules (shapes, dtypes, devices, probabilities; no device sync).

Every failure is a one-line ``ValueError``: ``<function>: <what is wrong> (<what to do>)``, naming the argument.
Used by :mod:`medseg_platform.data.resize`, :mod:`~medseg_platform.data.weak_view`,
:mod:`~medseg_platform.data.mixing`, :mod:`~medseg_platform.data.photometric`, :mod:`~medseg_platform.data.augment`
and :mod:`~medseg_platform.data.advmorph`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


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


def _check_map_batch(where: str, name: str, x: torch.Tensor, image: torch.Tensor, integer: bool, signed: bool = False) -> None:
    """Require a (B, H, W) tensor matching ``image`` (B, C, H, W) in B/H/W and device; ``signed``: an integer map that
    may hold the ignore label -1 (a pseudo-label), so not an unsigned dtype, where -1 would wrap to 255."""
    if not isinstance(x, torch.Tensor):
        raise _fail(where, f"{name} must be a torch.Tensor, got {type(x).__name__}", "pass a (B,H,W) tensor")
    expected = (image.shape[0], image.shape[2], image.shape[3])
    if x.ndim != 3 or tuple(x.shape) != expected:
        raise _fail(where, f"{name} must have shape (B,H,W)={expected} to match the image, got {tuple(x.shape)}",
                    "pass one (H,W) map per image")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise _fail(where, f"{name} must be an integer tensor, got {x.dtype}", "convert with .long()")
    if integer and signed and not x.dtype.is_signed:
        raise _fail(where, f"{name} must be a signed integer tensor (its ignore label is -1), got {x.dtype}", "convert with .long()")
    if not integer and not x.is_floating_point():
        raise _fail(where, f"{name} must be a floating tensor, got {x.dtype}", "convert with .float()")
    if x.device != image.device:
        raise _fail(where, f"{name} is on {x.device} but the image is on {image.device}", "move both to one device")


def _check_range_pair(where: str, name: str, pair: Sequence[float]) -> None:
    """Require finite (lo, hi) with 0 <= lo <= hi (factor or sigma ranges; inf failed in torch's uniform_)."""
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
            or not 0 <= pair[0] <= pair[1]):
        raise _fail(where, f"{name} must be a pair of finite numbers (lo, hi) with 0 <= lo <= hi, got {pair!r}", "e.g. (0.75, 1.25)")


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
