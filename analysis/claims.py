"""Test the papers' claims a study declares (``study.json`` "claims"), for the report's "Claims" section.

A claim (:func:`medseg_platform.claims_spec.claim`) says "row A is better than (``>``) or not worse than
(``>=``) row B" at a label fraction (``column``, as ``data.labelled`` writes it; B may name its own,
``b_column``), on a per-case metric (default Dice). It is tested on the trials' ``per_case.csv`` only:

* **pairs**: trials are matched by row label (``tags["row"]``), label fraction (``config.data.labelled``)
  and seed; a seed that only one side has is left out. For each shared seed and test case the per-case
  value of each side is the mean over the classes defined for **both** sides (the tables' "Avg" rule:
  :func:`analysis.significance.seed_averaged` on that seed's trials, then
  :func:`analysis.significance.pair_seed_values`). A (case, seed) where either side has no defined
  value is dropped (pairwise) and counted. ``n`` = the (case, seed) pairs kept.
* **difference**: the mean over the pairs of A - B, in points (x100: Dice points).
* **95% CI**: ``Δ ± t · SE`` with ``SE² = var_seeds(Δ_j) / n_seeds + var_patients(Δ_p) / n_patients``, where
  ``Δ_j`` is seed j's mean difference over the cases and ``Δ_p`` one patient's mean difference over its cases
  (``patientXXX_frameNN`` volumes of one patient are one cluster: :func:`medseg_platform.data.layout.patient_of_case`)
  and seeds; ``t`` is Student's quantile with Satterthwaite's degrees of freedom for the two terms. This is the
  two-way (seeds x test patients) random-effects interval; it double-counts the seed-by-case interaction, so it
  errs wide. A percentile bootstrap over cases and seeds (what this module used before) covered the true mean
  63-87% of the time in simulations with 2-5 seeds (``docs/analysis.md``, 'How a claim is tested'); this
  interval 89-96%.
* **seeds**: training randomness is part of every difference, and one seed cannot measure it (the interval then holds
  the test-case term only); two seeds measure it poorly. With fewer than :data:`MIN_SEEDS` seeds the verdict is
  "inconclusive at this n". Seeds only one side has are left out and named in the ``n`` cell.
* **p**: ``table.csv``'s ``p_vs_best`` test (:func:`analysis.significance.case_test`,
  two-sided Wilcoxon signed-rank) on the per-case values averaged over the kept seeds; "n/a" when fewer
  than :data:`~analysis.significance.MIN_PAIRS` cases differ, but 1 when at least that many were compared and none
  differs (the claims review: the docs said "n/a" there too). It treats the trained models as fixed (test
  cases are its only random unit), so it can be small while the interval, which also counts the variation
  between seeds, crosses the bound. It is reported, not used for the verdict.
* **verdict**, from the CI (low, high), for ``>``: "supported" if low > 0, "contradicted" if high < 0;
  for ``>=``: "supported" if low > -:data:`MARGIN`, "contradicted" if high < -:data:`MARGIN` (A is worse
  by more than the margin); otherwise, or with fewer than ``MIN_PAIRS`` paired test cases or fewer than
  ``MIN_SEEDS`` seeds, "inconclusive at this n". A claim
  whose row or label fraction has no finished trial is "not run" (never an error); one whose trials
  share no seed or no defined pair is "not run" too, with the reason.

:func:`claims_section` renders the Markdown section; for the ``paper`` profile on ACDC (:func:`on_published_data`)
it adds the published difference of the same two rows (:mod:`analysis.published`). See ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.health import NOT_LEARNED, record_health
from analysis.published import published_difference
from analysis.significance import MIN_PAIRS, TEST_NAME, case_test, confidence_interval, pair_seed_values, seed_values
from analysis.markdown import escape_markdown
from analysis.table_render import set_options_text
from analysis.tables import AVG, MISSING, as_number, column_label, metric_style, row_label, trial_seed
from medseg_platform.claims_spec import check_claim
from medseg_platform.data.layout import ACDC_CLASS_NAMES
from medseg_platform.data.splits import PUBLISHED_TRAIN_PATIENTS, resolve_patient_count
from medseg_platform.errors import ConfigError
from medseg_platform.results import TrialRecord

#: Seeds a verdict needs: with one, the variation between training runs is unknown; with two, the interval's
#: Satterthwaite degrees of freedom grow large when the two seeds happen to agree, and it covered 89-90% of the time
#: in benchmarks/bench_claims_coverage.py's settings where the seeds vary most (93.8-96.1% at 3).
MIN_SEEDS = 3
MARGIN = 1.0  # points (Dice points for Dice): how much worse A may be for ">=" ("not worse") to hold
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "supported", "contradicted", "inconclusive at this n", "not run"
PAPER_PROFILE = "paper"


@dataclass(frozen=True)
class PairedValues:
    """Per-case values of the two sides: ``a`` and ``b`` of shape (cases, seeds), NaN where a pair was dropped."""

    cases: list[str]
    seeds: list[Any]
    a: np.ndarray
    b: np.ndarray
    dropped: int  # (case, seed) pairs with a trial on both sides but no defined value on one of them
    absent: int = 0  # (case, seed) pairs whose case one side's trial of the seed did not test

    @property
    def differences(self) -> np.ndarray:
        return self.a - self.b

    @property
    def n_pairs(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.differences)))

    @property
    def n_cases(self) -> int:
        """Test cases with at least one kept pair."""
        return int(np.count_nonzero(~np.all(np.isnan(self.differences), axis=1))) if self.cases else 0


@dataclass(frozen=True)
class ClaimResult:
    """One tested claim; numbers in points (x100 for Dice), NaN when not run."""

    claim: Mapping[str, Any]
    a_column: str  # the column as the tables print it, e.g. "1 patient (1.4%)" ("data.labelled 1" when not run)
    b_column: str
    verdict: str
    difference: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    p_value: float = math.nan
    n_pairs: int = 0
    n_cases: int = 0
    n_seeds: int = 0
    per_seed: tuple[float, ...] = ()  # each kept seed's mean difference over its cases, in seed order
    seeds: tuple[Any, ...] = ()  # the kept seeds, in the order of per_seed
    dropped: int = 0
    absent: int = 0  # (case, seed) pairs whose case one side did not test
    unpaired: str = ""  # seeds only one side has, left out (unpaired_seeds)
    reason: str = ""  # why not run, or what the verdict rests on (no trial of either row learned)
    flagged: tuple[str, ...] = ()  # the compared trials that Trial health flags, e.g. "ACTION s3 did not learn"


def _seed_sort_key(seed: Any) -> tuple:
    number = as_number(seed)
    return (number is None, number or 0.0, str(seed))


def _labelled(record: TrialRecord) -> str:
    """The trial's label fraction as its config gives it (``data.labelled``, as text)."""
    return str(((record.result.get("config") or {}).get("data") or {}).get("labelled"))


def at_fraction(record: TrialRecord, column: str) -> bool:
    """Whether the trial trained at label fraction ``column`` as a claim names it ("3", "100%"): its own
    ``data.labelled`` spelled so, or the patients ``column`` selects of its training patients (its ``labelled``
    record), so that a trial of ``--labelled 5%`` answers a claim at "3" on ACDC's 70 patients (the paper-path
    probe: every published number was lost)."""
    if _labelled(record) == column:
        return True
    labelled = record.result.get("labelled") or {}
    try:
        return resolve_patient_count(column, int(labelled["available_patients"])).patients == int(labelled["num_patients"])
    except (KeyError, TypeError, ValueError):  # an older result without the counts, or a column that is no fraction
        return False


def _trials(records: Sequence[TrialRecord], row: str, column: str) -> dict[Any, list[TrialRecord]]:
    """The finished trials of ``row`` at label fraction ``column`` (:func:`at_fraction`), by seed."""
    out: dict[Any, list[TrialRecord]] = {}
    for record in records:
        if row_label(record) == row and at_fraction(record, column):
            out.setdefault(trial_seed(record), []).append(record)
    return out


def paired_values(a_trials: Mapping[Any, Sequence[TrialRecord]], b_trials: Mapping[Any, Sequence[TrialRecord]],
                  metric: str = "dice") -> PairedValues:
    """Pair the trials of two sides (by seed, then test case); see the module docstring. Values are raw (not x100)."""
    seeds = sorted(a_trials.keys() & b_trials.keys(), key=_seed_sort_key)
    def values(side: Mapping[Any, Sequence[TrialRecord]]):
        return seed_values({s: [t.per_case for t in side[s]] for s in seeds}, metric, as_number)

    cases, a, b, dropped, absent = pair_seed_values(values(a_trials), values(b_trials), seeds, AVG)
    return PairedValues(cases, seeds, a, b, dropped, absent)


def unpaired_seeds(claim: Mapping[str, Any], a_trials: Mapping[Any, Any], b_trials: Mapping[Any, Any]) -> str:
    """The seeds only one side has, which the claim leaves out ("seed 3 of MONA"; "" when every seed is paired): the
    table's cells average them, so the claim's Δ may differ from the difference of the two cells."""
    parts = []
    for row, ours, theirs in ((claim["a"], a_trials, b_trials), (claim["b"], b_trials, a_trials)):
        alone = sorted(ours.keys() - theirs.keys(), key=_seed_sort_key)
        if alone:
            parts.append(f"seed{'s' if len(alone) > 1 else ''} {', '.join(map(str, alone))} of {row}")
    return " and ".join(parts)


def verdict(direction: str, low: float, high: float, n_cases: int, n_seeds: int, margin: float = MARGIN) -> str:
    """The verdict from the CI (points) and the numbers of paired test cases and seeds; see the module docstring."""
    if n_cases < MIN_PAIRS or n_seeds < MIN_SEEDS or math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    bound = 0.0 if direction == ">" else -margin
    if low > bound:
        return SUPPORTED
    if high < bound:
        return CONTRADICTED
    return INCONCLUSIVE


def _column_text(records: Sequence[TrialRecord], column: str) -> str:
    """The table's label of label fraction ``column`` ("1 patient (1.4%)"), from any finished trial at it (another
    row's when the claim's row has none); "1 patient" / "5%" when no trial has it (the percent of patients needs one)."""
    first = next((r for r in records if at_fraction(r, column)), None)
    if first is not None:
        return column_label(first)
    return f"{column} patient{'s' * (column != '1')}" if column.isdigit() else column


def evaluate_claim(claim: Mapping[str, Any], records: Sequence[TrialRecord]) -> ClaimResult:
    """Test one claim dict on the study's finished trials."""
    a_column, b_column = claim["column"], claim.get("b_column", claim["column"])
    metric = claim.get("metric", "dice")
    a_trials, b_trials = _trials(records, claim["a"], a_column), _trials(records, claim["b"], b_column)
    texts = {"a_column": _column_text(records, a_column), "b_column": _column_text(records, b_column)}
    absent = [f"{row} at {column}" for row, column, trials in ((claim["a"], a_column, a_trials), (claim["b"], b_column, b_trials))
              if not trials]
    # a label fraction the study trained no trial at (e.g. its --labelled left the claim's fraction out): say that,
    # rather than name the rows, which a reader then looks for in vain among the trials of the other fractions
    untrained = [column for column in dict.fromkeys((a_column, b_column)) if not any(at_fraction(r, column) for r in records)]
    if untrained:
        where = " or ".join(_column_text(records, column) for column in untrained)
        return ClaimResult(claim, verdict=NOT_RUN, reason=f"the study has no finished trial at {where}, the claim's label "
                                                          "fraction", **texts)
    if absent:
        return ClaimResult(claim, verdict=NOT_RUN, reason="no finished trial of " + " or ".join(absent), **texts)
    shared = {id(r) for trials in a_trials.values() for r in trials} & {id(r) for trials in b_trials.values() for r in trials}
    if shared:  # "5%" and "3" select the same 3 of ACDC's 70 patients: both sides pooled the same trials (the claims review)
        return ClaimResult(claim, verdict=NOT_RUN, reason=f"both sides are the same {len(shared)} trial(s) ({texts['a_column']} "
                                                          f"and {texts['b_column']} select the same patients): a row "
                                                          "compared with itself", **texts)
    pairs = paired_values(a_trials, b_trials, metric)
    if not pairs.seeds:
        return ClaimResult(claim, verdict=NOT_RUN, reason="the two rows share no seed", **texts)
    if pairs.n_pairs == 0:
        return ClaimResult(claim, verdict=NOT_RUN, reason="no test case with a defined value in both rows",
                           dropped=pairs.dropped, **texts)
    scale = metric_style(metric).scale
    differences = pairs.differences * scale
    low, high = confidence_interval(differences, pairs.cases)
    test = case_test(pairs.a, pairs.b)
    seeded = ~np.all(np.isnan(differences), axis=0)
    n_seeds, per_seed = int(np.count_nonzero(seeded)), tuple(float(v) for v in np.nanmean(differences[:, seeded], axis=0))
    # two rows none of whose trials learned compare two failures: the verdict says so (a smoke run's Δ +0.0 read as a
    # finding: the newcomer probe)
    health = {id(r): record_health(r) for trials in (*a_trials.values(), *b_trials.values()) for r in trials}
    failed = all(curve.verdict == NOT_LEARNED for curve in health.values())
    kept_seeds = [seed for seed, kept in zip(pairs.seeds, seeded) if kept]
    # a flagged trial behind a claim's numbers (a seed that did not learn drives its Δ and p): the verdict says which
    # a row against itself at two fractions (label_fractions.py) names the fraction of each flagged trial
    sides = ((claim["a"], texts["a_column"], a_trials), (claim["b"], texts["b_column"], b_trials))
    two_columns = texts["a_column"] != texts["b_column"]
    flagged = _flagged_texts([(f"{row}, {column}" if two_columns else row, seed, health[id(r)].verdict)
                              for row, column, trials in sides for seed in kept_seeds for r in trials.get(seed, ())
                              if health[id(r)].flagged])
    return ClaimResult(claim, verdict=verdict(claim.get("direction", ">"), low, high, pairs.n_cases, n_seeds),
                       difference=float(np.nanmean(differences)), ci=(low, high), p_value=test.p_value,
                       n_pairs=pairs.n_pairs, n_cases=pairs.n_cases, n_seeds=n_seeds, per_seed=per_seed,
                       seeds=tuple(seed for seed, kept in zip(pairs.seeds, seeded) if kept), dropped=pairs.dropped,
                       absent=pairs.absent, unpaired=unpaired_seeds(claim, a_trials, b_trials),
                       reason="no trial of either row learned (Trial health)" if failed else "", flagged=flagged, **texts)


def _flagged_texts(flags: Sequence[tuple[str, Any, str]]) -> tuple[str, ...]:
    """(row, seed, verdict) of flagged trials -> one text per row: "ACTION w/o L_anco s1/s2 still rising, s3 did not
    learn"."""
    by_row: dict[str, dict[str, list[str]]] = {}
    for row, seed, verdict_ in flags:
        seeds = by_row.setdefault(row, {}).setdefault(verdict_, [])
        if f"s{seed}" not in seeds:
            seeds.append(f"s{seed}")
    return tuple(f"{row} " + ", ".join(f"{'/'.join(seeds)} {verdict_}" for verdict_, seeds in verdicts.items())
                 for row, verdicts in by_row.items())


def read_claims(info: Mapping[str, Any]) -> list[dict]:
    """The claims of a ``study.json`` (checked: a one-line ConfigError names the bad one)."""
    claims = info.get("claims") or []
    if not isinstance(claims, list):
        raise ConfigError("study.json claims: must be a list of claim dicts (rerun the study command to rewrite study.json)")
    return [check_claim(c, f"study.json claims[{i}]") for i, c in enumerate(claims)]


# --------------------------------------------------------------------------------------------- Markdown


def _signed(value: float) -> str:
    """``value`` with its sign to one decimal; a value that rounds to zero prints "+0.0", never "-0.0"."""
    return MISSING if math.isnan(value) else f"{round(value, 1) + 0.0:+.1f}"


def _bound(value: float) -> str:
    """A CI bound with its sign, even when it rounds to zero ("-0.0" says the interval reaches below 0); with as many
    decimals (up to 4) as it takes not to show the ">=" margin itself (-0.96, supported, and -1.04, inconclusive, both
    read "-1.0"); closer to it than that, "> -1.0000" or "< -1.0000" (both printed "-1.0000": the claims review)."""
    for decimals in (1, 2, 3, 4):
        if round(value, decimals) != -MARGIN:
            return f"{value:+.{decimals}f}"
    return ("> " if value > -MARGIN else "< " if value < -MARGIN else "") + f"{-MARGIN:+.4f}"  # closer still: the side said


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _n_text(result: ClaimResult) -> str:
    if result.verdict == NOT_RUN:
        return "0"
    text = f"{result.n_pairs} ({result.n_cases} cases \u00d7 {result.n_seeds} seed{'s' if result.n_seeds != 1 else ''}"
    if result.dropped:
        text += f"; {result.dropped} dropped: undefined on either side"
    if result.absent:
        text += f"; {result.absent} not tested by both"
    if result.unpaired:
        text += f"; unpaired, left out: {result.unpaired}"
    return text + ")"


def per_seed_text(result: ClaimResult) -> str:
    """Each kept seed's Δ with its seed ("s1 +2.0 / s2 -1.5"), so a reader sees which seeds the claim pairs."""
    seeds = result.seeds or ("?",) * len(result.per_seed)
    return " / ".join(f"s{seed} {_signed(value)}" for seed, value in zip(seeds, result.per_seed)) or MISSING


def claim_text(result: ClaimResult) -> str:
    """E.g. "ARCO-SG > Supervised only, 1 patient (1.4%)", or with two columns each row with its own."""
    claim = result.claim
    direction = "\u2265" if claim.get("direction", ">") == ">=" else ">"
    metric = "" if claim.get("metric", "dice") == "dice" else f" ({metric_style(claim['metric']).label})"
    if result.a_column == result.b_column:
        return f"{claim['a']} {direction} {claim['b']}, {result.a_column}{metric}"
    return f"{claim['a']}, {result.a_column} {direction} {claim['b']}, {result.b_column}{metric}"


def _published(claim: Mapping[str, Any]):
    """The claim's published difference (:class:`~analysis.published.PublishedDifference`), or None (none published,
    or not a Dice claim)."""
    if claim.get("metric", "dice") != "dice":
        return None
    a, b = claim.get("published_rows") or (claim["a"], claim["b"])
    return published_difference(a, b, claim["column"], claim.get("b_column"))


def _published_text(claim: Mapping[str, Any]) -> str:
    if claim.get("metric", "dice") != "dice":
        return "n/a (Dice only)"
    found = _published(claim)
    return f"{_signed(found.difference)} ({found.table.source})" if found else "n/a (not published)"


def _sources_note(claims: Sequence[Mapping[str, Any]]) -> str:
    """" Sources: ARCO Table 1: <citation>; ..." for the paper tables the Published Δ column quotes ("" when none)."""
    cited = {found.table.source: found.table.citation for found in map(_published, claims) if found is not None}
    return (" Sources: " + "; ".join(f"{source}: {citation}" for source, citation in cited.items()) + ".") if cited else ""


def on_published_data(settings: Mapping[str, Any], records: Sequence[TrialRecord]) -> tuple[bool, str]:
    """Whether the published differences compare with these trials, and the run in words if not: the ``paper``
    profile on ACDC's published split, i.e. every trial trained on 70 training patients (so "3 patients" is the
    papers' 5%) of a dataset whose classes are ACDC's (RV, Myo, LV; results written before class names were recorded
    do not say) and that was not generated (a phantom of 100 patients has both; results written before the generator
    was recorded do not say). Read from the results (``labelled``, ``class_names``, ``data_generator``), not the data."""
    profile = settings.get("profile")
    if profile != PAPER_PROFILE:
        return False, f"{profile} profile" if profile else "profile unknown (no readable settings.json)"
    generated = sorted({str(r.result["data_generator"]) for r in records if r.result.get("data_generator")})
    if generated:
        return False, f"{PAPER_PROFILE} profile on generated data ({', '.join(generated)})"
    available = sorted({int(r.result["labelled"]["available_patients"]) for r in records
                        if isinstance(r.result.get("labelled"), Mapping) and "available_patients" in r.result["labelled"]})
    names = {tuple(r.result["class_names"]) for r in records if r.result.get("class_names")}  # older results: none
    if available != [PUBLISHED_TRAIN_PATIENTS] or names - {ACDC_CLASS_NAMES}:
        patients = "/".join(map(str, available)) or "an unknown number of"
        classes = "; ".join(", ".join(n) for n in sorted(names))
        return False, f"{PAPER_PROFILE} profile on {patients} training patients" + (f", classes {classes}" if classes else "")
    return True, ""


def claim_results(info: Mapping[str, Any], records: Sequence[TrialRecord]) -> list[tuple[dict, ClaimResult]]:
    """Each claim the study declares (``study.json``) with its result on ``records``."""
    return [(claim, evaluate_claim(claim, records)) for claim in read_claims(info)]


def verdict_counts(results: Sequence[tuple[dict, ClaimResult]]) -> str:
    """The verdicts in one line ("2 supported, 9 inconclusive at this n"); "" without claims."""
    counts = Counter(result.verdict for _, result in results)
    order = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)
    return ", ".join(f"{counts[verdict]} {verdict}" for verdict in order if counts[verdict])


def claims_section(info: Mapping[str, Any], settings: Mapping[str, Any], records: Sequence[TrialRecord],
                   results: Sequence[tuple[dict, ClaimResult]] | None = None) -> list[str]:
    """The report's "Claims" section as Markdown lines; ``results``: those of :func:`claim_results` on the same records,
    when already computed. A study script that declares no claim gets one line saying so (a reader looked for the
    section: the studies walkthrough); a search or a ``medseg train`` folder, none."""
    results = claim_results(info, records) if results is None else results
    if not results:
        left_out = int(info.get("claims_left_out") or 0)
        if left_out:  # the study declares claims, but its --rows kept none of their pairs (the walkthrough)
            return ["## Claims", "", f"None of the study's {left_out} declared claim{'s' if left_out != 1 else ''} is between two "
                    "rows this run kept (--rows); run the study without --rows, or with both rows of a claim, to test "
                    f"{'them' if left_out != 1 else 'it'}.", ""]
        if settings.get("script") and not info.get("search") and not info.get("claims"):
            return ["## Claims", "", "This study declares no claim of the papers to test (a study script declares them: "
                    "docs/studies.md, 'Claims').", ""]
        return []
    paper, run = on_published_data(settings, records)
    header = ["Claim", "The paper says", "Measured \u0394 (points)", "Per seed \u0394", "95% CI", "p", "n (case \u00d7 seed pairs)", "Verdict"]
    header += ["Published \u0394"] if paper else []
    lines = ["## Claims", "", "| " + " | ".join(header) + " |", "| " + " | ".join(["---", "---"] + ["---:"] * 5 + ["---"] * (1 + paper)) + " |"]
    for claim, result in results:
        ci = MISSING if math.isnan(result.ci[0]) else f"[{_bound(result.ci[0])}, {_bound(result.ci[1])}]"
        verdict_text = f"{result.verdict} ({result.reason})" if result.reason else result.verdict
        if result.flagged and not result.reason:
            verdict_text += " \u00a7 (" + "; ".join(result.flagged) + ")"
        p_text = MISSING if result.verdict == NOT_RUN else _p_text(result.p_value)
        per_seed = per_seed_text(result)
        cells = [claim_text(result), claim["paper"], _signed(result.difference), per_seed, ci, p_text, _n_text(result), verdict_text]
        cells += [_published_text(claim)] if paper else []
        lines.append("| " + " | ".join(escape_markdown(c) for c in cells) + " |")
    lines += ["", _caption(paper, run) + (_recipe_note(settings) + _sources_note([c for c, _ in results]) if paper else ""), ""]
    return lines


def _recipe_note(settings: Mapping[str, Any]) -> str:
    """Where a paper-profile run departs from the papers' runs (``--set`` overrides, the corrected protocol), said
    beside the published differences: "" when it does not (or when ``settings.json`` does not say)."""
    changes = []
    if settings.get("overrides"):
        changes.append(set_options_text(settings["overrides"]))
    if settings.get("protocol") not in (None, "released"):
        changes.append(f"--protocol {settings['protocol']} (the papers report the released protocol: docs/evaluation.md)")
    if not changes:
        return ""
    return (f" This run departs from the papers' recipe ({'; '.join(changes)}): its Δ and the published one are not like "
            "for like.")


def _caption(paper: bool, run: str) -> str:
    """The section's caption; ``run``: why the published differences are left out (:func:`on_published_data`)."""
    text = (f"\u0394 = A \u2212 B, the mean over test cases and seeds of the per-case value (Dice: mean over the classes "
            f"defined for both rows), in points; per seed \u0394: that mean for each seed (s1: seed 1); 95% CI: "
            f"Student's t over two variance terms, between seeds (each seed's mean difference) and between test patients "
            f"(a patient's volumes together), paired throughout; p: "
            f"{TEST_NAME} on the per-case values averaged over seeds (the test of table.csv's p_vs_best, which there "
            f"compares each cell with its column's best; n/a with fewer than {MIN_PAIRS} differing cases, "
            f"but 1 where {MIN_PAIRS} or more were compared and none differs), which treats "
            f"the trained models as fixed and can be small while the CI, which also counts the seeds' variation, crosses "
            f"the bound; two-sided, so a small p beside a \u0394 against the claim says the rows differ the other way. "
            f"Verdict from the CI: supported when it lies "
            f"entirely above 0 (for \u2265: above \u2212{MARGIN:g} point, the margin), contradicted when it lies entirely "
            f"below that bound, otherwise inconclusive at this n (also with fewer than {MIN_PAIRS} paired test cases or "
            f"fewer than {MIN_SEEDS} seeds: one seed cannot measure the seeds' variation, two measure it poorly). Seeds "
            f"only one row has are left out (the n column names them). \u00a7: the compared trials include one that Trial "
            f"health flags, named beside the verdict (a seed that did not learn can decide \u0394 and p alone). No "
            f"correction for testing several claims.")
    if paper:
        return text + (" Published \u0394: the same two rows in the named paper table (other training runs: compare "
                       "sign and size, not digits).")
    return text + (f" Published differences are shown for the {PAPER_PROFILE} profile on ACDC's {PUBLISHED_TRAIN_PATIENTS} "
                   f"training patients only (this run: {run}).")
