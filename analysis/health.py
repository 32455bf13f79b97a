"""Trial health: did a trial's validation Dice plateau, or was it still rising, collapsed, or never learning?

The test numbers of a trial come from the model selected on val (its best validation), so a table can
look fine while the training behind a cell did not settle. Each finished trial's ``val_curve.csv``
(``step``, ``val_dice``: one row per validation of ``medseg_platform.engine.train_trial``, written by
``medseg_platform.results.write_trial_results``) is
classified by :func:`classify_curve`:

* :data:`NOT_LEARNED`: the best validation stays below :data:`LEARNED_FLOOR`: the model never segmented the
  val cases (a seed that fails outright), whatever the shape of its curve; checked first;
* :data:`STILL_RISING`: the last validation is the best (ties count) **and** it exceeds the previous
  validation by more than :data:`RISING_MARGIN`: more fine-tuning steps would probably still help, so the
  cell understates the method;
* :data:`COLLAPSED`: the last validation is more than :data:`COLLAPSE_DROP` below the best: training
  became unstable late (the test model is still the best one on val, but a rerun with another seed or
  a shorter schedule may land elsewhere; with ``eval.selection="final"`` the tested model is the collapsed one);
* :data:`HEALTHY` otherwise;
* :data:`UNDETERMINED` with one finite validation at or above the floor (nothing to compare it with), or none:
  not judged, and never flagged. Non-finite val Dice (NaN: no class defined on the val cases) carries
  no trend and is left out before judging;
* :data:`NO_CURVE` when ``val_curve.csv`` is missing or unreadable (:func:`record_health`): not judged either, and
  named among the report's problems, since its trial may be one that would be flagged.

Everything but :func:`read_val_curve` / :func:`record_health` is a pure function on plain data. The
report (``analysis/report.py``) lists the flagged trials; the tables (``analysis/tables.py``) mark cells
that include one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from analysis.markdown import escape_markdown
from medseg_platform.results import VAL_CURVE_FILE, read_csv

LEARNED_FLOOR = 0.15
"""Absolute val Dice (0..1) a trial's best validation must reach to count as having learned.

Fifteen Dice points is about half of the lowest number the papers report at 1 labelled ACDC patient (the
labelled-only UNet's RV, 29.0 in ARCO's Table 1) and several times what a constant prediction scores (a whole
slice labelled as one structure covering a few % of it: a few Dice points). On the quick phantom the weakest
trial that did learn peaked at 18.4 (supervised-only, seed 2, 250 steps; test 37.9), while released ACTION's
seed 2 at 500 steps stayed at 1.8-12.9 for all 20 validations (``benchmarks/RESULTS.md``). A curve below it
is neither rising to anything nor collapsing from anything, and the verdict takes precedence over both. The
floor is absolute: on a dataset where trained models score below it, every trial would be flagged; lower it
there."""

RISING_MARGIN = 0.01
"""Absolute val Dice (0..1) the last validation must gain over the previous one to count as still rising.

One Dice point between two validations is more than the jitter of a plateaued curve on a handful of val
volumes, and small enough that a curve climbing this fast at the end is clearly not finished."""

COLLAPSE_DROP = 0.10
"""Absolute val Dice (0..1) the last validation must lie below the best to count as collapsed.

Ten Dice points is far beyond validation noise: a drop that large means the model degraded (diverging
contrastive terms, an over-confident teacher), not that the curve wobbles around its plateau."""

HEALTHY = "healthy"
STILL_RISING = "still rising"
COLLAPSED = "collapsed"
NOT_LEARNED = "did not learn"
UNDETERMINED = "undetermined"  # no finite validation, or one at or above LEARNED_FLOOR
NO_CURVE = "no validation curve"  # val_curve.csv missing or unreadable: not judged, and a problem of the report
FLAGGED = (STILL_RISING, COLLAPSED, NOT_LEARNED)
UNJUDGED = (UNDETERMINED, NO_CURVE)


@dataclass(frozen=True)
class CurveHealth:
    """The verdict on one validation curve and the numbers behind it (val Dice in 0..1, NaN when absent)."""

    verdict: str
    last: float
    previous: float
    best: float
    best_step: int | None
    n_validations: int

    @property
    def flagged(self) -> bool:
        """True for a still-rising, collapsed or never-learning curve."""
        return self.verdict in FLAGGED


@dataclass(frozen=True)
class TrialHealth:
    """One trial's verdict with what identifies it in the report (folder key, table row and column, seed)."""

    key: str
    row: str
    column: str
    seed: Any
    curve: CurveHealth


def classify_curve(points: Iterable[tuple[float, float]]) -> CurveHealth:
    """Classify a validation curve given as (step, val Dice) pairs in any order; see the module docstring.

    Non-finite values are dropped; a step given twice keeps its last value. The best step is the first
    step reaching the best value (as the engine selects it).
    """
    by_step: dict[float, float] = {}
    for step, value in points:
        if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(step, (int, float)) and math.isfinite(step):
            by_step[float(step)] = float(value)
    steps = sorted(by_step)
    values = [by_step[s] for s in steps]
    if not values:
        return CurveHealth(UNDETERMINED, math.nan, math.nan, math.nan, None, 0)
    best = max(values)
    best_step = int(steps[values.index(best)])
    last = values[-1]
    if best < LEARNED_FLOOR:  # first: a single validation below the floor is judged too (a run shorter than val_every)
        return CurveHealth(NOT_LEARNED, last, values[-2] if len(values) > 1 else math.nan, best, best_step, len(values))
    if len(values) < 2:
        return CurveHealth(UNDETERMINED, last, math.nan, best, best_step, 1)
    previous = values[-2]
    # differences rounded to 1e-9 Dice: 0.8 - 0.7 is 0.10000000000000009 in floats, and a drop of exactly the margin is
    # not "more than" it (the test audit)
    if last >= best and round(last - previous, 9) > RISING_MARGIN:
        verdict = STILL_RISING
    elif round(best - last, 9) > COLLAPSE_DROP:
        verdict = COLLAPSED
    else:
        verdict = HEALTHY
    return CurveHealth(verdict, last, previous, best, best_step, len(values))


def read_val_curve(trial_dir: str | Path) -> list[tuple[float, float]] | None:
    """(step, val Dice) pairs of a trial's ``val_curve.csv``; None when the file is missing or unreadable, or a row is
    not two numbers (an edited file): such a curve was read as one with fewer validations, and its trial's flag was
    lost without a word (the report review). None also for a file without rows: the engine validates at the last step
    at least, so such a file was cut short, and a curve of no points read as "not judged" (the health review)."""
    try:
        rows = read_csv(Path(trial_dir) / VAL_CURVE_FILE)
    except (OSError, ValueError, csv.Error):
        return None
    if not rows or not all(isinstance(row.get("step"), float) and isinstance(row.get("val_dice"), float) for row in rows):
        return None
    return [(row["step"], row["val_dice"]) for row in rows]


def record_health(record) -> CurveHealth:
    """The verdict on a finished trial (a :class:`~medseg_platform.results.TrialRecord`) from its folder:
    :data:`NO_CURVE` when its ``val_curve.csv`` cannot be read."""
    points = read_val_curve(record.path)
    if points is None:
        return CurveHealth(NO_CURVE, math.nan, math.nan, math.nan, None, 0)
    return classify_curve(points)


def _dice(value: float, decimals: int = 1) -> str:
    """A val Dice in percent with ``decimals`` decimals ("–" when absent)."""
    return "\u2013" if math.isnan(value) else f"{100 * value:.{decimals}f}"


def _decimals(curve: CurveHealth) -> int:
    """The fewest decimals (1 to 4) at which a flagged trial's printed last / previous / best val Dice show its verdict:
    at one decimal a gain of 1.004 points read "51.0 | 50.0", on the margin the rule says does not flag (the health
    review)."""
    def shown(value: float, decimals: int) -> float:
        return round(100 * value, decimals)

    for decimals in (1, 2, 3):
        last, previous, best = (shown(v, decimals) for v in (curve.last, curve.previous, curve.best))
        if ((curve.verdict == NOT_LEARNED and best < round(100 * LEARNED_FLOOR, 9))
                or (curve.verdict == STILL_RISING and round(last - previous, 9) > round(100 * RISING_MARGIN, 9))
                or (curve.verdict == COLLAPSED and round(best - last, 9) > round(100 * COLLAPSE_DROP, 9))):
            return decimals
    return 4


#: what a collapse means for the tested model, by the trials' ``eval.selection`` ("mixed": trials differ)
_COLLAPSE_CONSEQUENCE = {
    "best_val": "the test model is still the best one on val",
    "final": "the tested model is the last, collapsed one: these trials test their final weights",
    "mixed": "the test model is the best one on val, or the last, collapsed one in trials that test their final weights",
}


def criteria_sentence(selection: str = "best_val") -> str:
    """The rule, in one sentence, with the thresholds in Dice points; ``selection`` is the trials' model selection
    (``eval.selection``: "best_val", "final", or "mixed" when they differ)."""
    return (f"A trial *{NOT_LEARNED}* when its best validation stays below {100 * LEARNED_FLOOR:.1f} Dice points "
            f"(checked first); otherwise it is *{STILL_RISING}* when its last validation is its best and more than "
            f"{100 * RISING_MARGIN:.1f} Dice points above the previous one (more steps would likely help), and "
            f"*{COLLAPSED}* when its last validation is more than {100 * COLLAPSE_DROP:.1f} points below its best "
            f"(training became unstable; {_COLLAPSE_CONSEQUENCE[selection]}).")


def _verdict_counts(flagged: Sequence[TrialHealth]) -> str:
    """"2 still rising, 1 did not learn": the count of each flag verdict that occurs, in :data:`FLAGGED` order."""
    counts = [(sum(t.curve.verdict == verdict for t in flagged), verdict) for verdict in FLAGGED]
    return ", ".join(f"{n} {verdict}" for n, verdict in counts if n)


def _ended_at_best(trials: Sequence[TrialHealth]) -> str:
    """A sentence on the unflagged trials whose last validation was still their best (they gained at most the margin at
    the end): "" when none did. A reader counted the best steps of a default run: 9 of 24 trials were best at their
    last validation, 6 of them flagged, and the section read as if only those 6 might gain from more steps."""
    quiet = sum(t.curve.verdict == HEALTHY and t.curve.last >= t.curve.best for t in trials)
    if not quiet:
        return ""
    at_best = sum(t.curve.verdict != UNDETERMINED and t.curve.last >= t.curve.best for t in trials)  # flagged ones too
    return (f" {quiet} unflagged trial{'s' * (quiet != 1)} ended at {'their' if quiet != 1 else 'its'} best validation, "
            f"gaining at most {100 * RISING_MARGIN:.1f} point at the last one: more steps might still move "
            f"{'them' if quiet != 1 else 'it'}" + (f" ({at_best} of the judged trials ended at their best)." if at_best > quiet else "."))


def health_section(trials: Sequence[TrialHealth], selection: str = "best_val") -> list[str]:
    """The "Trial health" section of report.md (Markdown lines, ending with a blank line); [] for no trials.

    Flagged trials are listed in the order given, with last / previous / best val Dice (%) and the step of
    the best; when none is flagged, one sentence says so. ``selection``: as for :func:`criteria_sentence`.
    """
    if not trials:
        return []
    flagged = [t for t in trials if t.curve.flagged]
    unjudged = sum(t.curve.verdict == UNDETERMINED for t in trials)
    no_curve = sum(t.curve.verdict == NO_CURVE for t in trials)
    judged = len(trials) - unjudged - no_curve
    lines = ["## Trial health", "", f"From each trial's validation Dice (`{VAL_CURVE_FILE}`). " + criteria_sentence(selection), ""]
    not_judged = (f" {unjudged} trial{'s' if unjudged != 1 else ''} with fewer than 2 validation scores, none below the floor, "
                  f"{'were' if unjudged != 1 else 'was'} not judged.") if unjudged else ""
    if no_curve:
        not_judged += (f" {no_curve} trial{'s' if no_curve != 1 else ''} without a readable `{VAL_CURVE_FILE}` "
                       f"{'were' if no_curve != 1 else 'was'} not judged (see Problems).")
    at_best = _ended_at_best(trials)
    if not flagged:
        lines += [(f"All {judged} judged trials plateaued (none still rising, collapsed or failing to learn)." if judged else
                   "No trial had 2 or more validations to judge (nor one below the floor).") + not_judged + at_best, ""]
        return lines
    lines += [f"{len(flagged)} of {judged} judged trials flagged: {_verdict_counts(flagged)}.{not_judged}{at_best} Tables mark "
              "the cells that include a flagged trial with \u00a7.", "",
              "| trial | method | label fraction | seed | verdict | last val Dice (%) | previous (%) | best (%) | best at step |",
              "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for t in flagged:
        c, decimals = t.curve, _decimals(t.curve)
        lines.append(f"| {escape_markdown(t.key)} | {escape_markdown(t.row)} | {escape_markdown(t.column)} | {escape_markdown(str(t.seed))} | {c.verdict} | "
                     f"{_dice(c.last, decimals)} | {_dice(c.previous, decimals)} | {_dice(c.best, decimals)} | {c.best_step} |")
    return lines + [""]


def health_problems(trials: Sequence[TrialHealth]) -> list[str]:
    """The report's problem lines: one when any trial is flagged (the section has the details), and one per trial whose
    validation curve cannot be read (its flag, if any, is unknown)."""
    problems = [f"trial health: {t.key} has no readable {VAL_CURVE_FILE}, so it was not judged (rerun the study "
                "command after deleting its folder to train it again)" for t in trials if t.curve.verdict == NO_CURVE]
    flagged = [t for t in trials if t.curve.flagged]
    if not flagged:
        return problems
    judged = sum(t.curve.verdict not in UNJUDGED for t in trials)  # the count the section gives
    return [f"trial health: {len(flagged)} of {judged} judged trials flagged ({_verdict_counts(flagged)}); see Trial health",
            *problems]
