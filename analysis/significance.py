"""Is a table cell significantly different from the best cell of its column? A paired test per cell.

The unit is the **test case**: both cells are evaluated on the same test cases (trials of one label
fraction share the test split), so a case's value under one method and under the best method form a
pair. The seeds of a cell are averaged first (per case and class, the mean over the cell's trials of the
defined values): the same case under several seeds is one correlated observation, not several
independent ones.

* class k: the seed-averaged per-case value of class k (``per_case.csv``); a case counts where it is
  defined for both cells;
* ``Avg``: per case, the mean over the classes defined for **both** cells (a method that misses a
  structure, whose HD95 is then undefined, is not compared on an easier subset of classes).

The test is the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
dropped as in Wilcoxon's original method; ``method="auto"``: the exact null distribution for small
samples, an exact test over every sign pattern for small samples with ties or zeros (enumerated here,
vectorised, with scipy's p-value to the last bit: :func:`_exact_signed_rank_p`), else the normal approximation
with tie and continuity correction). With fewer than :data:`MIN_PAIRS` non-zero differences the cell is "not
testable" (p NaN): 6 is the smallest number whose exact two-sided p-value can fall below 0.05 (2 / 2^6).
If every paired difference is zero over at least :data:`MIN_PAIRS` pairs, the two cells are identical and
p = 1 (over fewer pairs they are not testable either). The best cell is chosen from
the same data and every cell is tested against it without a multiple-comparison correction: read the
marker as a screen, not as a confirmatory test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medseg_platform.stats import nan_mean

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


def seed_averaged(per_case_tables: Sequence[Sequence[Mapping[str, Any]]], metric: str,
                  as_number: Callable[[Any], float | None]) -> dict[str, dict[int, float]]:
    """Per test case and class: the mean over the given trials (seeds) of the defined values of ``metric``.

    ``per_case_tables``: one ``per_case.csv`` row list per trial. Undefined values (None/NaN) are skipped;
    a (case, class) with no defined value is absent.
    """
    values: dict[str, dict[int, list[float]]] = {}
    for per_case in per_case_tables:
        for row in per_case:
            value = as_number(row.get(metric))
            if value is None or math.isnan(value):
                continue
            values.setdefault(str(row["case"]), {}).setdefault(int(float(row["class"])), []).append(value)
    return {case: {cls: nan_mean(cell) for cls, cell in classes.items()} for case, classes in values.items()}


def paired_case_values(a: Mapping[str, Mapping[int, float]], b: Mapping[str, Mapping[int, float]],
                       cls: int | str) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of two :func:`seed_averaged` tables for class ``cls`` (an int) or the class average (a
    str, e.g. "Avg", over the classes defined in both), in case order: two (n,) arrays."""
    xs, ys = [], []
    for case in sorted(a.keys() & b.keys()):
        if isinstance(cls, str):
            common = sorted(a[case].keys() & b[case].keys())
            if common:
                xs.append(nan_mean(a[case][k] for k in common))
                ys.append(nan_mean(b[case][k] for k in common))
        elif cls in a[case] and cls in b[case]:
            xs.append(a[case][cls])
            ys.append(b[case][cls])
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def wilcoxon_test(a: np.ndarray, b: np.ndarray, min_pairs: int = MIN_PAIRS) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of paired samples ``a`` and ``b`` (shape (n,) each).

    ``n_pairs`` is the number of pairs; the test needs ``min_pairs`` non-zero differences, or ``min_pairs`` pairs
    that are all equal (p = 1).
    """
    n = int(len(a))
    if n >= min_pairs and np.all(a == b):  # identical on enough cases; on fewer, "not testable" below
        return PairedTest(1.0, n)
    if int(np.count_nonzero(a != b)) < min_pairs:
        return PairedTest(math.nan, n)
    exact = _exact_signed_rank_p(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if exact is not None:
        return PairedTest(exact, n)
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():  # e.g. "sample size too small for the normal approximation"
        warnings.simplefilter("ignore")
        p = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method="auto", correction=True).pvalue)
    return PairedTest(p if math.isfinite(p) else math.nan, n)


#: Up to this many pairs, samples with ties or zero differences are tested by enumerating every sign pattern
#: (scipy's ``method="auto"`` does the same, through a generic permutation test, 2^n statistic calls).
EXACT_MAX_PAIRS = 13
_RTOL = np.finfo(np.float64).eps * 100  # scipy's tolerance for null values equal to the observed statistic


def _exact_signed_rank_p(d: np.ndarray) -> float | None:
    """Two-sided p of the signed-rank test of differences ``d`` (shape (n,)) by full enumeration, or None.

    Only where ``scipy.stats.wilcoxon(method="auto")`` runs its exact permutation test (ties or zeros among at
    most :data:`EXACT_MAX_PAIRS` differences); elsewhere None (scipy's exact table or normal approximation is
    already cheap). Same null, statistic and counting as scipy, vectorised: zeros are dropped (Wilcoxon's method;
    flipping a zero changes nothing, so the proportions over 2^m sign patterns of the m non-zero differences are
    those over 2^n), R+ is the sum of the average ranks of |d| over the positive differences, and
    p = 2 min(#{R+* <= R+}, #{R+* >= R+}) / 2^m, capped at 1. Average ranks are multiples of 1/2, so every sum
    is exact in float64 and p equals scipy's to the last bit (``tests/analysis/test_significance.py``).
    """
    n = d.size
    nonzero = d[d != 0]
    if n > EXACT_MAX_PAIRS or nonzero.size == 0:
        return None
    from scipy.stats import rankdata

    magnitudes = np.abs(nonzero)
    if nonzero.size == n and np.unique(magnitudes).size == n:
        return None  # no tie, no zero: scipy's exact distribution
    ranks = rankdata(magnitudes)
    observed = float(ranks[nonzero > 0].sum())
    m = nonzero.size
    patterns = (np.arange(2 ** m)[:, None] >> np.arange(m)) & 1  # (2^m, m): which differences are positive
    null = patterns @ ranks
    gamma = abs(_RTOL * observed)
    extreme = min(int(np.count_nonzero(null <= observed + gamma)), int(np.count_nonzero(null >= observed - gamma)))
    return min(1.0, 2.0 * extreme / 2 ** m)


def caption_note(any_tested: bool, any_untestable: bool) -> str:
    """The caption sentence that names the test and explains the marker."""
    text = (f"{NOT_SIGNIFICANT_MARK} the difference to the best of its column is not significant "
            f"({TEST_NAME} over test cases, seeds averaged per case, p \u2265 {ALPHA:g})")
    if any_untestable:
        text += f"; cells with fewer than {MIN_PAIRS} test cases that differ are not tested"
    if not any_tested:
        text = f"No cell had {MIN_PAIRS} or more test cases differing from the best of its column, so none was tested"
    return text + "."
