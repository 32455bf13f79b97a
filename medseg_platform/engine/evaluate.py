"""Validation and test of a trained network: per-case, per-class metric rows, their mean Dice, and the slices kept
for the qualitative overlays (slice-wise prediction at the patch size: docs/evaluation.md, 'Slice-wise prediction')."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from medseg_platform.config import TrialConfig
from medseg_platform.data.layout import Volume, mixed_spacing_text
from medseg_platform.errors import DataError
from medseg_platform.evaluation.metrics import case_dice, distance_spacing, evaluate_case
from medseg_platform.evaluation.predict import predict_volume, restore_training_modes, training_modes
from medseg_platform.io import atomic_path
from medseg_platform.stats import nan_mean

QUALITATIVE_CASES = 3


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for a block of predictions, its mode restored after: one walk over its modules each way
    instead of two per volume (:func:`medseg_platform.evaluation.predict.predict_volume` leaves a model already in eval
    mode as it is). Each module gets its own mode back (``restore_training_modes``)."""
    modes = training_modes(model)
    model.eval()
    try:
        yield model
    finally:
        restore_training_modes(modes)


def predict_case(model: torch.nn.Module, image: np.ndarray, cfg: TrialConfig, device: torch.device) -> np.ndarray:
    """Label map (uint8 D×H×W) of one volume as the evaluation predicts it: slice-wise at ``cfg``'s patch size with
    its test-time resize policy (``eval.resize``). ``medseg predict`` (:mod:`medseg_platform.predict`) uses it too,
    so its files hold exactly what the trial's test Dice scored."""
    return predict_volume(model, image, cfg.data.patch_size, device=device, resize=cfg.eval.resize)


def evaluate_volumes(model: torch.nn.Module, volumes: Iterable[Volume], cfg: TrialConfig, device: torch.device,
                     on_prediction: Callable[[Volume, np.ndarray], None] | None = None) -> list[dict]:
    """Per-case, per-class metric rows of ``model`` on ``volumes`` (slice-wise at the patch size; docs/evaluation.md,
    'Metrics').

    Distances are in mm where the volume has a spacing, or in voxels with ``eval.distance_units="voxel"`` (the
    released evaluation; docs/evaluation.md, 'Units'). ``on_prediction(volume, prediction)``, if given, sees each
    predicted label volume (uint8 D×H×W) before it is dropped (the test evaluation keeps a few slices of it with
    :class:`QualitativeSlices`).
    """
    rows, first = [], None
    with eval_mode(model):
        for index, vol in enumerate(volumes):  # read one at a time (a --test-root passes a generator)
            first = vol if first is None else first
            if cfg.eval.distance_units == "mm" and (vol.spacing is None) != (first.spacing is None):
                # the first volume that differs from the first one (data changed since the checks before training)
                with_spacing, unspaced = (index, vol.case) if first.spacing is not None else (1, first.case)
                raise DataError(mixed_spacing_text(with_spacing, index + 1, unspaced))
            pred = predict_case(model, vol.image, cfg, device)
            if on_prediction is not None:
                on_prediction(vol, pred)
            spacing = distance_spacing(vol.spacing, cfg.eval.distance_units)
            for row in evaluate_case(pred, vol.label, cfg.data.num_classes, spacing, empty_policy=cfg.eval.empty_policy):
                rows.append({"case": vol.case, **row})
    return rows


def mean_dice(rows: list[dict]) -> float:
    """Mean over cases and classes of the defined Dice values (NaN if none is defined)."""
    return nan_mean([r["dice"] for r in rows])


def validation_dice(model: torch.nn.Module, volumes: Iterable[Volume], cfg: TrialConfig, device: torch.device) -> float:
    """The validation score: ``mean_dice(evaluate_volumes(model, volumes, cfg, device))`` to the last bit, without the
    surface distances that model selection never reads (:func:`medseg_platform.evaluation.metrics.case_dice`)."""
    values = []
    with eval_mode(model):
        for vol in volumes:
            pred = predict_case(model, vol.image, cfg, device)
            values.extend(case_dice(pred, vol.label, cfg.data.num_classes, empty_policy=cfg.eval.empty_policy))
    return nan_mean(values)



class QualitativeSlices:
    """Keeps the middle slice of the first :data:`QUALITATIVE_CASES` test cases (sorted by id) for the overlays.

    The choice depends only on the test case ids and volume depths, so every trial on the same dataset
    keeps the same slices and each method's prediction can be shown next to the others'. Use
    :meth:`keep` as ``evaluate_volumes(..., on_prediction=...)``, then :meth:`save`.
    """

    def __init__(self, test_cases: list[str]):
        self.cases = sorted(test_cases)[:QUALITATIVE_CASES]
        self.samples: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray, tuple[float, float] | None]] = {}

    def keep(self, volume: Volume, prediction: np.ndarray) -> None:
        if volume.case in self.cases:
            z = volume.image.shape[0] // 2
            spacing = tuple(float(s) for s in volume.spacing[1:]) if volume.spacing is not None else None
            self.samples[volume.case] = (z, volume.image[z], volume.label[z], np.asarray(prediction)[z], spacing)

    def save(self, path: Path) -> None:
        """Write ``qualitative.npz`` atomically (the layout is documented in :mod:`medseg_platform.results`)."""
        cases = [c for c in self.cases if c in self.samples]
        arrays: dict[str, np.ndarray] = {
            "cases": np.asarray(cases, dtype=str),
            "slices": np.asarray([self.samples[c][0] for c in cases], dtype=np.int64),
            "spacing": np.asarray([self.samples[c][4] or (math.nan, math.nan) for c in cases], dtype=np.float64).reshape(-1, 2),
        }
        for i, case in enumerate(cases):
            _, image, label, prediction, _ = self.samples[case]
            arrays[f"image_{i}"] = np.asarray(image, dtype=np.float16)
            arrays[f"label_{i}"] = np.asarray(label, dtype=np.uint8)
            arrays[f"prediction_{i}"] = np.asarray(prediction, dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append ".npz" to a name
            np.savez_compressed(fh, **arrays)
