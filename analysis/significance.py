"""Is a table cell significantly different from the best cell of its column? Paired comparisons per cell.

**The tables' marker** (:data:`NOT_SIGNIFICANT_MARK`) follows :func:`confidence_interval`, the interval the claims use
(docs/analysis.md, 'Significance in the tables'): the 95% interval of the cell's mean difference to the best cell,
with the seeds both cells have and the test patients as the sources of variation. A cell is marked when the interval
contains 0 or lies on the better side (possible only where the two cells average different seeds, cases or classes), or when
none can be formed (fewer than 2 test patients, no seed in common): it is not shown to be worse.
A Wilcoxon test over cases on seed-averaged values (below), the marker's rule before, called 63-79% of the cells of
methods as good as the best "worse" in simulated tables whose training runs spread by 2 Dice points, where the interval
calls 10-13% (``benchmarks/bench_table_marker.py``): averaging the seeds hides the variation between training runs,
and a patient's two frames counted as two cases. Its p is still recorded
(``table.csv``'s ``p_vs_best``, the claims' p), read as "these trained models differ on these test cases".

**The Wilcoxon test** (``p_vs_best``, the claims' p: :func:`case_test`):

The unit is the **test case**: both cells are evaluated on the same test cases (trials of one label
fraction share the test split), so a case's value under one method and under the best method form a
pair. Pairs are formed per seed, over the seeds both cells have (:func:`pair_seed_values`), as for the
interval; each case's pairs are then averaged over its seeds: the same case under several seeds is one
correlated observation, not several independent ones.

* class k: the per-case value of class k (``per_case.csv``, a seed's trials averaged); a (case, seed) counts
  where it is defined for both cells;
* ``Avg``: per case and seed, the mean over the classes defined for **both** cells (a method that misses a
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

from medseg_platform.data.layout import patient_of_case
from medseg_platform.stats import nan_mean

ALPHA = 0.05
CONFIDENCE = 1.0 - ALPHA  # of the seeds-and-patients interval (the tables' marker and the claims)
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


def _case_pair(a: Mapping[int, float], b: Mapping[int, float], cls: int | str) -> tuple[float, float] | None:
    """One case's pair of two :func:`seed_averaged` tables for class ``cls`` (an int) or the class average (a str,
    e.g. "Avg", over the classes defined on both sides); None when it has none."""
    if isinstance(cls, str):
        common = sorted(a.keys() & b.keys())
        return (nan_mean(a[k] for k in common), nan_mean(b[k] for k in common)) if common else None
    return (a[cls], b[cls]) if cls in a and cls in b else None


SeedValues = Mapping[Any, tuple[dict[str, dict[int, float]], set[str]]]


def seed_values(by_seed: Mapping[Any, Sequence[Sequence[Mapping[str, Any]]]], metric: str,
                as_number: Callable[[Any], float | None]) -> dict[Any, tuple[dict[str, dict[int, float]], set[str]]]:
    """Per seed, the :func:`seed_averaged` values of ``metric`` of that seed's trials and the cases they tested.
    ``by_seed[seed]``: the ``per_case.csv`` row lists of the seed's trials (one per trial)."""
    return {seed: (seed_averaged(tables, metric, as_number), {str(row["case"]) for table in tables for row in table})
            for seed, tables in by_seed.items()}


def pair_seed_values(a: SeedValues, b: SeedValues, seeds: Sequence[Any], cls: int | str
                     ) -> tuple[list[str], np.ndarray, np.ndarray, int, int]:
    """Per test case and seed, the two sides' values (:func:`seed_values`) of class ``cls`` (or the average over the
    classes both define, :func:`paired_case_values`): ``(cases, a, b, dropped, absent)`` with ``a``, ``b`` of shape
    (cases, seeds), NaN where the pair is left out: ``dropped`` (case, seed) pairs because one side has no defined
    value there, ``absent`` because one side's trials of the seed did not test the case at all."""
    cases = sorted({case for side in (a, b) for seed in seeds for case in side[seed][1]})
    out_a = np.full((len(cases), len(seeds)), np.nan)
    out_b = np.full((len(cases), len(seeds)), np.nan)
    dropped = absent = 0
    for j, seed in enumerate(seeds):
        (values_a, tested_a), (values_b, tested_b) = a[seed], b[seed]
        for i, case in enumerate(cases):  # one case at a time (paired_case_values' arrays per case were most of a big report)
            pair = _case_pair(values_a.get(case, {}), values_b.get(case, {}), cls)
            if pair is not None:
                out_a[i, j], out_b[i, j] = pair
            elif case in tested_a and case in tested_b:
                dropped += 1
            else:
                absent += 1
    return cases, out_a, out_b, dropped, absent


def case_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """:func:`wilcoxon_test` over test cases of two (cases, seeds) arrays of :func:`pair_seed_values` (NaN: a pair left
    out, on both sides together): each case's mean over its kept seeds; cases without a kept pair are left out."""
    kept = ~np.all(np.isnan(a - b), axis=1)
    return wilcoxon_test(np.nanmean(a[kept], axis=1), np.nanmean(b[kept], axis=1))


def confidence_interval(differences: np.ndarray, cases: Sequence[str],
                        confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The interval of the mean of ``differences`` (cases, seeds), NaN = dropped pair (docs/analysis.md, 'How a claim
    is tested'): ``Δ ± t · SE`` with ``SE² = var(Δ_j) / n_seeds + var(Δ_p) / n_patients`` (seed j's and patient p's mean
    differences; a patient's volumes ``patientXXX_frameNN`` are one cluster) and Student's t with Satterthwaite's
    degrees of freedom. With one seed, the patients' term alone.

    ``cases``: the case ids of the rows (their patients are the clusters). (NaN, NaN) when no pair is defined or
    fewer than 2 patients have one; the point ``(Δ, Δ)`` when every seed and patient has the same mean difference.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d.reshape(len(d), -1)
    defined = ~np.isnan(d)
    rows, columns = defined.any(axis=1), defined.any(axis=0)
    d, kept_cases = d[rows][:, columns], [case for case, keep in zip(cases, rows) if keep]
    if d.size == 0:
        return math.nan, math.nan
    mean = float(np.nanmean(d))
    seed_means = np.nanmean(d, axis=0)
    clusters: dict[str, list[int]] = {}
    for i, case in enumerate(kept_cases):
        clusters.setdefault(patient_of_case(str(case)), []).append(i)
    patient_means = np.array([np.nanmean(d[members]) for members in clusters.values()])
    n_seeds, n_patients = len(seed_means), len(patient_means)
    if n_patients < 2:
        return math.nan, math.nan
    seed_term = float(seed_means.var(ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    patient_term = float(patient_means.var(ddof=1)) / n_patients
    variance = seed_term + patient_term
    if variance == 0.0:
        return mean, mean
    # Satterthwaite: the degrees of freedom of a sum of two independent variance estimates
    denominator = patient_term ** 2 / (n_patients - 1) + (seed_term ** 2 / (n_seeds - 1) if n_seeds > 1 else 0.0)
    dof = variance ** 2 / denominator
    half = float(stats.t.ppf(0.5 + confidence / 2.0, dof)) * math.sqrt(variance)
    return mean - half, mean + half


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


def caption_note(any_tested: bool, any_untestable: bool, interval: bool = True) -> str:
    """The caption sentence that explains the marker: with ``interval`` (tables since the interval), the 95%
    seeds-and-patients interval of the difference to the best (:func:`confidence_interval`); else the Wilcoxon test
    an older ``table.csv`` recorded."""
    if interval:
        text = (f"{NOT_SIGNIFICANT_MARK} not significantly worse than the best of its column: the {CONFIDENCE:.0%} interval "
                "of the difference, over the seeds both cells have and the test patients (as the claims'; with one seed, the "
                "test patients only), contains 0 (or lies on the better side, which only a cell averaging other seeds, test "
                "cases or classes than the best's can)")
        if any_untestable:
            text += "; cells with fewer than 2 test patients or no seed in common with the best are ‡ too (untested)"
        if not any_tested:
            text = (f"No cell could be compared with the best of its column, so none was tested ({NOT_SIGNIFICANT_MARK} on every "
                    "compared cell): the interval needs 2 or more test patients (a patient's volumes count as one) and a seed "
                    "in common with the best")
        return text + "."
    text = (f"{NOT_SIGNIFICANT_MARK} the difference to the best of its column is not significant "
            f"({TEST_NAME} over test cases, seeds averaged per case, p \u2265 {ALPHA:g})")
    if any_untestable:
        text += f"; cells with fewer than {MIN_PAIRS} test cases that differ are not tested"
    if not any_tested:
        text = f"No cell had {MIN_PAIRS} or more test cases differing from the best of its column, so none was tested"
    return text + "."
