"""Slice-wise prediction of a whole volume with a 2-D model (docs/evaluation.md, 'Slice-wise prediction').

For a volume ``image`` (D, H, W) float32 the D slices are, in batches: resized to ``patch_size`` by
nearest neighbour, passed through the model in eval mode without gradients, reduced by argmax over the
class axis, and the label maps resized back to (H, W) by nearest neighbour. No TTA, no post-processing.

Resize conventions (``resize``):

* ``"nearest-exact"``: ``torch.nn.functional.interpolate(mode="nearest-exact")``, pixel-centre
  aligned (source index ``floor((i + 0.5) * in / out)``). Up- then down-sampling returns every pixel to itself,
  so a model that is exact at 256×256 is exact at native size.
* ``"nearest"``: torch's legacy ``mode="nearest"`` (source index ``floor(i * in / out)``); its round trip moves
  most rows and columns by one towards the origin (native 200 → 256 → 200 keeps 8 of 200 rows in place; column 1
  maps to column 0): the prediction comes back translated by about one pixel along each axis.
* ``"zoom"`` (default, as ``eval.resize``'s, so a direct call predicts as a trial does): ``scipy.ndimage.zoom(order=0)``
  per slice, exactly what the released ``test_2D.py`` does (corner-aligned rounding; it can also zero the last
  row/column when the computed coordinate rounds past the edge).

The model receives a float32 tensor (B, 1, ph, pw) and may return logits (B, C, ph, pw), a tuple/list whose
first element is the logits, or a mapping with a ``"logits"`` entry. torch is imported when this module is.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg_platform.errors import ConfigError, DataError
from methods.class_max import class_argmax

RESIZE_MODES = ("nearest-exact", "nearest", "zoom")


def _logits_of(output: Any) -> torch.Tensor:
    """The logits tensor from a model output (tensor, tuple/list → first element, mapping → ``"logits"``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    kind = type(output).__name__
    keys = f" with keys {sorted(output)}" if isinstance(output, dict) else ""
    raise ConfigError(f"predict_volume: model returned {kind}{keys} (return logits (B,C,H,W), a tuple with logits first, or a dict with 'logits')")


def _resize(batch: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, h, w) float tensor to (B, 1, *size)."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    if mode == "zoom":
        from scipy import ndimage

        arr = batch.cpu().numpy()
        out = np.empty((arr.shape[0], 1, *size), dtype=arr.dtype)
        factors = (size[0] / arr.shape[2], size[1] / arr.shape[3])
        for k in range(arr.shape[0]):  # one call per slice, as the released code does
            zoomed = ndimage.zoom(arr[k, 0], factors, order=0)
            if zoomed.shape != tuple(size):
                raise DataError(f"predict_volume: scipy zoom gave {zoomed.shape} instead of {tuple(size)} (use resize='nearest-exact')")
            out[k, 0] = zoomed
        return torch.from_numpy(out).to(batch.device)
    return F.interpolate(batch, size=size, mode=mode)


def predict_volume(model: torch.nn.Module, image: np.ndarray, patch_size: Sequence[int] = (256, 256),
                   batch_size: int = 16, device: str | torch.device | None = None,
                   resize: str = "zoom") -> np.ndarray:
    """Label map (D, H, W) uint8 of a volume ``image`` (D, H, W) float32, predicted slice by slice.

    ``device``: where the model runs (default: the device of its first parameter, else CPU); the model is
    not moved. The model's train/eval mode is restored afterwards.
    """
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"predict_volume: image must be a non-empty 3-D array (D, H, W), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise DataError("predict_volume: image must be finite numbers (normalise it to [0, 1] first)")
    if len(patch_size) != 2 or not all(int(p) >= 1 for p in patch_size):
        raise ConfigError(f"patch_size: expected two positive integers (H, W), got {tuple(patch_size)!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize: unknown mode {resize!r} (use one of {', '.join(RESIZE_MODES)})")
    patch = (int(patch_size[0]), int(patch_size[1]))
    native = tuple(int(s) for s in image.shape[1:])
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)

    depth = image.shape[0]
    out = np.empty(image.shape, dtype=np.uint8)
    # set eval mode only where a module trains: ``Module.train`` walks every submodule through ``__setattr__`` (1.4 ms a
    # call for the quick UNet, 10% of a quick validation), and a caller that predicts several volumes sets it once
    modes = training_modes(model)
    toggled = any(mode for _, mode in modes)
    if toggled:
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, depth, int(batch_size)):
                stop = min(start + int(batch_size), depth)
                x = torch.from_numpy(np.ascontiguousarray(image[start:stop], dtype=np.float32)).unsqueeze(1)
                x = _resize(x, patch, resize).to(device)
                logits = _logits_of(model(x))
                if logits.ndim != 4 or logits.shape[0] != x.shape[0] or tuple(logits.shape[2:]) != patch:
                    raise ConfigError(f"predict_volume: model output shape {tuple(logits.shape)}, expected ({x.shape[0]}, C, {patch[0]}, {patch[1]})")
                if logits.shape[1] > 256:
                    raise ConfigError(f"predict_volume: {logits.shape[1]} classes do not fit uint8 labels")
                labels = class_argmax(logits).unsqueeze(1).to(torch.float32).cpu()  # torch.argmax's, faster on the CPU
                labels = _resize(labels, native, resize)
                out[start:stop] = labels[:, 0].numpy().astype(np.uint8)
    finally:
        if toggled:
            restore_training_modes(modes)
    return out


def training_modes(model: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    """Each module of ``model`` with its train/eval mode, for :func:`restore_training_modes`."""
    return [(module, module.training) for module in model.modules()]


def restore_training_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Give each module its own mode back: ``model.train(was_training)`` set every submodule to the model's mode, so a
    BatchNorm kept in eval mode inside a training model came back training (the evaluation review)."""
    for module, mode in modes:
        module.training = mode
