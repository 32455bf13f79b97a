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
  (``ddof=1``, as papers report); a cell with a single seed has std 0.0 and is shown as its mean alone; a
  cell with no finite seed value has mean and std NaN. ``n_seeds`` counts the seeds with a finite value and
  ``n_undefined`` sums the undefined per-case values over all of the cell's seeds (for "Avg": over classes).
* **trial health**: ``n_flagged`` counts the cell's trials whose validation curve was still rising or
  collapsed at the end, or never learned (:mod:`analysis.health`); such cells are marked with :data:`FLAGGED_MARK`.
* **settings** per cell, for the caption: fine-tuning steps (``steps``), labelled patients
  (``patients``), the tested weights (``selection``, ``eval.selection``: "best_val" or "final") and the empty-mask
  policy (``empty_policy``, ``eval.empty_policy`` of the configs),
  each the distinct values of the cell's trials, comma-separated ("unknown" when a config lacks it).
* **significance**: each cell is compared with the best cell (best mean) of its label fraction and
  class (:mod:`analysis.significance`): ``ci_low``/``ci_high``, the 95% seeds-and-patients interval of its mean
  difference to the best (:func:`difference_interval`, the claims' interval), decide the marker
  :data:`~analysis.significance.NOT_SIGNIFICANT_MARK` (interval contains 0, or cannot be formed); ``p_vs_best`` and
  ``n_pairs``, a Wilcoxon test over test cases on the seed-averaged values, are kept beside them.

Dice and Jaccard are reported in percent (x100, one decimal); HD95 and ASD keep the unit they were
evaluated in (mm when the voxel spacing was known, voxels otherwise; two decimals), which each cell's ``unit``
and the caption name (:func:`distance_unit`; "voxels or mm as evaluated" where it cannot be told).

Class names come from the data: each trial's ``result.json`` records its dataset's ``class_names``
(:func:`trial_class_names`; a result without them gets the defaults of its ``data.num_classes``: RV/Myo/LV
for 4 classes, ``class 1``, ... otherwise). All trials of one table must agree (:func:`study_class_names`).

The long form (:func:`build_table`, ``table.csv``) has one row per (row, column, class, metric); the
renderers (:func:`to_markdown`, :func:`to_latex`) lay one metric out wide: methods down, label fractions
across, each split into the classes and "Avg".

External test sets (a study's ``--test-root``): trials scored on another dataset's test split keep those rows in
``per_case_test_root.csv`` (:func:`medseg_platform.results.read_test_root`). Each such dataset gets its own block
after the main table in ``table_<metric>.md`` / ``.tex``, built by the same code from those rows
(:func:`external_test_sets`, :func:`external_blocks`); trials of the study without that evaluation are counted
there as missing. ``table.csv`` holds the study's own test set only.
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.health import COLLAPSE_DROP, COLLAPSED, FLAGGED, LEARNED_FLOOR, NOT_LEARNED, RISING_MARGIN, STILL_RISING, record_health
from analysis.markdown import escape_markdown
from analysis.significance import (ALPHA, NOT_SIGNIFICANT_MARK, SeedValues, caption_note, confidence_interval, pair_seed_values,
                                   paired_case_values, seed_averaged, seed_values, wilcoxon_test)
from medseg_platform.config import differing_fields
from medseg_platform.data.layout import ACDC_CLASS_NAMES
from medseg_platform.errors import MedsegError
from medseg_platform.io import write_text_atomic
from medseg_platform.results import QUALITATIVE_FILE, TrialRecord, read_test_root, recorded_class_names
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


METRIC_STYLES = {
    "dice": MetricStyle("Dice (%)", 100.0, 1, True, "%"),
    "jaccard": MetricStyle("Jaccard (%)", 100.0, 1, True, "%"),
    "hd95": MetricStyle("HD95", 1.0, 2, False, "voxels or mm as evaluated"),
    "asd": MetricStyle("ASD", 1.0, 2, False, "voxels or mm as evaluated"),
}


def metric_style(metric: str) -> MetricStyle:
    """The display style of ``metric``; ValueError for a metric the tables do not know."""
    try:
        return METRIC_STYLES[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRIC_STYLES)}") from None


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


def _unique_records(records: Iterable[TrialRecord]) -> list[TrialRecord]:
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
    """(mean, sample std with ddof=1, n) over the defined (not NaN) ``values``; std 0.0 for n=1, NaNs for n=0."""
    kept = defined(values)
    if kept.size == 0:
        return math.nan, math.nan, 0
    std = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
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

    Columns: ``row``, ``column``, ``class``, ``metric``, ``unit``, ``mean``, ``std`` (sample, ddof=1; 0.0
    for one seed), ``n_seeds``, ``n_undefined`` (undefined per-case values over all seeds), ``seeds``
    (comma-separated), ``p_vs_best`` (p-value of the paired test against the best cell of the same
    column, class and metric; NaN for that best cell and for cells with too few pairs), ``n_pairs``
    (the pairs it used), ``ci_low`` and ``ci_high`` (the 95% interval of the mean difference to that best cell, in
    display units, :func:`difference_interval`; NaN for the best cell and where none can be formed), ``row_rank`` and ``column_rank`` (0-based table positions of the method and the
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
    records = _unique_records(records)
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
    and ``avg_classes`` of the Avg rows where present).

    A method that misses a structure in every test case has no HD95 or ASD for it, and its average over the remaining
    classes is an easier number than the other rows' (a probe's method that never predicted the LV got the lowest Avg
    HD95, bold). The same holds for one seed of a cell: a seed that missed the RV averages Myo and LV only, so the
    cell's Avg mixes seeds over different classes even where every class has a value from some seed. Such a cell is
    shown with its † but is never the best of its column (:func:`_best_means`, :func:`_add_significance`)."""
    rows = list(rows)
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


def _add_significance(rows: list[dict[str, Any]], groups: Mapping[tuple[str, str], Sequence[TrialRecord]],
                      class_ids: Mapping[str, int]) -> None:
    """Set ``p_vs_best`` and ``n_pairs`` of every long-form row (in place); see :mod:`analysis.significance`.

    The best cell of a (column, class, metric) is the one with the best (unrounded) mean, needing at least
    two cells with a mean (an "Avg" over fewer classes than its column's, :func:`partial_averages`, is never the best);
    it is shown bold unless every cell of the column shows the same mean (:func:`_best_means`).
    """
    partial = partial_averages(rows)

    @functools.lru_cache(maxsize=None)  # a cell's values, read once for every class it is compared in
    def averaged(row: str, column: str, metric: str) -> dict[str, dict[int, float]]:
        return seed_averaged([t.per_case for t in groups[(row, column)]], metric, as_number)

    @functools.lru_cache(maxsize=None)
    def per_seed(row: str, column: str, metric: str) -> SeedValues:
        return seed_values(_by_seed(groups[(row, column)]), metric, as_number)

    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in rows:
        rec["p_vs_best"], rec["n_pairs"], rec["ci_low"], rec["ci_high"] = math.nan, 0, math.nan, math.nan
        by_key.setdefault((rec["column"], rec["class"], rec["metric"]), []).append(rec)
    for (column, cls, metric), cells in by_key.items():
        finite = [c for c in cells if not math.isnan(c["mean"])]
        candidates = [c for c in finite if cls != AVG or (c["row"], column, metric) not in partial]
        if len(finite) < 2 or not candidates:
            continue
        sign = 1.0 if metric_style(metric).higher_is_better else -1.0
        best = max(candidates, key=lambda c: sign * c["mean"])
        class_key = class_ids.get(cls, cls)
        reference = averaged(best["row"], column, metric)
        for cell in finite:
            if cell is not best:
                values = averaged(cell["row"], column, metric)
                test = wilcoxon_test(*paired_case_values(values, reference, class_key))
                cell["p_vs_best"], cell["n_pairs"] = test.p_value, test.n_pairs
                cell["ci_low"], cell["ci_high"] = difference_interval(per_seed(cell["row"], column, metric),
                                                                      per_seed(best["row"], column, metric), metric, class_key)


def _by_seed(trials: Sequence[TrialRecord]) -> dict[Any, list[Sequence[Mapping[str, Any]]]]:
    out: dict[Any, list[Sequence[Mapping[str, Any]]]] = {}
    for trial in trials:
        out.setdefault(str(trial_seed(trial)), []).append(trial.per_case)
    return out


def difference_interval(ours: SeedValues, theirs: SeedValues, metric: str, class_key: int | str) -> tuple[float, float]:
    """The 95% seeds-and-patients interval (:func:`analysis.significance.confidence_interval`, the claims' interval) of
    a cell's mean difference to the best cell of its column, in display units (x100 for Dice), over the seeds both
    cells have (each side's :func:`analysis.significance.seed_values`); class ``class_key`` or, for a str ("Avg"), per
    case the classes both define. (NaN, NaN) when they share no seed or fewer than 2 test patients have a pair."""
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return math.nan, math.nan
    cases, a, b, _, _ = pair_seed_values(ours, theirs, seeds, class_key)
    return confidence_interval((a - b) * metric_style(metric).scale, cases)


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
    results: dict[tuple[str, str], dict[str, str]] = {}
    # cells with a trial that segmented something (a Dice above 0): in a cell whose every seed predicts nothing, models
    # agree without training alike; one seed's empty prediction does not hide that the others trained the same
    segmented = set()
    for r in _unique_records(records):
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
            seeds = ", ".join(sorted(json.loads(fingerprint), key=_natural))
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
    for r in _unique_records(records):
        groups.setdefault((row_label(r), column_label(r), str(trial_seed(r))), []).append(r)
    lines = []
    for (row, column, seed), group in groups.items():
        if len(group) < 2:
            continue
        differ = differing_fields([r.result.get("config") or {} for r in group])
        lines.append(f"duplicate trials: {row} / {column} / seed {seed} is reported by {len(group)} trials (all averaged)"
                     + (f"; their configs differ in {', '.join(differ[:4])}{' and more' if len(differ) > 4 else ''}" if differ else ""))
    return lines


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Cell:
    """One shown cell: mean and std in display units, seeds, undefined values, whether it is the best,
    whether its difference to the best is not significant (its interval contains 0 or cannot be formed; never for a
    best cell),
    and how many of its trials were flagged by their validation curve (:mod:`analysis.health`)."""

    mean: float
    std: float
    n_seeds: int
    n_undefined: int
    best: bool
    not_significant: bool = False
    n_flagged: int = 0
    flags: str = ""  # the flagged trials per verdict ("did not learn: 2"), :func:`flagged_note`
    partial: bool = False  # an "Avg" over fewer classes than its column's (partial_averages): never the best


@dataclass(frozen=True)
class WideTable:
    """One metric laid out wide: methods (rows) x label fractions (groups) x classes."""

    metric: str
    rows: list[str]
    columns: list[str]
    classes: list[str]
    cells: dict[tuple[str, str, str], Cell]
    any_tested: bool = False  # some cell was tested against the best of its column
    any_untestable: bool = False  # some cell other than a best one had too few pairs to test
    settings: dict[str, list[str]] = field(default_factory=dict)  # seeds/steps/patients/empty_policy: distinct values
    by_interval: bool = True  # the marker comes from the interval (False: an older table.csv's Wilcoxon p)


def _rounded(value: float, decimals: int) -> float:
    """``value`` rounded as it is displayed."""
    return round(value, decimals)


def _best_means(frame: pd.DataFrame, style: MetricStyle, partial: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Per (column, class): the best displayed mean, only where at least two methods have a value and not all of them
    show the same one (a column of ties has no best: nothing bold, nothing compared); the "Avg" of a (row, column) in
    ``partial`` (over fewer classes than its column's, :func:`partial_averages`) is never the best."""
    best = {}
    for (column, cls), group in frame.groupby(["column", "class"], sort=False):
        shown = [_rounded(m, style.decimals) for m in group["mean"] if not math.isnan(m)]
        eligible = [_rounded(m, style.decimals) for row, m in zip(group["row"], group["mean"])
                    if not math.isnan(m) and (cls != AVG or (row, column) not in partial)]
        if len(set(shown)) >= 2 and eligible:
            best[(column, cls)] = max(eligible) if style.higher_is_better else min(eligible)
    return best


def wide_table(df: pd.DataFrame, metric: str) -> WideTable:
    """Lay out ``metric`` of a long-form table; methods and fractions in rank order, classes as they come."""
    style = metric_style(metric)
    frame = df[df["metric"] == metric]
    records = frame.to_dict("records")
    partial_cells = {(row, column) for row, column, _ in partial_averages(records)}
    best = _best_means(frame, style, partial_cells)
    partial = {(row, column, AVG) for row, column in partial_cells}
    cells, tested, untestable = {}, False, False
    for rec in records:
        key = (rec["row"], rec["column"], rec["class"])
        target = best.get(key[1:])
        is_best = (target is not None and not math.isnan(rec["mean"]) and _rounded(rec["mean"], style.decimals) == target
                   and key not in partial)
        compared = target is not None and not math.isnan(rec["mean"]) and not is_best
        if "ci_low" in rec:  # the interval of the difference to the best (docs/analysis.md, 'Significance in the tables')
            low, high = float(rec["ci_low"]), float(rec["ci_high"])
            formed = not (math.isnan(low) or math.isnan(high))
            similar = not formed or low <= 0.0 <= high
        else:  # a table.csv written before the interval: its Wilcoxon p
            p_value = float(rec.get("p_vs_best", math.nan))
            formed, similar = not math.isnan(p_value), p_value >= ALPHA
        tested |= compared and formed
        untestable |= compared and not formed
        cells[key] = Cell(rec["mean"], rec["std"], int(rec["n_seeds"]), int(rec["n_undefined"]), is_best,
                          not_significant=compared and similar, n_flagged=int(rec.get("n_flagged", 0)),
                          flags=rec["flags"] if isinstance(rec.get("flags"), str) else "",  # NaN: a CSV's empty cell
                          partial=key in partial)
    return WideTable(metric, _by_rank(frame, "row"), _by_rank(frame, "column"), list(dict.fromkeys(frame["class"])),
                     cells, tested, untestable, _table_settings(frame), by_interval="ci_low" in frame.columns)


_SETTING_FIELDS = ("seeds", "steps", "patients", "empty_policy", "unit", "search", "selection")


def _setting_text(value: Any) -> str:
    """One value of a settings field as text; a CSV round trip turns "100" into 100 and "nan" into NaN."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else (str(int(value)) if value.is_integer() else str(value))
    return str(value)


def _natural(text: str) -> tuple:
    """Sort key: numbers by value before other text."""
    number = as_number(text)
    return (0, number, "") if number is not None else (1, 0.0, text)


def _table_settings(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per settings field present in ``frame``: the distinct values over all cells, sorted (numbers by value)."""
    out = {}
    for name in _SETTING_FIELDS:
        if name in frame:
            values = {part for value in frame[name] for part in _setting_text(value).split(",")}
            out[name] = sorted(values, key=_natural)
    return out


def _by_rank(frame: pd.DataFrame, field: str) -> list[str]:
    """The distinct values of ``field`` ordered by their ``<field>_rank``."""
    ranks = frame.groupby(field, sort=False)[f"{field}_rank"].min()
    return [str(label) for label in ranks.sort_values(kind="stable").index]


def cell_text(cell: Cell | None, decimals: int, pm: str = "\u00b1") -> str:
    """"82.6 ± 1.3" for a cell, "82.6" for a cell from a single seed ("–" when the cell has no trial,
    "n/a" when no seed has a value)."""
    if cell is None:
        return MISSING
    if math.isnan(cell.mean):
        return "n/a"
    if cell.n_seeds == 1:
        return f"{cell.mean:.{decimals}f}"
    return f"{cell.mean:.{decimals}f} {pm} {cell.std:.{decimals}f}"


def _seeds_sentence(table: WideTable) -> str:
    """What a cell shows over how many seeds, for the caption (says which cells come from one seed)."""
    counts = [c.n_seeds for c in table.cells.values() if c.n_seeds > 0]
    distinct = sorted(set(counts))
    per_case = "per seed, the mean over test cases."
    if not distinct:
        return "No cell has a value."
    if distinct == [1]:
        return "One seed per cell: the mean over its test cases (no std)."
    if "yes" in table.settings.get("search", []):  # a search's samples (a grid's duplicated seed is a problem line instead)
        spread = f"{distinct[0]}" if len(distinct) == 1 else f"{distinct[0]}\u2013{distinct[-1]}"
        return (f"Mean \u00b1 sample std (ddof=1) over the trials of a cell, {spread} per cell: search samples, whose "
                "hyper-parameters differ (the std is their spread, not seed noise); per trial, the mean over test cases.")
    phrase = f"{distinct[0]} seeds per cell" if len(distinct) == 1 else f"{distinct[0]}\u2013{distinct[-1]} seeds per cell"
    if distinct[0] == 1:
        phrase += f"; a cell without \u00b1 is from a single seed ({counts.count(1)} of {len(counts)} cells)"
    return f"Mean \u00b1 sample std (ddof=1) over seeds, {phrase}; {per_case}"


def _values_phrase(values: Sequence[str], what: str) -> str:
    """"100 fine-tuning steps", "fine-tuning steps mixed (100, 200)", "fine-tuning steps unknown"."""
    known = [v for v in values if v != UNKNOWN]
    if not known:
        return f"{what} unknown"
    if len(values) == 1:
        return f"{values[0]} {what}"
    return f"{what} mixed ({', '.join(values)})"


def _policy_phrase(policies: Sequence[str], style: MetricStyle) -> str:
    """The empty-mask policy (``eval.empty_policy``) and what it does to this metric's means."""
    if policies == ["nan"]:
        return ('empty-mask policy "nan" (a case where prediction and ground truth are both empty is left out of that '
                "class's mean; where one of them is empty the case scores 0)" if style.higher_is_better else
                'empty-mask policy "nan" (a case where prediction or ground truth is empty is left out of that '
                "class's mean)")
    if policies == ["released"]:
        return ('empty-mask policy "released" (scored as the released code: an empty prediction or ground truth '
                + ("scores 0, or 1 for a prediction where the ground truth is empty)" if style.higher_is_better
                   else "scores 0)"))
    if not policies or policies == [UNKNOWN]:
        return "empty-mask policy unknown"
    return f"empty-mask policy mixed ({', '.join(policies)})"


def settings_sentence(table: WideTable) -> str:
    """Seeds, fine-tuning steps, labelled patients, the tested weights and the empty-mask policy of the table's trials ("" if
    unknown)."""
    settings, style = table.settings, metric_style(table.metric)
    parts = []
    if settings.get("seeds"):
        parts.append(f"Seed{'s' if len(settings['seeds']) != 1 else ''} {', '.join(settings['seeds'])}")
    if "steps" in settings:
        parts.append(_values_phrase(settings["steps"], "fine-tuning steps"))
    if "patients" in settings:
        known = [p for p in settings["patients"] if p != UNKNOWN]
        listed = ", ".join(known[:-1]) + " or " + known[-1] if len(known) > 1 else "".join(known)
        plural = "" if known == ["1"] else "s"
        parts.append(f"{listed} labelled patient{plural}" if known else "labelled patients unknown")
    if "selection" in settings:
        parts.append(_selection_phrase(settings["selection"]))
    if "empty_policy" in settings:
        parts.append(_policy_phrase(settings["empty_policy"], style))
    return "; ".join(parts) + "." if parts else ""


#: The tested weights of each ``eval.selection`` (docs/evaluation.md, 'Model selection').
SELECTION_PHRASES = {"best_val": "the weights of the best validation Dice tested", "final": "the final iteration's weights tested"}


def _selection_phrase(selections: Sequence[str]) -> str:
    """Which weights the trials tested (``eval.selection``): val-selected (the corrected protocol) or final (released)."""
    known = [SELECTION_PHRASES.get(s, s) for s in selections if s != UNKNOWN]
    if len(known) == 1 and len(selections) == 1:
        return known[0]
    return f"tested weights mixed ({', '.join(selections)})" if known else "tested weights unknown"


def undefined_note(table: WideTable) -> str:
    """The footnote for cells marked with the undefined marker (counts, not a list); "" when there are none."""
    marked = [cell for cell in table.cells.values() if cell.n_undefined > 0]
    if not marked:
        return ""
    values = sum(cell.n_undefined for (_, _, cls), cell in table.cells.items() if cls != AVG)
    partial = sum(cell.partial for cell in table.cells.values())
    # under the "nan" policy an empty ground truth leaves every metric undefined; an empty prediction of a present
    # structure scores Dice and Jaccard 0 and leaves only the distances undefined (evaluation.metrics)
    why = "empty ground truth" if metric_style(table.metric).scale != 1.0 else "empty prediction or empty ground truth"
    return (f"{UNDEFINED_MARK} {len(marked)} of {len(table.cells)} cells include undefined per-case values ({why}), "
            f"excluded from their means: {values} value{'s' if values != 1 else ''} "
            f"over all seeds and classes."
            + (f" {partial} Avg cell{'s' if partial != 1 else ''} leave{'' if partial != 1 else 's'} out a class that its other "
               "seeds or other rows of the column define (in some seed, no defined value in any test case): not comparable, never bold."
               if partial else ""))


#: What each trial-health verdict means, as the tables' footnote words it (analysis.health has the rules).
VERDICT_CRITERIA = {
    STILL_RISING: f"the last validation its best and more than {100 * RISING_MARGIN:g} val Dice "
                  f"point{'s' if RISING_MARGIN != 0.01 else ''} above the previous one",
    COLLAPSED: f"the last validation more than {100 * COLLAPSE_DROP:g} points below the best",
    NOT_LEARNED: f"the best validation below {100 * LEARNED_FLOOR:g} points",
}


def _flag_counts(table: WideTable) -> dict[str, int]:
    """Flagged trials per verdict over the table's (row, column) cells, from the cells' ``flags`` text."""
    counts: dict[str, int] = {}
    cells = {(row, column): cell.flags for (row, column, _), cell in table.cells.items()}
    for text in cells.values():
        for part in filter(None, (p.strip() for p in text.split(";"))):
            verdict, _, count = part.rpartition(":")
            counts[verdict.strip()] = counts.get(verdict.strip(), 0) + int(count)
    return counts


def flagged_note(table: WideTable) -> str:
    """The footnote for cells marked with :data:`FLAGGED_MARK`: counts of cells, and of trials per verdict with what the
    verdict means (all three criteria where the cells carry no verdicts, e.g. an older ``table.csv``); "" when none."""
    marked = [cell for cell in table.cells.values() if cell.n_flagged > 0]
    if not marked:
        return ""
    counts = _flag_counts(table)
    if counts:
        listed = "; ".join(f"{n} {verdict} ({VERDICT_CRITERIA.get(verdict, 'analysis.health')})"
                           for verdict, n in sorted(counts.items(), key=lambda kv: list(FLAGGED).index(kv[0])
                                                    if kv[0] in FLAGGED else len(FLAGGED)))
        return (f"{FLAGGED_MARK} {len(marked)} of {len(table.cells)} cells include a trial flagged at the end of training: "
                f"{listed}; listed under Trial health in report.md.")
    trials = sum({(row, column): cell.n_flagged for (row, column, _), cell in table.cells.items()}.values())
    return (f"{FLAGGED_MARK} {len(marked)} of {len(table.cells)} cells include a trial whose validation Dice was "
            f"still rising (the last validation its best and more than {100 * RISING_MARGIN:g} val Dice point{'s' if RISING_MARGIN != 0.01 else ''} above the previous one) or "
            f"collapsed (the last more than {100 * COLLAPSE_DROP:g} points below the best) at the end of training, or that "
            f"did not learn (its best below {100 * LEARNED_FLOOR:g} points): {trials} trial{'s' if trials != 1 else ''} "
            f"in all, listed under Trial health in report.md.")


def set_option_items(overrides: Mapping[str, Any]) -> list[str]:
    """A study's ``--set`` overrides (settings.json's ``overrides``) as typed, ``["optim.lr=0.05", "seed=2"]``: sorted by
    key, lists and dicts as JSON."""
    return [f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}" for key, value in sorted(overrides.items())]


def set_options_text(overrides: Mapping[str, Any]) -> str:
    """``"--set optim.lr=0.05, seed=2"`` (:func:`set_option_items`); "" when there are none."""
    return "--set " + ", ".join(set_option_items(overrides)) if overrides else ""


def recipe_sentence(overrides: Mapping[str, Any]) -> str:
    """The caption's sentence for a study whose every trial ran with ``--set`` overrides ("" without any): a table
    copied out of its report still says that its recipe is not the profile's."""
    text = set_options_text(overrides)
    return f"Every trial ran with {text} (the profile's recipe changed)." if text else ""


def caption(table: WideTable, recipe: str = "") -> str:
    """Plain-text caption of a wide table: what is shown, over how many seeds, units, bold, footnote.
    ``recipe``: :func:`recipe_sentence` of the study's ``--set`` overrides, said after the settings."""
    style = metric_style(table.metric)
    classes = [c for c in table.classes if c != AVG]
    text = (f"Test {style.label} per class ({', '.join(classes)}) and their average ({AVG}), by method and "
            f"labelled fraction (patients and percent of the training patients). {_seeds_sentence(table)}")
    settings = settings_sentence(table)
    if settings:
        text += f" {settings}"
    if recipe:
        text += f" {recipe}"
    if style.scale == 1.0:
        units = table.settings.get("unit") or [style.unit]
        if len(units) == 1 or style.unit in units:  # one unit, or some cell's is unknown: the generic words
            text += f" {style.label} in {units[0] if len(units) == 1 else style.unit}."
        else:
            text += f" {style.label} in {' or '.join(units)}: the cells differ (table.csv's unit column gives each cell's)."
    text += f" Bold: best per column ({'higher' if style.higher_is_better else 'lower'} is better; every row that shows the best value; a column of ties has none)."
    if table.any_tested or table.any_untestable:
        text += " " + caption_note(table.any_tested, table.any_untestable, table.by_interval)
    notes = [note for note in (undefined_note(table), flagged_note(table)) if note]
    return " ".join([text, *notes])


# --------------------------------------------------------------------------------------------- Markdown


def _markdown_cell(cell: Cell | None, decimals: int) -> str:
    """A Markdown cell: bold when best, then the undefined and not-significant markers where they apply."""
    text = cell_text(cell, decimals)
    if cell is not None and cell.best:
        text = f"**{text}**"
    return text + _markers(cell)


def _markers(cell: Cell | None) -> str:
    """The markers after a cell's text: undefined values excluded, difference to the best not significant,
    a flagged trial included."""
    if cell is None:
        return ""
    return ((UNDEFINED_MARK if cell.n_undefined > 0 else "") + (NOT_SIGNIFICANT_MARK if cell.not_significant else "")
            + (FLAGGED_MARK if cell.n_flagged > 0 else ""))


def _markdown_lines(grid: list[list[str]]) -> list[str]:
    """A header row plus body rows as aligned Markdown table lines (first column left, others right)."""
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    pad = lambda line: "| " + " | ".join(  # noqa: E731 - one-line formatter
        text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths))) + " |"
    rule = "| " + " | ".join(("-" * w if i == 0 else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return [pad(grid[0]), rule, *(pad(line) for line in grid[1:])]


def to_markdown(df: pd.DataFrame, metric: str, recipe: str = "") -> str:
    """``metric`` as a Markdown table (methods x "fraction: class" columns) followed by its caption (``recipe``: as
    :func:`caption`'s)."""
    table = wide_table(df, metric)
    style = metric_style(metric)
    if not table.rows:
        return f"_{style.label}: no finished trials._\n"
    header = ["Method"] + [escape_markdown(f"{column}: {cls}") for column in table.columns for cls in table.classes]
    body = [[escape_markdown(row)] + [_markdown_cell(table.cells.get((row, column, cls)), style.decimals)
                                      for column in table.columns for cls in table.classes] for row in table.rows]
    lines = [f"### {style.label}", "", *_markdown_lines([header, *body]), "", caption(table, recipe)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- LaTeX

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\u00b1": r"$\pm$",
    UNDEFINED_MARK: r"$^\dagger$", NOT_SIGNIFICANT_MARK: r"$^\ddagger$", FLAGGED_MARK: r"$^\S$", "\u2013": "--", "\u2265": r"$\geq$",
}


_GREEK = re.compile(r"([\u0391-\u03a1\u03a3-\u03a9\u03b1-\u03c9])(?:_([A-Za-z0-9]+))?")
_LATEX_GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
_LATIN_GREEK_CAPITALS = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H", "Iota": "I", "Kappa": "K",
                         "Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P", "Tau": "T", "Chi": "X"}  # no LaTeX command


def _latex_greek(match: re.Match) -> str:
    """A Greek letter, with a subscript written ``_t`` after it, as math: "τ_t" -> ``$\\tau_{t}$``."""
    letter, subscript = match.groups()
    name = unicodedata.name(letter).split()[-1].capitalize().replace("Lamda", "Lambda")  # "GREEK SMALL LETTER TAU"
    if letter.islower():
        symbol = "o" if name == "Omicron" else "\\" + name.lower()
    else:
        symbol = "\\" + name if name in _LATEX_GREEK_CAPITALS else _LATIN_GREEK_CAPITALS[name]
    return f"${symbol}_{{{subscript}}}$" if subscript else f"${symbol}$"


def escape_latex(text: str) -> str:
    """``text`` as LaTeX source: special characters escaped, ± and † as math, – as ``--``, Greek letters as math
    (with a ``_x`` after one as its subscript: "τ_t = 0.1" -> ``$\\tau_{t}$ = 0.1``)."""
    out, at = [], 0
    for match in _GREEK.finditer(text):
        out += [_LATEX_ESCAPES.get(char, char) for char in text[at:match.start()]] + [_latex_greek(match)]
        at = match.end()
    return _latex_quotes("".join(out + [_LATEX_ESCAPES.get(char, char) for char in text[at:]]))


def _latex_quotes(text: str) -> str:
    """Straight double quotes as LaTeX's opening and closing ones (``...''), in turn: TeX sets a straight " as a
    closing quote on both sides (the caption's "nan" policy read ”nan”)."""
    parts = text.split('"')
    paired = len(parts) - 1 - (len(parts) - 1) % 2  # quotes that have a partner; an odd last one stays straight
    return "".join(part + (('``' if i % 2 == 0 else "''") if i < paired else '"') for i, part in enumerate(parts[:-1])) + parts[-1]


def _latex_cell(cell: Cell | None, decimals: int) -> str:
    """A LaTeX cell: ``\\textbf`` when best, ``$^\\dagger$`` / ``$^\\ddagger$`` / ``$^\\S$`` for the markers."""
    text = escape_latex(cell_text(cell, decimals))
    if cell is not None and cell.best:
        text = rf"\textbf{{{text}}}"
    return text + escape_latex(_markers(cell))


def _latex_header(table: WideTable) -> list[str]:
    """The two header lines: label fractions spanning their classes (with cmidrules), then classes."""
    k = len(table.classes)
    spans = " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{escape_latex(c)}}}" for c in table.columns)
    rules = " ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(table.columns)))
    classes = " & ".join(escape_latex(c) for _ in table.columns for c in table.classes)
    return [rf" & {spans} \\", rules, rf"Method & {classes} \\"]


def to_latex(df: pd.DataFrame, metric: str, float_env: bool = True, label: str | None = None, recipe: str = "") -> str:
    """``metric`` as a complete booktabs ``tabular`` (needs ``\\usepackage{booktabs}``).

    With ``float_env`` (default) it is wrapped in a ``table`` float with ``\\caption`` and ``\\label``
    (``tab:<metric>`` unless given); without, the caption is written as a comment above the tabular.
    ``recipe``: as :func:`caption`'s.
    """
    table = wide_table(df, metric)
    style = metric_style(metric)
    text_caption = escape_latex(caption(table, recipe)) if table.rows else escape_latex(f"{style.label}: no finished trials.")
    ncols = 1 + len(table.columns) * len(table.classes)
    lines = [rf"\begin{{tabular}}{{l{'c' * (ncols - 1)}}}", r"\toprule"]
    if table.rows:
        lines += _latex_header(table) + [r"\midrule"]
        for row in table.rows:
            cells = [_latex_cell(table.cells.get((row, column, cls)), style.decimals)
                     for column in table.columns for cls in table.classes]
            lines.append(" & ".join([escape_latex(row), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if not float_env:
        return "\n".join(["% requires \\usepackage{booktabs}", f"% {text_caption}", *lines]) + "\n"
    return "\n".join(["% requires \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
                      rf"\caption{{{text_caption}}}", rf"\label{{{label or 'tab:' + metric}}}", *lines,
                      r"\end{table}"]) + "\n"


# --------------------------------------------------------------------------------------------- files


def to_csv(df: pd.DataFrame, path: str | Path | None = None) -> str:
    """The long form as CSV text (NaN written as ``nan``); also written atomically to ``path`` if given."""
    text = df.to_csv(index=False, na_rep="nan", lineterminator="\n")
    if path is not None:
        write_text_atomic(path, text)
    return text


#: the number columns of the long form; the others are text
NUMBER_COLUMNS = ("mean", "std", "n_seeds", "n_undefined", "p_vs_best", "n_pairs", "ci_low", "ci_high", "row_rank", "column_rank", "n_flagged",
                  "avg_classes")  # "flags" is text ("did not learn: 2")


def read_table_csv(path: str | Path) -> pd.DataFrame:
    """``table.csv`` back as the long form: "nan" is a missing number in the number columns and stays text elsewhere
    (the empty-mask policy named "nan"; ``pandas.read_csv``'s defaults made it a missing value)."""
    return pd.read_csv(path, keep_default_na=False, na_values={name: ["nan", ""] for name in NUMBER_COLUMNS},
                       dtype={name: str for name in LONG_COLUMNS if name not in NUMBER_COLUMNS})


def external_test_sets(records: Iterable[TrialRecord]) -> dict[str, list[TrialRecord]]:
    """Per external test root (sorted), the trials scored on it, each as a :class:`TrialRecord` whose ``per_case``
    holds that set's rows (so the table code builds the block unchanged); {} when no trial has one."""
    out: dict[str, list[TrialRecord]] = {}
    for record in _unique_records(records):
        found = read_test_root(record)
        if found is not None:
            out.setdefault(found[0], []).append(TrialRecord(record.path, record.result, found[1]))
    return dict(sorted(out.items()))


def external_blocks(records: Sequence[TrialRecord], metric: str, suffix: str,
                    class_names: Mapping[int, str] | None = None, recipe: str = "") -> str:
    """The external test set blocks of ``table_<metric>.<suffix>`` (``md`` or ``tex``), one per root; "" when none.

    Each is the metric's table of that set's per-case rows, titled with the root, plus a line counting the study's
    trials that have no evaluation on it (finished before ``--test-root`` was given and not scored since, e.g. their
    checkpoint is gone; rerunning the study command with the flag scores those that still have a checkpoint).
    ``recipe``: as :func:`caption`'s.
    """
    records = _unique_records(records)
    style = metric_style(metric)
    text = ""
    for index, (root, scored) in enumerate(external_test_sets(records).items(), 1):
        df = build_table(scored, (metric,), class_names, configured_distance_unit)  # not the own test set's spacing
        missing = len(records) - len(scored)
        note = (f"{missing} of {len(records)} trials have no evaluation on this test set (rerun the study command with "
                "--test-root to score those that still have a checkpoint).") if missing else ""
        if suffix == "md":
            block = to_markdown(df, metric, recipe).replace(f"### {style.label}", f"### {style.label}, external test set: {escape_markdown(root)}", 1)
            text += "\n" + block + (f"\n_{escape_markdown(note)}_\n" if note else "")
        else:
            block = to_latex(df, metric, label=f"tab:{metric}-external-{index}", recipe=recipe)
            block = block.replace(r"\caption{", rf"\caption{{External test set {escape_latex(root)}. ", 1)
            text += "\n" + block + (f"% {escape_latex(note)}\n" if note else "")
    return text


TABLE_CSV = "table.csv"


def table_file_names(metrics: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """The files :func:`write_tables` writes, in its order: ``table_<metric>.md`` and ``.tex`` per metric, then the CSV."""
    return [f"table_{metric}.{suffix}" for metric in metrics for suffix in ("md", "tex")] + [TABLE_CSV]


def write_tables(records: Iterable[TrialRecord], out_dir: str | Path,
                 metrics: Sequence[str] = DEFAULT_METRICS,
                 class_names: Mapping[int, str] | None = None, incomplete: str = "", recipe: str = "",
                 table: pd.DataFrame | None = None) -> list[Path]:
    """Write ``table_<metric>.md`` and ``table_<metric>.tex`` per metric (each followed by its external test set
    blocks, :func:`external_blocks`) and ``table.csv`` (long form). ``incomplete``: a sentence saying which trials of
    the study have no result yet (:func:`incomplete_note`), written under each Markdown table and as a LaTeX comment.
    ``recipe``: :func:`recipe_sentence` of the study's ``--set`` overrides, in every caption.

    Every file is written atomically; returns the paths in that order (CSV last). ``table``: the
    :func:`build_table` of ``records``, ``metrics`` and ``class_names`` when the caller has it already (the report
    builds it for the plots too: building it twice was 15-20% of a paper-size report).
    """
    out_dir = Path(out_dir)
    records = _unique_records(records)
    df = build_table(records, metrics, class_names) if table is None else table
    names = iter(table_file_names(metrics))
    paths = []
    for metric in metrics:
        for suffix, render in (("md", to_markdown), ("tex", to_latex)):
            path = out_dir / next(names)
            text = render(df, metric, recipe=recipe)
            if incomplete:
                text += f"\n**{incomplete}**\n" if suffix == "md" else f"% {escape_latex(incomplete)}\n"
            write_text_atomic(path, text + external_blocks(records, metric, suffix, class_names, recipe))
            paths.append(path)
    csv_path = out_dir / next(names)
    to_csv(df, csv_path)
    paths.append(csv_path)
    return paths


def incomplete_note(finished: int, expected: int) -> str:
    """The sentence under a table whose study has trials without a result ("" when all ``expected`` finished)."""
    if finished >= expected:
        return ""
    return (f"Incomplete: {finished} of the study's {expected} trials have a result; the others' cells are missing or "
            "average fewer seeds (rerun the study command to finish them).")


#: A terminal table wider than this many characters is printed with its average columns only (the file keeps all).
TERMINAL_TABLE_WIDTH = 160


def terminal_table(markdown: str, path: Path | str, width: int = TERMINAL_TABLE_WIDTH) -> str:
    """A Markdown table file's text for the terminal: as it is, or, when its table lines are wider than ``width``, with
    the method column and the "...: Avg" columns only and a line naming ``path`` for the rest (a paper-size table's
    17 columns made 460-character lines: the analysis scaling probe)."""
    lines = markdown.rstrip("\n").splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| ")]
    if not rows or max(len(lines[i]) for i in rows) <= width:
        return "\n".join(lines)
    split = {i: [cell.strip() for cell in lines[i].strip("|").split("|")] for i in rows}
    header = split[rows[0]]
    keep = [0] + [k for k, cell in enumerate(header) if k and cell.endswith(f": {AVG}")]
    if len(keep) == 1:  # no average column to show
        return "\n".join(lines)
    grid = [[split[i][k] for k in keep] for i in rows if not set(split[i][1]) <= {"-", ":"}]
    compact = _markdown_lines(grid)
    out = lines[: rows[0]] + compact + lines[rows[-1] + 1:]
    return "\n".join(out + [f"(the {AVG} columns of {len(header) - 1}; every class in {path})"])


def print_summary(paths: Sequence[str | Path], problems: Sequence[str], file=None) -> str:
    """Print (and return) a short terminal summary: the Dice table (its average columns when it is wide,
    :func:`terminal_table`), the files written, the problems."""
    paths = [Path(p) for p in paths]
    main = next((p for p in paths if p.name == "table_dice.md"), next((p for p in paths if p.suffix == ".md"), None))
    lines = [terminal_table(main.read_text(encoding="utf-8"), main), ""] if main is not None and main.is_file() else []
    lines += [f"Tables written ({len(paths)} files):", *(f"  {p}" for p in paths)] if paths else ["Tables written: none"]
    if problems:
        lines.append(f"Problems ({len(problems)}):")
        lines += [f"  - {problem}" for problem in problems]
    else:
        lines.append("Problems: none")
    text = "\n".join(lines) + "\n"
    print(text, end="", file=file)
    return text
