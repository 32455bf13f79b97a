"""The paired significance test and its marker in the tables, on data where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import significance, table_render, tables
from medseg_platform.results import scan_study
from tests.analysis.fakes import make_fake_study, write_fake_trial


def test_wilcoxon_on_known_samples():
    a = np.linspace(0.7, 0.9, 10)
    assert significance.wilcoxon_test(a, a - 0.1).p_value < 0.01  # every pair worse: significant
    noisy = a + np.array([0.01, -0.012, 0.008, -0.009, 0.011, -0.01, 0.009, -0.011, 0.01, -0.008])
    assert significance.wilcoxon_test(a, noisy).not_significant
    assert significance.wilcoxon_test(a, a).p_value == 1.0  # identical cells
    # equal on fewer than MIN_PAIRS cases is not "identical": such a cell gets no marker (it once got a ‡ from one pair)
    assert not significance.wilcoxon_test(a[:1], a[:1]).testable
    assert not significance.wilcoxon_test(a[:5], a[:5]).testable
    assert significance.wilcoxon_test(a[:6], a[:6]).p_value == 1.0
    few = significance.wilcoxon_test(a[:5], a[:5] - 0.1)
    assert not few.testable and few.n_pairs == 5 and not few.not_significant


def test_small_samples_with_ties_use_the_exact_distribution_and_zeros_do_not_count():
    # |d| = 0.5, 1, 1, 2, 2, 3 with only the 0.5 negative: the exact (permutation) p is 4/64 = 0.0625; the
    # normal approximation without continuity correction would say 0.045 (significant)
    d = np.array([-0.5, 1, 1, 2, 2, 3])
    assert significance.wilcoxon_test(d, np.zeros(6)).p_value == pytest.approx(0.0625)
    # ten pairs, seven of them equal: three differing cases cannot be tested
    a, b = np.arange(10.0), np.arange(10.0)
    b[:3] -= 1.0
    test = significance.wilcoxon_test(a, b)
    assert test.n_pairs == 10 and not test.testable


def test_seeds_are_averaged_per_case_and_avg_uses_the_classes_both_cells_define():
    def rows(values):  # {(case, class): value}
        return [{"case": c, "class": k, "hd95": v} for (c, k), v in values.items()]

    nan = float("nan")
    a = significance.seed_averaged([rows({("c1", 1): 10.0, ("c1", 2): 4.0}), rows({("c1", 1): 20.0, ("c1", 2): 6.0})],
                                   "hd95", lambda v: float(v))
    assert a == {"c1": {1: 15.0, 2: 5.0}}  # one observation per case: the mean over the two seeds
    b = significance.seed_averaged([rows({("c1", 1): nan, ("c1", 2): 3.0, ("c2", 1): 1.0})], "hd95", lambda v: float(v))
    assert b == {"c1": {2: 3.0}, "c2": {1: 1.0}}  # undefined values are left out
    ours, theirs = {0: (a, {"c1"}), 1: (a, {"c1"})}, {0: (b, {"c1", "c2"})}
    cases, x, y, dropped, absent = significance.pair_seed_values(ours, theirs, [0], "Avg")
    # c1 over class 2 only (class 1 undefined in b); c2 untested by a: absent
    assert cases == ["c1", "c2"] and x[0].tolist() == [5.0] and y[0].tolist() == [3.0] and (dropped, absent) == (0, 1)
    assert np.isnan(x[1]).all() and np.isnan(y[1]).all()
    cases, x, y, dropped, absent = significance.pair_seed_values(ours, theirs, [0], 1)
    assert np.isnan(x).all() and (dropped, absent) == (1, 1)  # c1: class 1 undefined in b
    # the test over cases: each case's mean over its kept seeds, cases without a kept pair left out
    x, y = np.array([[1.0, 3.0], [2.0, np.nan], [np.nan, np.nan]] + [[5.0 + k, 5.0 + k] for k in range(5)]), np.zeros((8, 2))
    y[2] = np.nan
    test = significance.case_test(x, y)
    assert test.n_pairs == 7 and test.p_value == significance.wilcoxon_test(np.array([2.0, 2.0, 5, 6, 7, 8, 9]), np.zeros(7)).p_value


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    records, _ = scan_study(make_fake_study(tmp_path_factory.mktemp("sig")))
    return tables.build_table(records, metrics=("dice", "hd95"))


def _cells(markdown: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and not line.startswith(("| Method", "| ---"))}


def test_marker_only_where_the_difference_to_the_best_is_not_significant(df):
    md = table_render.to_markdown(df, "dice")
    cells = _cells(md)
    mark = significance.NOT_SIGNIFICANT_MARK
    # 8 test cases (2 seeds averaged) per cell; MONA best, ARCO-SG within +-1 point (not significant), MT -15 points
    assert all(c.startswith("**") and mark not in c for c in cells["MONA"][:3])
    assert all(c.endswith(mark) for c in cells["ARCO-SG"])
    assert not any(mark in c for c in cells["Mean teacher"])
    assert "not significantly worse than the best of its column: the 95% interval of the difference, over the seeds both " \
           "cells have and the test patients" in md and "contains 0" in md
    sub = df[(df["metric"] == "dice") & (df["row"] == "Mean teacher")]
    assert (sub["ci_high"] < 0).all()  # the whole interval of MT - MONA below 0: significant
    assert (sub["p_vs_best"] < 0.05).all() and (sub["n_pairs"] == 8).all()  # the Wilcoxon p is still recorded
    arco = df[(df["metric"] == "dice") & (df["row"] == "ARCO-SG")]
    assert ((arco["ci_low"] <= 0) & (arco["ci_high"] >= 0)).all()
    assert df[df["row"] == "MONA"]["ci_low"].isna().all()  # the best cells are not compared
    tex = table_render.to_latex(df, "dice")
    assert r"$^\ddagger$" in tex and "contains 0" in tex
    hd = _cells(table_render.to_markdown(df, "hd95"))  # lower is better: MONA best again, same verdicts
    assert all(c.endswith(mark) for c in hd["ARCO-SG"]) and not any(mark in c for c in hd["Mean teacher"])


def test_an_interval_that_ends_at_zero_contains_it(df):
    """"Contains 0" includes an end at 0: such a cell is not shown as differing (no test had the boundary: the test
    audit)."""
    frame = df.copy()
    mt = (frame["metric"] == "dice") & (frame["row"] == "Mean teacher")
    frame.loc[mt, "ci_high"] = 0.0
    assert all(c.endswith(significance.NOT_SIGNIFICANT_MARK) for c in _cells(table_render.to_markdown(frame, "dice"))["Mean teacher"])
    frame.loc[mt, "ci_high"] = -1e-9
    assert not any(significance.NOT_SIGNIFICANT_MARK in c for c in _cells(table_render.to_markdown(frame, "dice"))["Mean teacher"])


def test_a_cell_without_an_interval_is_marked_untested_and_the_caption_says_so(tmp_path):
    """A cell that cannot be shown to differ is not shown as differing: with one test patient (no interval) it gets
    the marker, and the caption says why (a cell with too few pairs used to be left unmarked, reading as significant)."""
    for row, delta in (("MONA", 0.0), ("Mean teacher", -0.2)):
        dice = lambda c, k, d=delta: 0.7 + d + 0.01 * k  # noqa: E731
        write_fake_trial(tmp_path, row=row, order=0, patients=1, seed=1, dice=dice, qualitative_shift=None,
                         cases=["patient001_frame01", "patient001_frame12"])  # one test patient: no interval
        for seed in (1, 2):
            write_fake_trial(tmp_path, row=row, order=0, patients=3, seed=seed, dice=lambda c, k, d=delta, s=seed: 0.7 + d + 0.01 * s,
                             qualitative_shift=None)
    df = tables.build_table(scan_study(tmp_path)[0], metrics=("dice",))
    md = table_render.to_markdown(df, "dice")
    cells = _cells(md)
    mark = significance.NOT_SIGNIFICANT_MARK
    assert all(c.endswith(mark) for c in cells["Mean teacher"][:4])  # 1 patient: untested, marked
    assert not any(mark in c for c in cells["Mean teacher"][4:])  # 3 patients: -20 points in every seed and patient
    assert "cells with fewer than 2 test patients or no seed in common with the best are \u2021 too (untested)" in md
    mt = df[(df["row"] == "Mean teacher") & (df["class"] == "Avg")].set_index("column")
    assert math.isnan(mt.loc["1 patient (1.4%)", "ci_low"])
    assert mt.loc["3 patients (4.3%)", "ci_high"] == pytest.approx(-20.0)


def test_seeds_that_disagree_leave_the_difference_not_significant_where_the_case_test_would_call_it(tmp_path):
    """The statistics probe's finding: per-case values averaged over seeds hide the training-run variation, so a
    Wilcoxon test over cases calls a cell worse than the best when its seeds disagree about the sign. The marker now
    follows the seeds-and-patients interval (the claims'): +6 and -4 points in two seeds is no evidence."""
    for seed, shift in ((1, 0.06), (2, -0.04), (3, 0.01)):
        write_fake_trial(tmp_path, row="MONA", order=0, patients=1, seed=seed,
                         dice=lambda c, k, s=shift: 0.6 + s + 0.001 * int(c[7:10]), qualitative_shift=None)
        write_fake_trial(tmp_path, row="Mean teacher", order=1, patients=1, seed=seed,
                         dice=lambda c, k: 0.6 + 0.001 * int(c[7:10]), qualitative_shift=None)
    df = tables.build_table(scan_study(tmp_path)[0], metrics=("dice",))
    mt = df[(df["row"] == "Mean teacher") & (df["class"] == "Avg")].iloc[0]
    assert mt["p_vs_best"] < 0.05  # every case 1 point lower, averaged over the seeds: the case test calls it
    assert mt["ci_low"] < 0 < mt["ci_high"]
    assert _cells(table_render.to_markdown(df, "dice"))["Mean teacher"][-1].endswith(significance.NOT_SIGNIFICANT_MARK)


def test_a_cell_better_than_the_best_on_their_shared_seeds_is_not_shown_as_worse(tmp_path):
    """The best is the best mean over each cell's own seeds; a row whose seed 3 errored can be the best while the other
    row beats it by 4 points in both shared seeds (the statistics review: that row, interval [+2, +6], was left
    unmarked, read as significantly worse). Its p_vs_best is the claim's p on the same pair, over the shared seeds
    (it averaged every seed of each cell before)."""
    from analysis.claims import evaluate_claim
    from medseg_platform.claims_spec import claim

    for seed, level in ((1, 0.80), (2, 0.82), (3, 0.50)):  # A: a weak seed 3
        write_fake_trial(tmp_path, row="A", order=0, patients=1, seed=seed, qualitative_shift=None,
                         dice=lambda c, k, v=level: v + 0.002 * ((int(c[7:10]) * 3 + k) % 5))
    for seed, level in ((1, 0.76), (2, 0.78)):  # B: seed 3 missing, each shared seed 4 points below A's
        write_fake_trial(tmp_path, row="B", order=1, patients=1, seed=seed, qualitative_shift=None,
                         dice=lambda c, k, v=level: v + 0.002 * ((int(c[7:10]) * 7 + k) % 5))
    records = scan_study(tmp_path)[0]
    df = tables.build_table(records, metrics=("dice",))
    a = df[(df["row"] == "A") & (df["class"] == "Avg")].iloc[0]
    b = df[(df["row"] == "B") & (df["class"] == "Avg")].iloc[0]
    assert b["mean"] > a["mean"] and math.isnan(b["ci_low"])  # B is the best (its two seeds' mean)
    assert 0 < a["ci_low"] < 4 < a["ci_high"]  # A - B over seeds 1 and 2: about +4, wholly above 0
    cells = _cells(table_render.to_markdown(df, "dice"))
    assert cells["B"][-1].startswith("**") and cells["A"][-1].endswith(significance.NOT_SIGNIFICANT_MARK)
    result = evaluate_claim(claim("A", "B", "1", "test"), records)
    assert result.seeds == (1, 2) and a["p_vs_best"] == result.p_value and a["n_pairs"] == result.n_pairs // 2 == 8
    # lower is better: the same rule on the other side of 0
    frame = df[df["metric"] == "dice"].copy()
    frame["metric"], frame["ci_low"], frame["ci_high"] = "hd95", -frame["ci_high"], -frame["ci_low"]
    frame["mean"] = 100 - frame["mean"]
    assert _cells(table_render.to_markdown(frame, "hd95"))["A"][-1].endswith(significance.NOT_SIGNIFICANT_MARK)
    frame.loc[frame["row"] == "A", ["ci_low", "ci_high"]] = [0.5, 3.0]  # wholly worse: unmarked
    assert not _cells(table_render.to_markdown(frame, "hd95"))["A"][-1].endswith(significance.NOT_SIGNIFICANT_MARK)


def test_a_structure_absent_from_every_test_case_leaves_no_dice_average_partial(tmp_path):
    """Under the "nan" policy a row that predicts nothing of a structure absent from every test case has no Dice for it,
    and a row that predicts it there scores 0. That made the first row's Avg partial, never bold, and the row of false
    positives the only one eligible, hence bold at half the other's Dice (the statistics review). Distances keep
    the rule: their undefined values can hide a missed structure."""
    for seed in (1, 2):
        write_fake_trial(tmp_path, row="Good", order=0, patients=1, seed=seed, qualitative_shift=None,
                         dice=lambda c, k, s=seed: math.nan if k == 3 else 0.8 + 0.01 * s + 0.001 * int(c[7:10]))
        write_fake_trial(tmp_path, row="False positives", order=1, patients=1, seed=seed, qualitative_shift=None,
                         dice=lambda c, k, s=seed: 0.0 if k == 3 else 0.6 + 0.01 * s + 0.001 * int(c[7:10]))
    df = tables.build_table(scan_study(tmp_path)[0], metrics=("dice", "hd95"))
    assert tables.partial_averages(df.to_dict("records")) == {("Good", "1 patient (1.4%)", "hd95")}
    cells = _cells(table_render.to_markdown(df, "dice"))
    assert cells["Good"][-1].startswith("**81.8") and not cells["False positives"][-1].startswith("**")
    good = df[(df["row"] == "Good") & (df["metric"] == "dice") & (df["class"] == "Avg")].iloc[0]
    assert math.isnan(good["ci_low"]) and good["avg_classes"] == 2  # the best, over the classes it defines


def test_exact_enumeration_equals_scipys_permutation_test_with_ties_and_zeros():
    """Where scipy's ``method="auto"`` runs its (slow) exact permutation test, the vectorised enumeration gives
    the same p-value to the last bit; without ties or zeros, or above 13 pairs, it defers to scipy."""
    import warnings

    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(60):
        n = int(rng.integers(6, 11))
        a, b = np.round(rng.random(n) * 8) / 4, np.round(rng.random(n) * 8) / 4  # quarter steps: ties and zeros
        exact = significance._exact_signed_rank_p(a - b)
        if exact is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)
        assert exact == reference, (a - b, exact, reference)
        compared += 1
    assert compared >= 30
    assert significance._exact_signed_rank_p(np.array([0.1, -0.25, 0.3, 0.45, -0.5, 0.7])) is None  # no tie, no zero
    assert significance._exact_signed_rank_p(np.tile([0.5, -0.5], 7)) is None  # 14 pairs: scipy's approximation
    assert significance._exact_signed_rank_p(np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.0])) == 2 / 32  # all positive
