"""Evaluation: per-case, per-class metrics, slice-wise volume prediction, folder scoring (docs/evaluation.md).

Modules: :mod:`.metrics` (Dice/Jaccard/HD95/ASD, medpy-compatible), :mod:`.predict` (``predict_volume``,
imports torch), :mod:`.scoring` (folders → per_case.csv/summary), :mod:`.cli` (``medseg evaluate``).
Names below are imported lazily so that ``import medseg_platform.evaluation`` stays cheap (no torch/scipy).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "METRICS": "metrics",
    "binary_metrics": "metrics",
    "distance_spacing": "metrics",
    "evaluate_case": "metrics",
    "summarize": "metrics",
    "surface": "metrics",
    "predict_volume": "predict",
    "evaluate_folder": "scoring",
    "write_results": "scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
