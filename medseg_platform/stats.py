"""The one NaN-aware mean of the platform and the analysis: test means of a trial, table cells, summaries.

An undefined value (NaN, e.g. HD95 of a class that is absent from both masks; ``None`` from a table cell) is left
out; the mean of no defined value is NaN. Every mean over cases, classes or seeds that a result file or a table cell
shows goes through :func:`nan_mean` (or :func:`defined` where it also needs the spread), so they agree to the last bit.
The claims' paired statistics (:mod:`analysis.claims`, :mod:`analysis.significance`) average arrays of paired
differences along an axis with ``np.nanmean`` instead; they drop the all-undefined rows and columns first, and no
table shows those means.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def defined(values: Iterable[float | None]) -> np.ndarray:
    """The values that are not NaN (``None`` counts as NaN), in order, as a float64 array of shape (n,)."""
    array = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return array[~np.isnan(array)]


def nan_mean(values: Iterable[float | None]) -> float:
    """The mean of the defined values (:func:`defined`); NaN when none is defined."""
    kept = defined(values)
    return float(kept.mean()) if kept.size else math.nan
