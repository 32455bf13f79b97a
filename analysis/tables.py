"""Paper-style result tables built from the per-trial result files of a study.

The only input is what :func:`medseg_platform.results.scan_study` reads back (``result.json`` and
``per_case.csv`` of each finished trial); Ray's experiment state is never read and neither Ray nor torch
is imported.

Numbers, from the bottom up:

* **per seed** (one trial): for each class, the NaN-aware mean of the trial's per-case values, recomputed
  from ``per_case.csv`` (the means stored in ``result.json`` are not used); "Avg" is the NaN-aware mean
  of the trial's per-class means. Undefined per-case values (NaN, e.g. HD95 of an empty prediction) are
  excluded and counted.
* **per cell** (method x label fraction x class): mean over seeds and the *sample* standard deviation
  (``ddof=1``, as papers report); a cell with a single seed has std NaN (no spread is measured) and is shown as its mean alone; a
  cell with no finite seed value has mean and std NaN. ``n_seeds`` counts the seeds with a finite value and
  ``n_undefined`` sums the undefined per-case values over all of the cell's seeds (for "Avg": over classes).
* **trial health**: ``n_flagged`` counts the cell's trials whose validation curve was still rising or
  collapsed at the end, or never learned (:mod:`analysis.health`); such cells are marked with :data:`FLAGGED_MARK`.
* **settings** per cell, for the caption: fine-tuning steps (``steps``), labelled patients
  (``patients``), the tested weights (``selection``, ``eval.selection``: "best_val" or "final") and the empty-mask
  policy (``empty_policy``, ``eval.empty_policy`` of the configs),
  each the distinct values of the cell's trials, comma-separated ("unknown" when a config lacks it; a config without
  ``eval.selection`` counts as "best_val", the default it was trained with).
* **significance**: each cell is compared with the best cell (best mean) of its label fraction and
  class (:mod:`analysis.significance`): ``ci_low``/``ci_high``, the 95% seeds-and-patients interval of its mean
  difference to the best (:func:`compare_to_best`, the claims' interval), decide the marker
  :data:`~analysis.significance.NOT_SIGNIFICANT_MARK` (the cell is not shown to be worse: the interval reaches 0 or
  the better side, or cannot be formed); ``p_vs_best`` and ``n_pairs``, the claims' Wilcoxon test over test cases on
  the values averaged over the shared seeds, are kept beside them.

Dice and Jaccard are reported in percent (x100, one decimal); HD95 and ASD keep the unit they were
evaluated in (mm when the voxel spacing was known, voxels otherwise; two decimals), which each cell's ``unit``
and the caption name (:func:`distance_unit`; "voxels or mm as evaluated" where it cannot be told).

Class names come from the data: each trial's ``result.json`` records its dataset's ``class_names``
(:func:`trial_class_names`; a result without them gets the defaults of its ``data.num_classes``: RV/Myo/LV
for 4 classes, ``class 1``, ... otherwise). All trials of one table must agree (:func:`study_class_names`).

The long form (:func:`build_table`, ``table.csv``) has one row per (row, column, class, metric). Two modules
build on it: :mod:`analysis.table_render` lays one metric out wide for a reader (methods down, label fractions
across, each split into the classes and "Avg"; Markdown, LaTeX and the terminal), and :mod:`analysis.table_files`
writes and reads the table files, with a block per external test set (a study's ``--test-root``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.health import FLAGGED, record_health
from analysis.significance import PairedTest, SeedValues, case_test, confidence_interval, pair_seed_values, seed_values
from medseg_platform.config import differing_fields
from medseg_platform.data.layout import ACDC_CLASS_NAMES
from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.results import QUALITATIVE_FILE, TrialRecord, recorded_class_names
from medseg_platform.stats import defined, nan_mean

DEFAULT_METRICS = ("dice", "jaccard", "hd95", "asd")
DEFAULT_CLASS_NAMES = {label: name for label, name in enumerate(ACDC_CLASS_NAMES, 1)}  # results of 4-class data without names
AVG = "Avg"
UNDEFINED_MARK = "\u2020"  # dagger
FLAGGED_MARK = "\u00a7"  # section sign: the cell includes a flagged trial (analysis.health)
UNKNOWN = "unknown"
MISSING = "\u2013"  # en dash: no trial for this method and label fraction
LONG_COLUMNS = ("row", "column", "class", "metric", "unit", "mean", "std", "n_seeds", "n_undefined", "seeds",
                "p_vs_best", "n_pairs", "ci_low", "ci_high", "row_rank", "column_rank", "n_flagged", "steps", "patients", "empty_policy", "search",
                "selection", "avg_classes", "flags")


@dataclass(frozen=True)
class MetricStyle:
    """How a metric is shown: its name in tables, the factor applied to raw values, decimals, direction."""

    label: str
    scale: float
    decimals: int
    higher_is_better: bool
    unit: str
    #: whether an undefined value can stand for a missed structure: the distances, undefined under the "nan" policy
    #: where the prediction is empty and the ground truth is not (Dice and Jaccard score that 0 and are undefined only
    #: where both masks are empty, docs/evaluation.md, 'Empty masks')
    undefined_hides_misses: bool = False


METRIC_STYLES = {
    "dice": MetricStyle("Dice (%)", 100.0, 1, True, "%"),
    "jaccard": MetricStyle("Jaccard (%)", 100.0, 1, True, "%"),
    "hd95": MetricStyle("HD95", 1.0, 2, False, "voxels or mm as evaluated", undefined_hides_misses=True),
    "asd": MetricStyle("ASD", 1.0, 2, False, "voxels or mm as evaluated", undefined_hides_misses=True),
}


def metric_style(metric: str) -> MetricStyle:
    """The display style of ``metric``; a ConfigError (a ValueError) for a metric the tables do not know."""
    try:
        return METRIC_STYLES[metric]
    except KeyError:
        raise ConfigError(f"unknown metric {metric!r}: expected one of {', '.join(METRIC_STYLES)}") from None


# --------------------------------------------------------------------------------------------- labels


def row_label(record: TrialRecord) -> str:
    """The table row of a trial: the study's ``tags["row"]``, else the objective's name."""
    tags = record.result.get("tags") or {}
    if tags.get("row"):
        return str(tags["row"])
    return str((record.result.get("config") or {}).get("objective", "?"))


def fraction_label(labelled: Mapping[str, Any]) -> str:
    """A label fraction as patients and percent of the training patients, e.g. ``"1 patient (1.4%)"``."""
    patients = int(labelled["num_patients"])
    return f"{patients} patient{'' if patients == 1 else 's'} ({float(labelled['percent_patients']):.1f}%)"


def column_label(record: TrialRecord) -> str:
    """The table column (group) of a trial: ``tags["column"]``, else its label fraction.

    Falls back to the requested fraction of the config (``data.labelled``) when ``labelled.json``'s
    counts are missing.
    """
    tags = record.result.get("tags") or {}
    if tags.get("column"):
        return str(tags["column"])
    labelled = record.result.get("labelled") or {}
    if "num_patients" in labelled and "percent_patients" in labelled:
        return fraction_label(labelled)
    return str(((record.result.get("config") or {}).get("data") or {}).get("labelled", "?"))


def trial_seed(record: TrialRecord) -> Any:
    """The seed of a trial (``result["seed"]``, else ``config["seed"]``)."""
    seed = record.result.get("seed")
    return seed if seed is not None else (record.result.get("config") or {}).get("seed")


def as_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _row_key(record: TrialRecord) -> float:
    """The row sort position a trial asks for (``tags["order"]``), +inf when it gives none."""
    order = as_number((record.result.get("tags") or {}).get("order"))
    return math.inf if order is None else order


def _column_key(record: TrialRecord) -> float:
    """The column sort position of a trial: its number of labelled patients (+inf when unknown)."""
    patients = as_number((record.result.get("labelled") or {}).get("num_patients"))
    return math.inf if patients is None else patients


def _ordered(labels_and_keys: Iterable[tuple[str, float]], by_label_when_tied: bool) -> list[str]:
    """Distinct labels sorted by their smallest key; ties by label or by first appearance."""
    best: dict[str, float] = {}
    for label, key in labels_and_keys:
        best[label] = min(key, best.get(label, math.inf))
    first = {label: i for i, label in enumerate(best)}
    return sorted(best, key=lambda lab: (best[lab], lab if by_label_when_tied else "", first[lab]))


def row_order(records: Sequence[TrialRecord]) -> list[str]:
    """Methods in table order: by ``tags["order"]`` where given (first appearance breaks ties), rows
    without an order after them, alphabetically."""
    keyed = [(row_label(r), _row_key(r)) for r in records]
    with_order = _ordered([(lab, k) for lab, k in keyed if k != math.inf], by_label_when_tied=False)
    without = sorted({lab for lab, _ in keyed} - set(with_order))
    return with_order + without


def column_order(records: Sequence[TrialRecord]) -> list[str]:
    """Column groups in table order: fewest labelled patients first, then by label."""
    return _ordered(((column_label(r), _column_key(r)) for r in records), by_label_when_tied=True)


# --------------------------------------------------------------------------------------------- numbers


def unique_records(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """``records`` without repeats of the same trial folder (first kept)."""
    seen, unique = set(), []
    for record in records:
        key = Path(record.path).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def _per_case_value(row: Mapping[str, Any], metric: str) -> float:
    """One per-case value as float; NaN when missing or not a number."""
    number = as_number(row.get(metric))
    return math.nan if number is None else number


def trial_class_values(per_case: Sequence[Mapping[str, Any]], metric: str) -> dict[int | str, tuple[float, int]]:
    """Per class (int) and ``AVG``: (NaN-aware mean over cases, number of undefined case values).

    "Avg" is the NaN-aware mean of the per-class means and the sum of their undefined counts.
    """
    by_class: dict[int, list[float]] = {}
    for row in per_case:
        by_class.setdefault(int(float(row["class"])), []).append(_per_case_value(row, metric))
    out: dict[int | str, tuple[float, int]] = {}
    for cls in sorted(by_class):
        values = by_class[cls]
        out[cls] = (nan_mean(values), len(values) - defined(values).size)
    out[AVG] = (nan_mean(mean for mean, _ in out.values()), sum(n for _, n in out.values()))
    return out


def seed_statistics(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) over the defined (not NaN) ``values``; std NaN for n=1 (a sample std needs two
    values: ``table.csv`` read 0.0 there, no spread, the report review), NaNs for n=0."""
    kept = defined(values)
    if kept.size == 0:
        return math.nan, math.nan, 0
    std = float(kept.std(ddof=1)) if kept.size > 1 else math.nan
    return nan_mean(kept), std, int(kept.size)


def trial_class_names(record: TrialRecord) -> tuple[str, ...]:
    """Names of labels 1..N-1 of a trial: ``result.json``'s ``class_names``, else the defaults of ``data.num_classes``
    (:func:`medseg_platform.results.recorded_class_names`)."""
    return recorded_class_names(record.result)


def study_class_names(records: Iterable[TrialRecord]) -> dict[int, str]:
    """``{label: name}`` shared by all ``records`` (the defaults when there are none).

    One-line :class:`MedsegError` when two trials name their classes differently (trials on two datasets
    with other classes cannot share one table).
    """
    first: tuple[TrialRecord, tuple[str, ...]] | None = None
    for record in records:
        names = trial_class_names(record)
        if first is None:
            first = (record, names)
        elif names != first[1]:
            raise MedsegError(f"{record.path}: class names {', '.join(names)} differ from {', '.join(first[1])} of trial "
                              f"{first[0].path.name} (one study's trials must share one dataset's classes; report them as separate studies)")
    if first is None:
        return dict(DEFAULT_CLASS_NAMES)
    return {label: name for label, name in enumerate(first[1], 1)}


def _class_label(cls: int | str, class_names: Mapping[int, str]) -> str:
    """The name of a class column (``AVG`` stays as it is)."""
    return cls if isinstance(cls, str) else class_names.get(cls, str(cls))


def build_table(records: Iterable[TrialRecord], metrics: Sequence[str] = DEFAULT_METRICS,
                class_names: Mapping[int, str] | None = None,
                distances: Callable[[Sequence[TrialRecord]], str | None] | None = None) -> pd.DataFrame:
    """The long-form table: one row per (row label, column label, class or "Avg", metric).

    Columns: ``row``, ``column``, ``class``, ``metric``, ``unit``, ``mean``, ``std`` (sample, ddof=1; NaN
    for one seed), ``n_seeds``, ``n_undefined`` (undefined per-case values over all seeds), ``seeds``
    (comma-separated), ``p_vs_best`` (p-value of the paired test against the best cell of the same
    column, class and metric; NaN for that best cell and for cells with too few pairs), ``n_pairs``
    (the pairs it used), ``ci_low`` and ``ci_high`` (the 95% interval of the mean difference to that best cell, in
    display units, :func:`compare_to_best`; NaN for the best cell and where none can be formed), ``row_rank`` and ``column_rank`` (0-based table positions of the method and the
    label fraction, so the layout survives a CSV round trip), ``n_flagged`` (the cell's trials whose
    validation curve was flagged, :mod:`analysis.health`), ``steps``, ``patients`` and
    ``empty_policy`` (distinct fine-tuning steps, labelled patients and empty-mask policies of the cell's
    trials, comma-separated; :func:`read_table_csv` keeps the policy "nan" as text),
    ``search`` ("yes" when the cell's trials are an Optuna search's samples), ``selection`` (the tested weights),
    ``avg_classes`` (Avg rows: the fewest classes any seed's average covers, :func:`partial_averages`; empty on
    class rows), ``flags`` (the flagged trials per verdict, "still rising: 1; did not learn: 2", :mod:`analysis.health`).
    ``seeds`` lists the cell's trials, ``n_seeds`` those with a value. ``unit`` of HD95/ASD: ``distances(trials)`` of
    the cell (default :func:`distance_unit`), else the generic words. Dice and Jaccard are in percent. Rows come
    in table order (methods, then label fractions, then ``metrics``, then classes); only (method, fraction)
    pairs with trials appear. A trial folder passed twice counts once. ``class_names`` (label -> name):
    default :func:`study_class_names` of the records.
    """
    records = unique_records(records)
    if class_names is None:
        class_names = study_class_names(records)
    for metric in metrics:
        metric_style(metric)
    classes = sorted({int(float(row["class"])) for r in records for row in r.per_case})
    groups: dict[tuple[str, str], list[TrialRecord]] = {}
    for record in records:
        groups.setdefault((row_label(record), column_label(record)), []).append(record)
    rows = []
    for row_rank, row in enumerate(row_order(records)):
        for column_rank, column in enumerate(column_order(records)):
            trials = groups.get((row, column))
            if trials:
                cell_rows = _cell_rows(row, column, trials, metrics, classes, class_names, distances or distance_unit)
                rows += [{**r, "row_rank": row_rank, "column_rank": column_rank} for r in cell_rows]
    _add_significance(rows, groups, {_class_label(c, class_names): c for c in classes})
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def partial_averages(rows: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """``(row, column, metric)`` of the cells with a defined "Avg" that leaves out, in some seed, a class that the cell's
    other seeds or another row of the same column and metric define (long-form rows: ``row``, ``column``, ``class``, ``metric``, ``mean``,
    and ``avg_classes`` of the Avg rows where present), for the metrics whose undefined values can hide a miss
    (:attr:`MetricStyle.undefined_hides_misses`: HD95 and ASD).

    A method that misses a structure in every test case has no HD95 or ASD for it, and its average over the remaining
    classes is an easier number than the other rows' (a probe's method that never predicted the LV got the lowest Avg
    HD95, bold). The same holds for one seed of a cell: a seed that missed the RV averages Myo and LV only, so the
    cell's Avg mixes seeds over different classes even where every class has a value from some seed. Such a cell is
    shown with its † but is never the best of its column (:func:`_best_means`, :func:`_add_significance`).
    A Dice or Jaccard is undefined only where the structure is absent from the ground truth and the prediction is
    empty too: leaving it out of the Avg is no easier number, while a row that predicted the absent structure scores
    0 there. Counting such classes made every row that predicted nothing partial and a row of false positives the
    only one eligible, hence bold (the statistics review)."""
    rows = [rec for rec in rows if metric_style(rec["metric"]).undefined_hides_misses]
    covered: dict[tuple[str, str, str], set[str]] = {}
    for rec in rows:
        if rec["class"] != AVG:
            classes = covered.setdefault((rec["row"], rec["column"], rec["metric"]), set())
            if not math.isnan(rec["mean"]):
                classes.add(rec["class"])
    union: dict[tuple[str, str], set[str]] = {}
    for (_, column, metric), classes in covered.items():
        union.setdefault((column, metric), set()).update(classes)
    partial = set()
    for rec in rows:
        key = (rec["row"], rec["column"], rec["metric"])
        if rec["class"] != AVG or math.isnan(rec["mean"]):
            continue  # an Avg without a value is shown as such, not as a partial one
        # the fewer of the classes the cell's rows define and those its least-covered seed averages (avg_classes;
        # absent from an older table.csv)
        fewest = len(covered.get(key, ()))
        per_seed = rec.get("avg_classes")
        if per_seed is not None and not math.isnan(per_seed):
            fewest = min(fewest, per_seed)
        if fewest < len(union.get(key[1:], ())):
            partial.add(key)
    return partial


def partial_cells(rows: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str, str]]:
    """``(row, column, class, metric)`` of the cells that are never the best of their column: the Avg cells of
    :func:`partial_averages`, and the class cells of HD95 and ASD (:attr:`MetricStyle.undefined_hides_misses`) with a
    value from fewer seeds than the cell lists (``n_seeds`` below the count of ``seeds``): a seed that missed the
    structure in every test case has no distance for it, and the mean of the other seeds is an easier number (a mean
    teacher LV HD95 from 2 of 3 seeds, one of which had LV Dice 0, was bold over rows that found the LV in every seed:
    the report review)."""
    rows = list(rows)
    out = {(row, column, AVG, metric) for row, column, metric in partial_averages(rows)}
    for rec in rows:
        if rec["class"] == AVG or math.isnan(rec["mean"]) or not metric_style(rec["metric"]).undefined_hides_misses:
            continue
        listed = len([s for s in str(rec.get("seeds", "")).split(",") if s])
        if int(rec["n_seeds"]) < listed:
            out.add((rec["row"], rec["column"], rec["class"], rec["metric"]))
    return out


def _add_significance(rows: list[dict[str, Any]], groups: Mapping[tuple[str, str], Sequence[TrialRecord]],
                      class_ids: Mapping[str, int]) -> None:
    """Set ``p_vs_best`` and ``n_pairs`` of every long-form row (in place); see :mod:`analysis.significance`.

    The best cell of a (column, class, metric) is the one with the best (unrounded) mean, needing at least
    two cells with a mean (a cell of :func:`partial_cells`, such as an "Avg" over fewer classes than its column's, is
    never the best); it is shown bold unless every cell of the column shows the same mean (:func:`_best_means`).
    """
    partial = partial_cells(rows)

    @functools.lru_cache(maxsize=None)  # a cell's values, read once for every class it is compared in
    def per_seed(row: str, column: str, metric: str) -> SeedValues:
        return seed_values(_by_seed(groups[(row, column)]), metric, as_number)

    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in rows:
        rec["p_vs_best"], rec["n_pairs"], rec["ci_low"], rec["ci_high"] = math.nan, 0, math.nan, math.nan
        by_key.setdefault((rec["column"], rec["class"], rec["metric"]), []).append(rec)
    for (column, cls, metric), cells in by_key.items():
        finite = [c for c in cells if not math.isnan(c["mean"])]
        candidates = [c for c in finite if (c["row"], column, cls, metric) not in partial]
        if len(finite) < 2 or not candidates:
            continue
        sign = 1.0 if metric_style(metric).higher_is_better else -1.0
        best = max(candidates, key=lambda c: sign * c["mean"])
        class_key = class_ids.get(cls, cls)
        for cell in finite:
            if cell is not best:
                (cell["ci_low"], cell["ci_high"]), test = compare_to_best(per_seed(cell["row"], column, metric),
                                                                          per_seed(best["row"], column, metric), metric, class_key)
                cell["p_vs_best"], cell["n_pairs"] = test.p_value, test.n_pairs


def _by_seed(trials: Sequence[TrialRecord]) -> dict[Any, list[Sequence[Mapping[str, Any]]]]:
    out: dict[Any, list[Sequence[Mapping[str, Any]]]] = {}
    for trial in trials:
        out.setdefault(str(trial_seed(trial)), []).append(trial.per_case)
    return out


def compare_to_best(ours: SeedValues, theirs: SeedValues, metric: str, class_key: int | str
                    ) -> tuple[tuple[float, float], PairedTest]:
    """A cell against the best cell of its column, as a claim compares two rows, over the seeds both cells have (each
    side's :func:`analysis.significance.seed_values`); class ``class_key`` or, for a str ("Avg"), per case and seed the
    classes both define: the 95% seeds-and-patients interval of the mean difference
    (:func:`analysis.significance.confidence_interval`) in display units (x100 for Dice), (NaN, NaN) when they share no
    seed or fewer than 2 test patients have a pair, and the Wilcoxon test over test cases of the claims' p
    (:func:`analysis.significance.case_test`). Until the statistics review the test averaged every seed of each cell,
    shared or not, so a row missing a seed got another p than its claim on the same pair."""
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return (math.nan, math.nan), PairedTest(math.nan, 0)
    cases, a, b, _, _ = pair_seed_values(ours, theirs, seeds, class_key)
    return confidence_interval((a - b) * metric_style(metric).scale, cases), case_test(a, b)


def _cell_rows(row: str, column: str, trials: Sequence[TrialRecord], metrics: Sequence[str], classes: Sequence[int],
               class_names: Mapping[int, str], distances: Callable[[Sequence[TrialRecord]], str | None]) -> list[dict[str, Any]]:
    """The long-form rows of one (method, label fraction) pair: every class and "Avg" for every metric."""
    seeds = ",".join(str(trial_seed(t)) for t in trials)
    verdicts = [record_health(t).verdict for t in trials]
    settings = {"n_flagged": sum(v in FLAGGED for v in verdicts), **trial_settings(trials),
                "flags": "; ".join(f"{verdict}: {verdicts.count(verdict)}" for verdict in FLAGGED if verdict in verdicts)}
    out = []
    distances_in = (distances(trials) or metric_style("hd95").unit  # the unit HD95/ASD were evaluated in
                    if any(metric_style(m).scale == 1.0 for m in metrics) else None)
    for metric in metrics:
        style = metric_style(metric)
        per_trial = [trial_class_values(t.per_case, metric) for t in trials]
        for cls in [*classes, AVG]:
            values = [v.get(cls, (math.nan, 0)) for v in per_trial]
            mean, std, n = seed_statistics([value * style.scale for value, _ in values])
            out.append({"row": row, "column": column, "class": _class_label(cls, class_names), "metric": metric,
                        "unit": style.unit if style.scale != 1.0 else distances_in, "mean": mean, "std": std, "n_seeds": n,
                        "n_undefined": int(sum(undefined for _, undefined in values)), "seeds": seeds, **settings,
                        "avg_classes": _fewest_averaged(per_trial, classes) if cls == AVG else math.nan})
    return out


def _fewest_averaged(per_trial: Sequence[Mapping[int | str, tuple[float, int]]], classes: Sequence[int]) -> float:
    """The fewest classes that any seed's "Avg" averages (classes with a defined mean in that seed), over the seeds
    whose Avg is defined; NaN when none is. Each seed's Avg is the mean of its own defined classes, so a cell's Avg
    can mix seeds that miss different classes (:func:`partial_averages`)."""
    counts = [sum(not math.isnan(values.get(c, (math.nan, 0))[0]) for c in classes)
              for values in per_trial if not math.isnan(values[AVG][0])]
    return float(min(counts)) if counts else math.nan


def _distinct_text(values: Iterable[Any]) -> str:
    """The distinct values as text, comma-separated, in first-seen order; ``UNKNOWN`` stands for None."""
    return ",".join(dict.fromkeys(UNKNOWN if v is None else str(v) for v in values))


def distance_unit(records: Sequence) -> str | None:
    """The unit of the trials' HD95/ASD: "voxels" when every trial's config sets ``eval.distance_units`` to
    "voxel" (docs/evaluation.md, 'Units'), None when only some do (mixed units); otherwise "mm" when the test
    volumes carried a voxel spacing (from ``qualitative.npz``), "voxels" when they did not, None when unknown."""
    voxel = _set_to_voxels(records)
    if any(voxel):
        return "voxels" if all(voxel) else None
    for record in records:
        path = Path(record.path) / QUALITATIVE_FILE
        if path.is_file():
            try:
                with np.load(path) as data:
                    spacing = np.asarray(data["spacing"], dtype=float)
            except (OSError, KeyError, ValueError):
                continue
            if spacing.size:
                return "mm" if np.isfinite(spacing).all() else "voxels"
    return None


def configured_distance_unit(records: Sequence) -> str | None:
    """"voxels" when every trial's config sets ``eval.distance_units`` to "voxel", else None (unknown): the unit of
    an external test set's HD95/ASD, whose volumes' spacing the trials' ``qualitative.npz`` (own test set) does not show."""
    voxel = _set_to_voxels(records)
    return "voxels" if voxel and all(voxel) else None


def _set_to_voxels(records: Sequence) -> list[bool]:
    """Per trial: does its config set ``eval.distance_units`` to "voxel"?"""
    return [((record.result.get("config") or {}).get("eval") or {}).get("distance_units") == "voxel" for record in records]


def trial_settings(trials: Sequence[TrialRecord]) -> dict[str, str]:
    """``steps``, ``patients`` and ``empty_policy`` of a cell's trials, read from their result records, and ``search``:
    "yes" when they are samples of an Optuna search (``tags["search"]``), whose hyper-parameters differ."""
    configs = [t.result.get("config") or {} for t in trials]
    return {"steps": _distinct_text((c.get("optim") or {}).get("max_steps") for c in configs),
            "patients": _distinct_text((t.result.get("labelled") or {}).get("num_patients") for t in trials),
            "empty_policy": _distinct_text((c.get("eval") or {}).get("empty_policy") for c in configs),
            "search": "yes" if any((t.result.get("tags") or {}).get("search") for t in trials) else "no",
            "selection": _distinct_text((c.get("eval") or {}).get("selection", "best_val") for c in configs)}


def identical_rows(records: Iterable[TrialRecord]) -> list[str]:
    """One line per group of rows of one label fraction whose trials gave the same per-case test results, value for
    value, for each of the same seeds (at least one), and segmented something in at least one seed (two models that
    predict nothing agree without training alike).

    Two configurations that train the same numbers mean that what differs between them did not reach training at
    this length: a term whose weight multiplies a value that stays zero (L_unsup before the teacher passes its
    confidence threshold), a parameter the objective ignores, a sampler that falls back to another one on small
    pools. The table would compare a row with itself; the line says so (a probe's smoke sweep of a loss weight
    printed three equal rows and a claim of +0.0)."""
    records = unique_records(records)
    position = {row: i for i, row in enumerate(row_order(records))}  # rows named in the table's order
    results: dict[tuple[str, str], dict[str, str]] = {}
    # cells with a trial that segmented something (a Dice above 0): in a cell whose every seed predicts nothing, models
    # agree without training alike; one seed's empty prediction does not hide that the others trained the same
    segmented = set()
    for r in records:
        cell = (column_label(r), row_label(r))
        results.setdefault(cell, {})[str(trial_seed(r))] = json.dumps(r.per_case, sort_keys=True, default=str)
        if any(_per_case_value(row, "dice") > 0 for row in r.per_case):
            segmented.add(cell)
    groups: dict[tuple[str, str], list[str]] = {}
    for (column, row), by_seed in results.items():
        if (column, row) in segmented:
            groups.setdefault((column, json.dumps(by_seed, sort_keys=True)), []).append(row)
    lines = []
    for (column, fingerprint), rows in groups.items():
        if len(rows) > 1:
            seeds = ", ".join(sorted(json.loads(fingerprint), key=natural_sort_key))
            rows = sorted(rows, key=lambda row: position.get(row, len(position)))
            lines.append(f"identical results: rows {', '.join(map(repr, rows))} at {column} gave the same per-case test "
                         f"results for every seed ({seeds}): what differs between them did not change training at this "
                         "length (e.g. a loss term that stays zero, a parameter the objective ignores)")
    return lines


def duplicate_seeds(records: Iterable[TrialRecord]) -> list[str]:
    """One line per (method, label fraction, seed) that more than one distinct trial reports.

    Such trials (e.g. a study re-run with a changed config into the same folder) would all be averaged
    into one cell; the line says so, and names the config fields in which they differ, so the user can clean the
    study folder.
    """
    groups: dict[tuple[str, str, str], list[TrialRecord]] = {}
    for r in unique_records(records):
        groups.setdefault((row_label(r), column_label(r), str(trial_seed(r))), []).append(r)
    lines = []
    for (row, column, seed), group in groups.items():
        if len(group) < 2:
            continue
        differ = differing_fields([r.result.get("config") or {} for r in group])
        lines.append(f"duplicate trials: {row} / {column} / seed {seed} is reported by {len(group)} trials (all averaged)"
                     + (f"; their configs differ in {', '.join(differ[:4])}{' and more' if len(differ) > 4 else ''}" if differ else ""))
    return lines

def natural_sort_key(text: str) -> tuple:
    """Sort key of a settings value: numbers by value before other text."""
    number = as_number(text)
    return (0, number, "") if number is not None else (1, 0.0, text)
