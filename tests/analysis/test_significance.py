"""The paired significance test and its marker in the tables, on data where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import significance, tables
from medseg_platform.results import scan_study
from tests.analysis.fakes import make_fake_study, per_case_rows, write_fake_trial


def test_wilcoxon_on_known_samples():
    a = np.linspace(0.7, 0.9, 10)
    assert significance.wilcoxon_test(a, a - 0.1).p_value < 0.01  # every pair worse: significant
    noisy = a + np.array([0.01, -0.012, 0.008, -0.009, 0.011, -0.01, 0.009, -0.011, 0.01, -0.008])
    assert significance.wilcoxon_test(a, noisy).not_significant
    assert significance.wilcoxon_test(a, a).p_value == 1.0  # identical cells
    few = significance.wilcoxon_test(a[:5], a[:5] - 0.1)
    assert not few.testable and few.n_pairs == 5 and not few.not_significant


def test_pairs_are_matched_on_seed_and_case_and_skip_undefined():
    a = {("1", "c1"): 0.5, ("1", "c2"): math.nan, ("2", "c1"): 0.7}
    b = {("1", "c1"): 0.4, ("1", "c2"): 0.3, ("2", "c1"): 0.6, ("3", "c1"): 0.1}
    x, y = significance.paired_arrays(a, b)
    assert x.tolist() == [0.5, 0.7] and y.tolist() == [0.4, 0.6]
    rows = per_case_rows(lambda case, cls: 0.1 * cls, cases=["c1"])
    assert significance.case_values(rows, "dice", 2, lambda v: float(v)) == {"c1": pytest.approx(0.2)}
    assert significance.case_values(rows, "dice", "Avg", lambda v: float(v)) == {"c1": pytest.approx(0.2)}


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    records, _ = scan_study(make_fake_study(tmp_path_factory.mktemp("sig")))
    return tables.build_table(records, metrics=("dice", "hd95"))


def _cells(markdown: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and not line.startswith(("| Method", "| ---"))}


def test_marker_only_where_the_difference_to_the_best_is_not_significant(df):
    md = tables.to_markdown(df, "dice")
    cells = _cells(md)
    mark = significance.NOT_SIGNIFICANT_MARK
    # 2 seeds x 5 cases = 10 pairs per cell; MONA best, ARCO-SG within +-1 point (not significant), MT -15 points
    assert all(c.startswith("**") and mark not in c for c in cells["MONA"][:3])
    assert all(c.endswith(mark) for c in cells["ARCO-SG"])
    assert not any(mark in c for c in cells["Mean teacher"])
    assert "Wilcoxon signed-rank test" in md and "paired over seeds and test cases" in md
    sub = df[(df["metric"] == "dice") & (df["row"] == "Mean teacher")]
    assert (sub["p_vs_best"] < 0.05).all() and (sub["n_pairs"] == 10).all()
    tex = tables.to_latex(df, "dice")
    assert r"$^\ddagger$" in tex and r"p $\geq$ 0.05" in tex
    hd = _cells(tables.to_markdown(df, "hd95"))  # lower is better: MONA best again, same verdicts
    assert all(c.endswith(mark) for c in hd["ARCO-SG"]) and not any(mark in c for c in hd["Mean teacher"])


def test_too_few_pairs_are_not_tested_and_the_caption_says_so(tmp_path):
    for row, delta in (("MONA", 0.0), ("Mean teacher", -0.2)):
        dice = lambda c, k, d=delta: 0.7 + d  # noqa: E731
        write_fake_trial(tmp_path, row=row, order=0, patients=1, seed=1, dice=dice, qualitative_shift=None)  # 5 pairs
        for seed in (1, 2):  # 10 pairs
            write_fake_trial(tmp_path, row=row, order=0, patients=3, seed=seed, dice=dice, qualitative_shift=None)
    df = tables.build_table(scan_study(tmp_path)[0], metrics=("dice",))
    md = tables.to_markdown(df, "dice")
    assert significance.NOT_SIGNIFICANT_MARK not in md.split("\n\n")[1]  # the table body
    assert "cells with fewer than 6 pairs are not tested" in md
    mt = df[(df["row"] == "Mean teacher") & (df["class"] == "Avg")].set_index("column")
    assert mt.loc["1 patient (1.4%)", "n_pairs"] == 5 and math.isnan(mt.loc["1 patient (1.4%)", "p_vs_best"])
    assert mt.loc["3 patients (4.3%)", "n_pairs"] == 10 and mt.loc["3 patients (4.3%)", "p_vs_best"] < 0.05
