"""The released 8-bit intensity round trip, the one implementation that the data layer and the objectives share.

The released strong view goes through 8-bit PIL images (``to_pil_image`` of a float tensor multiplies by 255 and
casts to ``uint8``, i.e. truncates) and back (``to_tensor`` divides by 255). The data layer's strong augmentation
(``medseg_platform.data.augment``) and MONA's equivariance input (``methods.mona``) both reproduce it with these
functions.
"""

from __future__ import annotations

import torch


def to_grey_levels(x: torch.Tensor) -> torch.Tensor:
    """The released ``x.mul(255).byte()`` (truncation) kept as floats 0..255.

    Values are clamped to [0, 1] first (the released uint8 cast would wrap around instead).

    Args: x any shape, floating, nominally in [0, 1].
    Returns: same shape/dtype, whole numbers in [0, 255].
    """
    return torch.floor(x.clamp(0.0, 1.0) * 255.0)


def from_grey_levels(levels: torch.Tensor) -> torch.Tensor:
    """Grey levels 0..255 (floats) back to [0, 1]: the released ``to_tensor``'s division by 255, correctly rounded
    on every device.

    The divisor is a 0-dim tensor on the levels' device rather than a Python number: PyTorch's CUDA kernels divide
    by a Python scalar as a multiplication by its reciprocal, one unit in the last place away from the division
    for about half the levels (and in float64 a level below ``k`` after another :func:`to_grey_levels` for 24 of
    them), so CPU and GPU strong views differed. On the CPU both forms are the same division (same bits).

    Args: levels any shape, floating, whole numbers in [0, 255].
    Returns: same shape/dtype, multiples of 1/255 in [0, 1].
    """
    return levels / levels.new_tensor(255.0)


def round_trip_8bit(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit PIL round trip: truncate to 1/255 steps.

    Idempotent: ``to_grey_levels(k / 255) == k`` for every k in 0..255 in float32 and float64, so a round-tripped
    tensor can go through :func:`to_grey_levels` again without losing a level.

    Args: x any shape, floating, nominally in [0, 1].
    Returns: same shape/dtype, multiples of 1/255 in [0, 1].
    """
    return from_grey_levels(to_grey_levels(x))
