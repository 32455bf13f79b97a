"""Is a table cell significantly different from the best cell of its column? A paired test per cell.

Pairs are (seed, test case): a method and the best method of the same label fraction and class are
compared on the per-case metric of the same test case under the same seed (trials of one seed share
the labelled split and the test cases). Only pairs where both values are defined (finite) count.

* class k: the per-case value of class k from ``per_case.csv``;
* ``Avg``: per (seed, case), the NaN-aware mean over the classes of that case.

The test is the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
dropped as in Wilcoxon's original method; the exact null distribution when the absolute differences
have no ties, else the normal approximation with tie correction). With fewer than :data:`MIN_PAIRS` pairs the cell is
"not testable" (p NaN): 6 is the smallest number of pairs whose exact two-sided p-value can fall below
0.05 (2 / 2^6), so with fewer the marker would say nothing. If every paired difference is zero, the two
cells are identical and p = 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

ALPHA = 0.05
MIN_PAIRS = 6  # the two-sided exact test cannot reach p < 0.05 with 5 pairs (p >= 2/32)
NOT_SIGNIFICANT_MARK = "\u2021"  # double dagger (the dagger marks undefined values)
TEST_NAME = "two-sided Wilcoxon signed-rank test"


@dataclass(frozen=True)
class PairedTest:
    """The result of one paired test: p-value (NaN when not testable) and the number of pairs used."""

    p_value: float
    n_pairs: int

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p_value)

    @property
    def not_significant(self) -> bool:
        """True when tested and p >= :data:`ALPHA`."""
        return self.testable and self.p_value >= ALPHA


def case_values(per_case: Sequence[Mapping[str, Any]], metric: str, cls: int | str,
                as_number: Callable[[Any], float | None]) -> dict[str, float]:
    """Per test case: the value of ``metric`` for class ``cls`` (an int) or the class mean (any str, e.g. "Avg").

    Undefined values are NaN; a case whose classes are all undefined has a NaN mean.
    """
    by_case: dict[str, list[float]] = {}
    for row in per_case:
        if isinstance(cls, str) or int(float(row["class"])) == cls:
            value = as_number(row.get(metric))
            by_case.setdefault(str(row["case"]), []).append(math.nan if value is None else value)
    out = {}
    for case, values in by_case.items():
        finite = [v for v in values if not math.isnan(v)]
        out[case] = sum(finite) / len(finite) if finite else math.nan
    return out


def paired_arrays(a: Mapping[tuple, float], b: Mapping[tuple, float]) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``a`` and ``b`` on their common keys where both are finite, in key order: two (n,) arrays."""
    keys = sorted(k for k in a.keys() & b.keys() if math.isfinite(a[k]) and math.isfinite(b[k]))
    return (np.asarray([a[k] for k in keys], dtype=float), np.asarray([b[k] for k in keys], dtype=float))


def wilcoxon_test(a: np.ndarray, b: np.ndarray, min_pairs: int = MIN_PAIRS) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of paired samples ``a`` and ``b`` (shape (n,) each)."""
    n = int(len(a))
    if n < min_pairs:
        return PairedTest(math.nan, n)
    if np.all(a == b):
        return PairedTest(1.0, n)
    from scipy.stats import wilcoxon

    d = np.abs(a - b)
    d = d[d != 0]
    # exact null distribution without ties (n <= 50), else the normal approximation with tie correction;
    # scipy's "auto" would run a slow permutation test for small samples with ties
    method = "exact" if d.size <= 50 and np.unique(d).size == d.size else "approx"
    with warnings.catch_warnings():  # e.g. "sample size too small for the normal approximation"
        warnings.simplefilter("ignore")
        p = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method=method).pvalue)
    return PairedTest(p if math.isfinite(p) else math.nan, n)


def caption_note(any_tested: bool, any_untestable: bool) -> str:
    """The caption sentence that names the test and explains the marker."""
    text = (f"{NOT_SIGNIFICANT_MARK} the difference to the best of its column is not significant "
            f"({TEST_NAME}, paired over seeds and test cases, p \u2265 {ALPHA:g})")
    if any_untestable:
        text += f"; cells with fewer than {MIN_PAIRS} pairs are not tested"
    if not any_tested:
        text = f"No cell had {MIN_PAIRS} or more (seed, test case) pairs, so none was tested against the best of its column"
    return text + "."
