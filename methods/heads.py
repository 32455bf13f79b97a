"""Representation heads on the UNet decoder pyramid (docs/mona.md, 'Modules'; docs/action.md, 'Representation head').

The pyramid is :attr:`methods.unet.UNetOutput.pyramid`, coarse to fine:
``[x4 (B, c4, H/16, W/16), d1 (B, c3, H/8, W/8), d2 (B, c2, H/4, W/4), d3 (B, c1, H/2, W/2), d4 (B, c0, H, W)]``
(defaults 256, 128, 64, 32, 16 channels, 496 in all).

* :class:`MonaFeatureExtractor` — MONA/ARCO's linear residual coarse-to-fine fusion ``FE``;
* :class:`LinearPredictor` — MONA/ARCO's student predictor ``Pred``;
* :class:`ActionProjectionHead` — ACTION's upsample-concat representation head.

Interpolation is bilinear with ``align_corners=True`` everywhere, as released. Outputs are not normalised
(the contrastive losses use cosine similarity). All convolutions use PyTorch's default initialisation, as
released.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.errors import ConfigError, DataError


def _check_channels(where: str, channels: Sequence[int], minimum_levels: int) -> tuple[int, ...]:
    channels = tuple(channels)
    if len(channels) < minimum_levels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ConfigError(
            f"{where}: pyramid_channels must be >= {minimum_levels} positive ints (coarse to fine), got {channels!r} "
            f"(pass the model's pyramid_channels)"
        )
    return channels


def _check_pyramid(where: str, pyramid: Sequence[torch.Tensor], channels: tuple[int, ...]) -> None:
    got = [tuple(level.shape) for level in pyramid]
    if len(pyramid) != len(channels) or any(level.dim() != 4 or level.shape[1] != c for level, c in zip(pyramid, channels)):
        raise DataError(
            f"{where}: expected {len(channels)} maps (B, c, h, w) with c = {channels}, got shapes {got} "
            f"(build the head with the model's pyramid_channels)"
        )
    batch = pyramid[0].shape[0]
    if any(level.shape[0] != batch for level in pyramid):
        raise DataError(f"{where}: all pyramid levels must share the batch size, got shapes {got} (pass one model output's pyramid)")


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=True; identity (no copy) when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class MonaFeatureExtractor(nn.Module):
    """MONA/ARCO "FeatureExtractor" FE: linear, bias-free, residual coarse-to-fine fusion (docs/mona.md,
    'Modules').

    With pyramid ``[p_0 (coarsest), .., p_{L-1} (finest)]`` and bias-free 1x1 convolutions ``W_i``::

        a = p_0 + W_0 p_0                                   (c4 channels)
        for i = 1 .. L-1:
            a = cat([upsample(a, size of p_i), p_i])        # coarse fusion FIRST, then the finer level
            a = a + W_i a            (i < L-1)              # residual, channels c4 + .. + c_{4-i}
        r = W_{L-1} a                                       (sum -> out_channels, no residual)

    Concatenation order ``[upsampled coarse, finer level]`` as in the released ``FeatureExtractor.forward``
    (``M:code/model_2D.py:20-55``, checked against the ARCO snapshot). Defaults: 256 -> 384 -> 448 -> 480
    -> 496 channels, output 496 (the released fine-tuning builds it with ``output_dim = 496``). Purely
    linear: there is no nonlinearity anywhere (as released; the papers describe a non-linear projector:
    docs/mona.md, 'Paper versus code').

    Args:
        pyramid_channels: channels of the pyramid levels, coarse to fine (>= 2 levels), e.g.
            ``UNet.pyramid_channels`` = (256, 128, 64, 32, 16).
        out_channels: output channels; default ``sum(pyramid_channels)``.

    ``forward(pyramid)``: list of float (B, c_i, h_i, w_i) -> float (B, out_channels, h_{L-1}, w_{L-1}).
    MONA uses two copies: ``FE_s`` (trained) and ``FE_t`` (EMA of ``FE_s``).
    """

    def __init__(self, pyramid_channels: Sequence[int], out_channels: int | None = None) -> None:
        super().__init__()
        channels = _check_channels("MonaFeatureExtractor", pyramid_channels, minimum_levels=2)
        total = sum(channels)
        if out_channels is None:
            out_channels = total
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ConfigError(f"MonaFeatureExtractor: out_channels must be a positive int, got {out_channels!r} (default: sum of pyramid_channels)")
        self.pyramid_channels = channels
        self.out_channels = out_channels
        widths = [sum(channels[: i + 1]) for i in range(len(channels) - 1)]  # 256, 384, 448, 480
        self.residual = nn.ModuleList([nn.Conv2d(w, w, kernel_size=1, bias=False) for w in widths])
        self.project = nn.Conv2d(total, out_channels, kernel_size=1, bias=False)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pyramid("MonaFeatureExtractor", pyramid, self.pyramid_channels)
        fused = pyramid[0] + self.residual[0](pyramid[0])
        for i in range(1, len(pyramid)):
            fused = torch.cat([_resize(fused, pyramid[i].shape[-2:]), pyramid[i]], dim=1)
            if i < len(self.residual):
                fused = fused + self.residual[i](fused)
        return self.project(fused)


class LinearPredictor(nn.Sequential):
    """MONA/ARCO student predictor ``Pred``: two bias-free 1x1 convolutions dim -> dim, no nonlinearity
    (docs/mona.md, 'Modules'; ``M:code/train_arco_2d.py:231-234``). Student representation ``r = Pred(FE_s(pyramid))``.

    ``forward``: float (B, dim, H, W) -> float (B, dim, H, W).
    """

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"LinearPredictor: dim must be a positive int, got {dim!r} (the representation width)")
        super().__init__(
            nn.Conv2d(dim, dim, kernel_size=1, bias=False),
            nn.Conv2d(dim, dim, kernel_size=1, bias=False),
        )
        self.dim = dim


class ActionProjectionHead(nn.Module):
    """ACTION representation head (docs/action.md, 'Representation head'; ``C:code/model.py:91-99``,
    ``train_2D_action.py:202-210``).

    Every pyramid level is upsampled (bilinear, align_corners=True) to the finest level's size (= the
    input image size for the UNet pyramid), the levels are concatenated in pyramid order
    ``[x4, d1, d2, d3, d4]`` (496 channels by default), then conv3x3 (padding 1, no bias) sum -> out and
    conv1x1 (with bias) out -> out; no nonlinearity, no normalisation (as released).

    Args:
        pyramid_channels: channels of the levels, coarse to fine (>= 1 level).
        out_channels: 512 as released (2D); ACTION++ uses 496, the 3D variant 128.

    ``forward(pyramid, size=None)``: list of float (B, c_i, h_i, w_i) -> float (B, out_channels, H, W) with
    ``(H, W) = size`` or the last level's size.
    """

    def __init__(self, pyramid_channels: Sequence[int], out_channels: int = 512) -> None:
        super().__init__()
        channels = _check_channels("ActionProjectionHead", pyramid_channels, minimum_levels=1)
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ConfigError(f"ActionProjectionHead: out_channels must be a positive int, got {out_channels!r} (e.g. 256)")
        self.pyramid_channels = channels
        self.out_channels = out_channels
        self.project = nn.Sequential(
            nn.Conv2d(sum(channels), out_channels, kernel_size=3, padding=1, bias=False),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
        )

    def forward(self, pyramid: Sequence[torch.Tensor], size: Sequence[int] | None = None) -> torch.Tensor:
        _check_pyramid("ActionProjectionHead", pyramid, self.pyramid_channels)
        target = tuple(size) if size is not None else tuple(pyramid[-1].shape[-2:])
        return self.project(torch.cat([_resize(level, target) for level in pyramid], dim=1))
