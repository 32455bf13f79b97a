"""The SSL4MIS 2D UNet shared by MONA, ARCO and ACTION (docs/shared.md, 'UNet backbone').

Architecture (defaults = the released code, ``M:code/networks/unetWithArgs.py``):

* encoder: ``ConvBlock(in -> c0)`` then 4 x [``MaxPool2d(2)`` + ``ConvBlock``] to ``c1 .. c4``,
  channels ``(16, 32, 64, 128, 256)``, dropout per level ``(0.05, 0.1, 0.2, 0.3, 0.5)``;
* ``ConvBlock`` = conv3x3 - BN - LeakyReLU - Dropout(p) - conv3x3 - BN - LeakyReLU. The slope is
  torch's default 0.01 (the released code calls ``nn.LeakyReLU()`` without arguments). The LeakyReLUs run
  in place on the BatchNorm output, which backward does not read: the same numbers and gradients bit for bit
  (``tests/methods/test_unet.py``) with one activation fewer kept per convolution (docs/shared.md, 'UNet
  backbone');
* decoder: 4 ``UpBlock``s, each taking the coarser map to the skip's channels and resolution, concatenation
  ``[skip, up]`` and a ``ConvBlock`` without dropout, giving ``c3, c2, c1, c0`` channels. As released
  (``upsample="bilinear"``): a conv1x1 (with bias) to the skip's channels, then ``Upsample(scale_factor=2,
  mode="bilinear", align_corners=True)``. The released network file sets ``'bilinear': False`` in its parameters but
  never passes it to its up-blocks, whose own default is bilinear; ``upsample="transposed"`` is the
  ``ConvTranspose2d(k=2, s=2)`` that setting names, which the platform used until 2026-12-06 (docs/shared.md,
  'UNet backbone');
* head: conv3x3 ``c0 -> num_classes``.

Weights use PyTorch's default initialisation (the released code does not re-initialise the 2D UNet).
The channel widths and the dropout schedule are configurable, e.g. ``channels=(8, 16, 32, 64, 128)``
for fast CPU runs; nothing else changes.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from methods.errors import ConfigError, DataError

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
DEFAULT_DROPOUT: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
LEAKY_RELU_SLOPE = 0.01
DOWNSAMPLING = 16  # 4 max-pools of stride 2
#: ``UNet(upsample=...)``: the decoder's up-path (module docstring); "bilinear" is the released one.
UPSAMPLING = ("bilinear", "transposed")


class UNetOutput(NamedTuple):
    """What :meth:`UNet.forward` returns (docs/shared.md, 'UNet backbone').

    * ``logits``: float (B, num_classes, H, W), before softmax.
    * ``bottleneck``: float (B, c4, H/16, W/16), the deepest encoder feature ``x4``.
    * ``pyramid``: list of 5 float tensors, coarse to fine, the inputs of every representation head:
      ``[x4 (B, c4, H/16, W/16), d1 (B, c3, H/8, W/8), d2 (B, c2, H/4, W/4), d3 (B, c1, H/2, W/2),
      d4 (B, c0, H, W)]`` (defaults: 256 + 128 + 64 + 32 + 16 = 496 channels in all).
    """

    logits: torch.Tensor
    bottleneck: torch.Tensor
    pyramid: list[torch.Tensor]


class ConvBlock(nn.Sequential):
    """conv3x3 - BN - LeakyReLU - Dropout(p) - conv3x3 - BN - LeakyReLU; (B, in, H, W) -> (B, out, H, W).

    ``dropout == 0`` puts an ``nn.Identity`` where the dropout would be (same function, no module
    that looks active).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
        )


class DownBlock(nn.Sequential):
    """MaxPool2d(2) then :class:`ConvBlock`; (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, dropout))


class UpBlock(nn.Module):
    """The coarser map to the skip's channels and resolution (``upsample="bilinear"``: conv1x1 with bias, then
    bilinear x2 with ``align_corners=True``, as released; ``"transposed"``: ConvTranspose2d(k=2, s=2)), concat
    ``[skip, up]``, ConvBlock without dropout.

    ``forward(x (B, in, h, w), skip (B, skip_ch, 2h, 2w)) -> (B, out, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsample: str = "bilinear") -> None:
        super().__init__()
        if upsample == "bilinear":
            self.up = nn.Sequential(nn.Conv2d(in_channels, skip_channels, kernel_size=1),
                                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        else:
            self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """SSL4MIS 2D UNet returning logits, bottleneck and the decoder pyramid (docs/shared.md,
    'UNet backbone').

    Args:
        in_channels: image channels (ACDC: 1).
        num_classes: output classes including background (ACDC: 4).
        channels: five encoder widths ``(c0, .., c4)``; default ``(16, 32, 64, 128, 256)``.
        dropout: five encoder dropout probabilities in [0, 1); default ``(0.05, 0.1, 0.2, 0.3, 0.5)``.
        upsample: the decoder's up-path, ``"bilinear"`` (as released) or ``"transposed"`` (module docstring).

    Input: float (B, in_channels, H, W) with H and W divisible by 16. Output: :class:`UNetOutput`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dropout: Sequence[float] = DEFAULT_DROPOUT,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        dropout = tuple(dropout)
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ConfigError(f"UNet.in_channels: must be a positive int, got {in_channels!r} (1 for grey-level images)")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ConfigError(f"UNet.num_classes: must be an int >= 2, got {num_classes!r} (background plus the structures)")
        if len(channels) != 5 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
            raise ConfigError(f"UNet.channels: must be 5 positive ints (c0..c4), got {channels!r} (default {DEFAULT_CHANNELS})")
        if len(dropout) != 5 or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0 for p in dropout):
            raise ConfigError(f"UNet.dropout: must be 5 probabilities in [0, 1), got {dropout!r} (default {DEFAULT_DROPOUT})")
        if upsample not in UPSAMPLING:
            raise ConfigError(f"UNet.upsample: {upsample!r} is not one of {', '.join(map(repr, UPSAMPLING))} ('bilinear' as released)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.dropout = tuple(float(p) for p in dropout)
        self.upsample = upsample

        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, channels[0], self.dropout[0])]
            + [DownBlock(channels[i - 1], channels[i], self.dropout[i]) for i in range(1, 5)]
        )
        # up1: c4 -> c3 (skip x3), up2: c3 -> c2 (skip x2), up3: c2 -> c1 (skip x1), up4: c1 -> c0 (skip x0)
        self.decoder = nn.ModuleList(
            [UpBlock(channels[i], channels[i - 1], channels[i - 1], upsample) for i in range(4, 0, -1)]
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=3, padding=1)

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        """Channels of ``UNetOutput.pyramid``, coarse to fine: ``(c4, c3, c2, c1, c0)``."""
        return tuple(reversed(self.channels))

    def forward(self, x: torch.Tensor) -> UNetOutput:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError(
                f"UNet: expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)} "
                f"(images must have in_channels={self.in_channels} channels)"
            )
        height, width = x.shape[-2:]
        if height % DOWNSAMPLING or width % DOWNSAMPLING:
            raise DataError(
                f"UNet: input height and width must be divisible by {DOWNSAMPLING} (4 max-pools), "
                f"got {height}x{width} (resize or pad the image)"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        bottleneck = skips[-1]
        pyramid = [bottleneck]
        d = bottleneck
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            d = up(d, skip)
            pyramid.append(d)
        return UNetOutput(logits=self.head(d), bottleneck=bottleneck, pyramid=pyramid)
