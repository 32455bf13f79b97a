"""Which convolution kernels a trial's fine-tuning runs on the CPU: oneDNN's (PyTorch's default) or PyTorch's own.

``TrialConfig.conv_kernels`` (docs/methods.md, 'CPU convolution kernels'). Both compute the same convolutions; their
results differ by float rounding only. Which is faster depends on the layer (``python
benchmarks/bench_conv_kernels.py``, benchmarks/RESULTS.md): oneDNN is slow on thin layers and pays a fixed cost
per call, so on the quick profile's quarter-width UNet (first width 4) at 48 x 48 PyTorch's kernels run
the UNet's forward + backward in 0.78x the time and MONA/ARCO/ACTION steps in 0.89-0.91x; at 96 x 96 and 128 x 128
the two are even, and from a first width of 8 oneDNN is faster (2-3x at the paper size).

``"auto"`` (the default, :func:`resolve_conv_kernels`) takes PyTorch's kernels only where that was measured to pay
and where no result needs to stay as it was: the fine-tuning of the contrastive objectives (:data:`AUTO_OBJECTIVES`)
in full precision with a thin UNet on small patches. Everything else keeps oneDNN, so the baselines' results and the
cached pretraining stages are the same numbers as before the option existed (pretraining stages always run oneDNN's
kernels: they are shared between trials and cached under keys that do not name the kernels).

The choice is process-wide (``torch.backends.mkldnn.enabled``). Devices other than the CPU are not affected (CUDA
runs cuDNN's kernels whatever the setting). Pure functions apart from :func:`set_conv_kernels` and
:func:`using_conv_kernels`, which import torch when called.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

from medseg_platform.config import CONV_KERNELS, TrialConfig  # CONV_KERNELS: "auto" (the rule below), "onednn", "pytorch"
from medseg_platform.errors import ConfigError

AUTO_OBJECTIVES = ("mona", "arco", "action")
"""Objectives whose fine-tuning ``"auto"`` may run on PyTorch's kernels (measured: 0.89-0.91x the step time at the
quick size). Supervised-only and mean teacher would gain too (0.80x and 0.91x) but keep oneDNN so that the
baselines' results stay those of every earlier run; ISD pretraining gains nothing (1.0x)."""

THIN_WIDTH = 8
"""``"auto"`` picks PyTorch's kernels only for UNets whose first width is below this (at a first width of 8 oneDNN is
already faster at 32 x 32: 1.07x)."""

SMALL_PATCH_PIXELS = 64 * 64
"""... and only for patches of at most this many pixels (the UNet at first width 4: 0.74x at 32 x 32, 0.78x at
48 x 48, 0.88x at 64 x 64, 1.02x at 96 x 96, 1.03x at 128 x 128)."""


def resolve_conv_kernels(choice: str, objective: str, channels: Sequence[int], patch_size: Sequence[int],
                         device_type: str = "cpu", amp: str = "off") -> str:
    """The kernels a trial's fine-tuning runs: ``"onednn"`` or ``"pytorch"`` on the CPU, ``device_type`` elsewhere.

    ``"auto"`` gives ``"pytorch"`` for an objective of :data:`AUTO_OBJECTIVES` in full precision (``amp`` "off": the
    rule was measured in float32 only) whose UNet's first width is below :data:`THIN_WIDTH`, on patches of at most
    :data:`SMALL_PATCH_PIXELS` (the quick and smoke profiles), and ``"onednn"`` otherwise; ``"onednn"`` and
    ``"pytorch"`` are taken as given. :class:`ConfigError` for any other choice (the message of
    ``TrialConfig.validate``)."""
    if choice not in CONV_KERNELS:
        raise ConfigError(f"conv_kernels {choice!r}: choose {', '.join(map(repr, CONV_KERNELS))}")
    if device_type != "cpu":
        return device_type
    if choice != "auto":
        return choice
    small = int(channels[0]) < THIN_WIDTH and int(patch_size[0]) * int(patch_size[1]) <= SMALL_PATCH_PIXELS
    return "pytorch" if small and objective in AUTO_OBJECTIVES and amp == "off" else "onednn"


def trial_conv_kernels(cfg: TrialConfig, device_type: str) -> str:
    """:func:`resolve_conv_kernels` for a trial's config (``conv_kernels``, objective, UNet widths, patch, ``optim.amp``)."""
    return resolve_conv_kernels(cfg.conv_kernels, cfg.objective, cfg.model.channels, cfg.data.patch_size, device_type, cfg.optim.amp)


def set_conv_kernels(kernels: str) -> None:
    """Make the process run PyTorch's own CPU convolution kernels (``"pytorch"``) or oneDNN's (anything else)."""
    import torch

    torch.backends.mkldnn.enabled = kernels != "pytorch"


@contextlib.contextmanager
def using_conv_kernels(kernels: str) -> Iterator[None]:
    """:func:`set_conv_kernels` for the block; the previous setting is restored on exit."""
    import torch

    previous = torch.backends.mkldnn.enabled
    set_conv_kernels(kernels)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def recorded_conv_kernels(result: Mapping[str, Any], cfg: TrialConfig, device_type: str) -> str:
    """The kernels to run a finished trial's selected weights with again (``medseg predict``, ``--test-root``): the
    ones its ``result.json`` records for its fine-tuning, oneDNN's for a trial finished before they were recorded, and
    the config's rule when it ran on another device than the CPU."""
    recorded = result.get("conv_kernels", "onednn")
    return recorded if recorded in CONV_KERNELS and recorded != "auto" else trial_conv_kernels(cfg, device_type)
