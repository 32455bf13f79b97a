"""One metric of a study's long table (:func:`analysis.tables.build_table`) laid out wide for a reader: methods down,
label fractions across, each split into the classes and "Avg" (:func:`wide_table`), with its caption and notes
(seeds, steps, patients, tested weights, empty-mask policy, undefined values, flagged trials, significance), as
Markdown (:func:`to_markdown`), LaTeX (:func:`to_latex`) or a terminal-width table (:func:`terminal_table`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from analysis.health import COLLAPSE_DROP, COLLAPSED, FLAGGED, LEARNED_FLOOR, NOT_LEARNED, RISING_MARGIN, STILL_RISING
from analysis.markdown import escape_markdown, neutralise_markup
from analysis.significance import ALPHA, NOT_SIGNIFICANT_MARK, caption_note
from analysis.tables import (AVG, FLAGGED_MARK, MISSING, UNDEFINED_MARK, UNKNOWN, MetricStyle, natural_sort_key, metric_style,
                             partial_cells)


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
    partial: bool = False  # an "Avg" over fewer classes, or a distance from fewer seeds (partial_cells): never the best


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


def _best_means(frame: pd.DataFrame, style: MetricStyle, partial: set[tuple[str, str, str]]) -> dict[tuple[str, str], float]:
    """Per (column, class): the best displayed mean, only where at least two methods have a value and not all of them
    show the same one (a column of ties has no best: nothing bold, nothing compared); a (row, column, class) in
    ``partial`` (:func:`partial_cells`) is never the best."""
    best = {}
    for (column, cls), group in frame.groupby(["column", "class"], sort=False):
        shown = [_rounded(m, style.decimals) for m in group["mean"] if not math.isnan(m)]
        eligible = [_rounded(m, style.decimals) for row, m in zip(group["row"], group["mean"])
                    if not math.isnan(m) and (row, column, cls) not in partial]
        if len(set(shown)) >= 2 and eligible:
            best[(column, cls)] = max(eligible) if style.higher_is_better else min(eligible)
    return best


def wide_table(df: pd.DataFrame, metric: str) -> WideTable:
    """Lay out ``metric`` of a long-form table; methods and fractions in rank order, classes as they come."""
    style = metric_style(metric)
    frame = df[df["metric"] == metric]
    records = frame.to_dict("records")
    partial = {(row, column, cls) for row, column, cls, _ in partial_cells(records)}
    best = _best_means(frame, style, partial)
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
            # not shown to be worse: the interval reaches 0 or the better side. It lies wholly on the better side only
            # where the two cells average different seeds, cases or classes (a row missing a seed whose shared seeds beat
            # the best's mean; a partial Avg), which left such a cell unmarked, as if worse (the statistics review)
            similar = not formed or (high >= 0.0 if style.higher_is_better else low <= 0.0)
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


def _table_settings(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per settings field present in ``frame``: the distinct values over all cells, sorted (numbers by value)."""
    out = {}
    for name in _SETTING_FIELDS:
        if name in frame:
            values = {part for value in frame[name] for part in _setting_text(value).split(",")}
            out[name] = sorted(values, key=natural_sort_key)
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
    partial = sum(cell.partial for (_, _, cls), cell in table.cells.items() if cls == AVG)
    fewer_seeds = sum(cell.partial for (_, _, cls), cell in table.cells.items() if cls != AVG)
    # under the "nan" policy an empty ground truth leaves every metric undefined; an empty prediction of a present
    # structure scores Dice and Jaccard 0 and leaves only the distances undefined (evaluation.metrics)
    why = "empty ground truth and prediction" if metric_style(table.metric).scale != 1.0 else "empty prediction or empty ground truth"
    return (f"{UNDEFINED_MARK} {len(marked)} of {len(table.cells)} cells include undefined per-case values ({why}), "
            f"excluded from their means: {values} value{'s' if values != 1 else ''} "
            f"over all seeds and classes."
            + (f" {partial} Avg cell{'s' if partial != 1 else ''} leave{'' if partial != 1 else 's'} out a class that its other "
               "seeds or other rows of the column define (in some seed, no defined value in any test case): not comparable, never bold."
               if partial else "")
            + (_fewer_seeds_sentence(fewer_seeds) if fewer_seeds else ""))


def _fewer_seeds_sentence(count: int) -> str:
    """The caption's count of class cells from fewer seeds than they list (:func:`analysis.tables.partial_cells`)."""
    cells = "1 class cell averages fewer seeds than it lists" if count == 1 else f"{count} class cells average fewer seeds than they list"
    return f" {cells} (a seed with no defined value in any test case): not comparable, never bold."


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


def caption(table: WideTable, recipe: str = "", name: Callable[[str], str] = str) -> str:
    """Plain-text caption of a wide table: what is shown, over how many seeds, units, bold, footnote.
    ``recipe``: :func:`recipe_sentence` of the study's ``--set`` overrides, said after the settings. ``name`` writes
    the dataset's class names (Markdown: ``escape_markdown``; a name's "$...$" rendered as math in the caption while
    the header escaped it, the security review)."""
    style = metric_style(table.metric)
    classes = [name(c) for c in table.classes if c != AVG]
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
    lines = [f"### {style.label}", "", *_markdown_lines([header, *body]), "", neutralise_markup(caption(table, recipe, escape_markdown))]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- LaTeX

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\u00b1": r"$\pm$",
    UNDEFINED_MARK: r"$^\dagger$", NOT_SIGNIFICANT_MARK: r"$^\ddagger$", FLAGGED_MARK: r"$^\S$", "\u2013": "--", "\u2265": r"$\geq$",
    # pdflatex's default font encoding sets these three as ¡, ¿ and an em dash (the tables review)
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "\u2264": r"$\leq$", "\u2260": r"$\neq$", "\u2248": r"$\approx$", "\u2192": r"$\rightarrow$", "\u2190": r"$\leftarrow$",
    "\u00d7": r"$\times$", "\u00b7": r"$\cdot$", "\u2014": "---", "\u2026": r"\dots{}", "\u00b0": r"\textdegree{}",
    "\u2018": "`", "\u2019": "'", "\u201c": "``", "\u201d": "''", "\u2212": r"$-$",
}

#: The characters beyond ASCII written as they are: those of Latin-1 and Latin Extended-A/-B that pdflatex typesets in
#: a document of the default preamble (``\\documentclass{article}``, OT1 fonts, its UTF-8 input), each found by compiling
#: it alone (TeX Live 2022's pdfTeX 1.40.24, 2026-12-07; the third diff review: half of Latin Extended stopped the build,
#: e.g. ę and Ħ, and so do « » Ð ð Þ þ). Every other character without an entry in ``_LATEX_ESCAPES`` is written as its
#: code point, ``[U+0119]``.
_LATEX_TYPESET = frozenset(
    "¡¢£¤¥¦§¨©ª¬®¯°±²³´µ¶·¸¹º¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖ×ØÙÚÛÜÝßàáâãäåæçèéêëìíîïñòóôõö÷øùúûüýÿ"
    "ĀāĂăĆćĈĉĊċČčĎďĒēĔĕĖėĚěĜĝĞğĠġĢģĤĥĨĩĪīĬĭİıĲĳĴĵĶķĹĺĻļĽľŁłŃńŅņŇňŌōŎŏŐőŒœŔŕ"
    "ŖŗŘřŚśŜŝŞşŠšŢţŤťŨũŪūŬŭŮůŰűŴŵŶŷŸŹźŻżŽžƒǄǅǆǇǈǉǊǋǌǍǎǏǐǑǒǓǔǢǣǦǧǨǩǰǴǵȘșȚțȲȳȷ")


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
    """``text`` as LaTeX source: special characters escaped, ± and † as math, – as ``--``, two hyphens as ``-{}-`` (TeX
    joins them into a dash: a caption's "--set" read "–set", the report review), Greek letters as math (with a ``_x``
    after one as its subscript: "τ_t = 0.1" -> ``$\\tau_{t}$ = 0.1``)."""
    out, at = [], 0
    for match in _GREEK.finditer(text):
        out += [_latex_chars(text[at:match.start()]), _latex_greek(match)]
        at = match.end()
    return _latex_quotes("".join(out + [_latex_chars(text[at:])]))


def _latex_chars(text: str) -> str:
    """``text`` (no Greek letters) with each character escaped (``_LATEX_ESCAPES``), a hyphen before another hyphen kept
    apart from it (``-{}``), and a character beyond ASCII that pdflatex does not typeset by default (not in
    ``_LATEX_TYPESET``) and has no entry written as its code point, ``[U+2295]`` (pdflatex stops at such a character:
    the tables review; writing every one so garbled names LaTeX sets, the diff reviews)."""
    return "".join("-{}" if char == "-" and text[i + 1:i + 2] == "-"
                   else _LATEX_ESCAPES.get(char, char if ord(char) < 0x80 or char in _LATEX_TYPESET else f"[U+{ord(char):04X}]")
                   for i, char in enumerate(text))


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


#: A terminal table wider than this many characters is printed with its average columns only (the file keeps all).
TERMINAL_TABLE_WIDTH = 160


def terminal_table(markdown: str, path: Path | str, width: int = TERMINAL_TABLE_WIDTH) -> str:
    """A Markdown table file's text for the terminal: as it is, or, when its table lines are wider than ``width``, each
    table of it (the study's, an external test set's) with the method column and the "...: Avg" columns only and a
    line naming ``path`` for the rest (a paper-size table's 17 columns made 460-character lines: the analysis scaling
    probe). Each table keeps its own heading, header and caption (an external test set's rows were run on under the
    study's header: the plots review)."""
    lines = markdown.rstrip("\n").splitlines()
    blocks: list[list[int]] = []
    for i, line in enumerate(lines):
        if line.startswith("| "):
            if blocks and blocks[-1][-1] == i - 1:
                blocks[-1].append(i)
            else:
                blocks.append([i])
    if not blocks or max(len(lines[i]) for block in blocks for i in block) <= width:
        return "\n".join(lines)
    out, position, shown = [], 0, None
    for block in blocks:
        out += lines[position:block[0]]
        table = [lines[i] for i in block]
        compact = _average_columns(table)
        if compact is None:
            out += table
        else:
            out += compact[0]
            shown = shown or compact[1]
        position = block[-1] + 1
    out += lines[position:]
    return "\n".join(out + ([f"(the {AVG} columns of {shown}; every class in {path})"] if shown else []))


#: a cell boundary of a Markdown table line: a pipe that :func:`escape_markdown` did not escape
_CELL_BOUNDARY = re.compile(r"(?<!\\)\|")


def _average_columns(table: list[str]) -> tuple[list[str], int] | None:
    """One Markdown table's lines with the method column and the "...: Avg" columns only, and how many columns it had
    besides the method's; None when it has no average column."""
    split = [[cell.strip() for cell in _CELL_BOUNDARY.split(line.strip())[1:-1]] for line in table]
    header = split[0]
    keep = [0] + [k for k, cell in enumerate(header) if k and cell.endswith(f": {AVG}")]
    if len(keep) == 1:
        return None
    grid = [[row[k] for k in keep] for row in split if len(row) > 1 and not set(row[1]) <= {"-", ":"}]
    return _markdown_lines(grid), len(header) - 1
