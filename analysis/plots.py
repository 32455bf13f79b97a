"""Comparison plots of a study, a pure function of its per-trial result files (PNG, matplotlib Agg).

Every figure function takes finished :class:`~medseg_platform.results.TrialRecord` s (or the long-form
table of :func:`analysis.tables.build_table`) and returns a :class:`matplotlib.figure.Figure`, or a
:class:`Skipped` with the reason when there is nothing to draw (an empty plot is never drawn):

* :func:`class_bars`: grouped bars, mean ± std over seeds, per method (bars) and class (x), one panel
  per label fraction;
* :func:`axis_curves`: metric vs a numeric ablation axis (``tags["axes"]``, e.g. a temperature), one
  line per variant, error bars over seeds;
* :func:`label_fraction_curves`: metric vs labelled patients, one line per method;
* :func:`training_curves`: training loss and val Dice vs training step (``curves.csv``,
  ``val_curve.csv``), one line per method (mean over seeds), one row of panels per label fraction;
* :func:`qualitative_overlays`: the same test slices (``qualitative.npz``) with the ground truth and
  each method's prediction;
* :func:`search_history`, :func:`param_importances`: an Optuna search's objective per trial with the
  running best, and the parameter importances of an in-memory Optuna study rebuilt from the results.

Colours: one per table row, from :func:`palette` (fixed colours for the methods of the platform, the
same in every study; other labels get stable colours by hash). Figures use constrained layout with the
legend below the axes, so it never covers data. :func:`write_plots` writes them all.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# No backend is chosen here: the figures below are matplotlib.figure.Figure objects that never touch pyplot, and
# Figure.savefig renders a PNG without one (`matplotlib.use("Agg")` at import switched a notebook's inline backend: the
# notebook probe).
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.tables import (AVG, build_table, column_label, column_order, distance_unit, metric_style,
                             partial_cells, row_label, row_order, seed_statistics, study_class_names, trial_class_values,
                             trial_seed)
from medseg_platform.io import atomic_path
from medseg_platform.recipes import FULL_SUPERVISION_LABEL, METHOD_LABELS, WITHOUT_CONTRAST_LABELS
from medseg_platform.results import CURVES_FILE, QUALITATIVE_FILE, VAL_CURVE_FILE, read_csv

#: Colour of each method id (``medseg_platform.recipes``), and of its row without the contrast term.
METHOD_COLOURS = {"supervised": "#7f7f7f", "mean_teacher": "#8c564b", "mona": "#1f77b4", "arco_sg": "#2ca02c",
                  "arco_sag": "#d62728", "action": "#9467bd"}
WITHOUT_CONTRAST_COLOURS = {"mona": "#17becf", "action": "#e377c2"}
_EXTRA = ["#ff7f0e", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
          "#31a354", "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7ba52", "#ad494a", "#de9ed6", "#6baed6"]
def fixed_colours(method_labels: Mapping[str, str]) -> dict[str, str]:
    """:data:`FIXED_COLOURS` for the methods ``method_labels`` (method id -> row label, in the recipes' order). A method
    without an entry in :data:`METHOD_COLOURS` (a new one) takes the next colour of :data:`_EXTRA`, so its variants
    still read as its family."""
    spare = iter(_EXTRA)
    return {**{label: METHOD_COLOURS.get(m) or next(spare) for m, label in method_labels.items()},
            **{WITHOUT_CONTRAST_LABELS[m]: colour for m, colour in WITHOUT_CONTRAST_COLOURS.items()},
            FULL_SUPERVISION_LABEL: "#252525"}


#: Fixed colours of the platform's rows by their printed label, so a method looks the same in every plot of
#: every study. Other row labels get colours from :data:`_EXTRA` (none of these), or shades of their method's
#: (:func:`palette`).
FIXED_COLOURS = fixed_colours(METHOD_LABELS)
#: Overlay colours of labels 1, 2, 3, ... (ACDC's RV, Myo, LV first), transparent background: Okabe and Ito's
#: colour-blind-safe set (orange, bluish green, blue, reddish purple, vermillion, sky blue, yellow; red next to green
#: was hard to tell apart), then matplotlib's tab20 (:func:`class_colour`).
CLASS_COLOURS = ("#E69F00", "#009E73", "#0072B2", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442")


def class_colour(label: int) -> str:
    """The overlay colour of foreground label ``label`` (1-based): :data:`CLASS_COLOURS`, then tab20's twenty; every
    label above 4 drew in one colour (a 6-class dataset's last two classes could not be told apart: the own-data
    review). Colours repeat only past 27 classes."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    extra = [to_hex(c) for c in colormaps["tab20"].colors]
    every = list(CLASS_COLOURS) + [c for c in extra if c.upper() not in CLASS_COLOURS]
    return every[(label - 1) % len(every)]
#: Axis names of the study scripts' ablation axes (``tags["axes"]`` keys), with the symbols their row labels use;
#: other keys print as they are.
AXIS_NAMES = {"objective_params.temperature": "pixel-contrast temperature \u03c4",
              "isd.tau_teacher": "ISD teacher temperature \u03c4_t", "isd.tau_student": "ISD student temperature \u03c4_s",
              "objective_params.num_anchors": "anchors per class (negatives scaled alike)",
              "objective_params.sampler_groups": "sampler groups"}
LEGEND_LABEL_WIDTH = 32  # characters per line of a legend label (analysis.plots._legend_below)
PARTIAL_HATCH = "////"  # a bar the tables call not comparable (analysis.tables.partial_cells)
SINGLE_SEED_NOTE = "no error bar: a single seed"
DPI = 120
LEGEND_MAX_ROWS = 4


def axis_name(axis: str) -> str:
    """How a plot names the ablation axis ``axis`` (:data:`AXIS_NAMES`, else the key itself)."""
    return AXIS_NAMES.get(axis, axis)


def _spread(std: float, n_seeds: int) -> float:
    """The error bar of a mean over ``n_seeds`` seeds: its std, none (NaN) for a single seed (a std of 0.0 would
    read as seeds that agree)."""
    return std if n_seeds >= 2 else math.nan


@dataclass(frozen=True)
class Skipped:
    """A plot that was not drawn, and why (printed by :func:`write_plots`)."""

    reason: str


# --------------------------------------------------------------------------------------------- colours


def palette(labels: Iterable[str], family: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per label, all distinct within one call (while the palette lasts).

    A known row ("MONA", "ACTION w/o L_anco", :data:`FIXED_COLOURS`) takes its fixed colour. A known row's label with
    a suffix after a space, comma or parenthesis ("ARCO-SG, τ = 0.5", "MONA (x=1)"), or a label that ``family`` maps
    to a known row (a row's ``tags["variant"]``: "SG, 9 groups" -> "ARCO-SG"), takes a shade of that row's colour,
    darker to lighter in the order given, so a method's variants read as one family in every study. Any other label
    takes a stable colour picked by hash from :data:`_EXTRA`, never another method's fixed colour unless :data:`_EXTRA`
    is used up.
    """
    labels = list(dict.fromkeys(labels))
    family = {label: base for label, base in (family or {}).items() if base in FIXED_COLOURS}
    colours = {label: FIXED_COLOURS[label] for label in labels if label in FIXED_COLOURS}
    used = set(colours.values())
    families: dict[str, list[str]] = {}
    for label in labels:
        base = (_known_prefix(label) or family.get(label)) if label not in colours else None
        if base is not None:
            families.setdefault(base, []).append(label)
    for base, members in families.items():
        for label, colour in zip(members, _shades(FIXED_COLOURS[base], len(members), skip_base=base in colours)):
            colours[label] = colour
            used.add(colour)
    reserved = [c for c in FIXED_COLOURS.values() if c not in used]
    for label in labels:
        if label in colours:
            continue
        start = int(hashlib.sha256(label.encode()).hexdigest(), 16) % len(_EXTRA)
        fixed = set(FIXED_COLOURS.values())  # a new method's colour comes from _EXTRA: keep it its own
        free = [c for c in _EXTRA[start:] + _EXTRA[:start] if c not in used and c not in fixed] + [c for c in reserved if c not in used]
        colours[label] = free[0] if free else _EXTRA[start]
        used.add(colours[label])
    return colours


def _known_prefix(label: str) -> str | None:
    """The longest fixed-colour row label that ``label`` starts with, followed by a space, comma or "(", else None."""
    known = [k for k in FIXED_COLOURS if label.startswith(k) and label[len(k):len(k) + 1] in (" ", ",", "(")]
    return max(known, key=len) if known else None


def _shades(colour: str, n: int, skip_base: bool) -> list[str]:
    """``n`` distinct shades of ``colour``, from darker to lighter; the colour itself is left out when ``skip_base``
    (its row is in the plot too)."""
    from matplotlib.colors import to_hex, to_rgb

    count = n + 1 if skip_base else n
    steps = [0.0] if count == 1 else list(np.linspace(-0.45, 0.55, count))
    if skip_base:
        steps.remove(min(steps, key=abs))
    rgb = np.asarray(to_rgb(colour))
    return [to_hex(rgb * (1 + t) if t < 0 else rgb + (1 - rgb) * t) for t in steps]


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _legend_below(fig: Figure, handles: Sequence, labels: Sequence[str]) -> None:
    """One legend for the whole figure, under the axes (never over data); a long label is broken into lines of about
    :data:`LEGEND_LABEL_WIDTH` characters (a 113-character row label pushed the legend past both edges of the figure
    and cut the other labels: the plots review)."""
    if not handles:
        return
    ncol = max(1, min(len(labels), math.ceil(len(labels) / LEGEND_MAX_ROWS), 4))
    fig.legend(handles, [_wrap(label, LEGEND_LABEL_WIDTH) for label in labels], loc="outside lower center", ncol=ncol,
               fontsize="small", frameon=False)


def metric_axis_label(metric: str, unit: str | None = None) -> str:
    """The y-axis label of a metric with its unit, e.g. "Dice (%)" or "HD95 (mm)"."""
    style = metric_style(metric)
    if style.scale != 1.0:
        return style.label
    return f"{style.label} ({unit or 'mm or voxels, as evaluated'})"


def trial_value(record, metric: str) -> float:
    """One trial's test value of ``metric`` averaged over classes ("Avg" of the tables), in display units."""
    return trial_class_values(record.per_case, metric)[AVG][0] * metric_style(metric).scale


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


# --------------------------------------------------------------------------------------------- bars


def class_bars(df: pd.DataFrame, metric: str, colours: Mapping[str, str], unit: str | None = None) -> Figure | Skipped:
    """Grouped bars of ``metric`` per class (x) and method (bars), mean ± std over seeds; a panel per label fraction.

    ``df`` is the long form of :func:`analysis.tables.build_table`.
    """
    every_cell = df[df["metric"] == metric]  # with the cells undefined in every case: they are marked "n/a"
    frame = every_cell[every_cell["mean"].notna()]
    if frame.empty:
        return Skipped(f"{metric} bars: no finished trial has a value")
    columns = list(dict.fromkeys(every_cell.sort_values("column_rank", kind="stable")["column"]))
    rows = list(dict.fromkeys(every_cell.sort_values("row_rank", kind="stable")["row"]))
    classes = list(dict.fromkeys(every_cell["class"]))
    width_per_panel = max(3.5, 0.22 * len(rows) * len(classes) + 1.0)
    fig = _new_figure(min(24.0, max(7.0, width_per_panel * len(columns) + 0.8)), 4.6)
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    bar = 0.8 / len(rows)
    handles = {}
    undefined_any = single_any = False
    # the tables' "not comparable" cells, never bold there (analysis.tables.partial_cells): an Avg over fewer classes in
    # some seed, and a distance from fewer seeds than the cell lists, which was drawn as a plain bar that could look
    # best (the plots review)
    partial = {(row, column, cls) for row, column, cls, _ in partial_cells(every_cell.to_dict("records"))}
    partial_classes = set()
    for ax, column in zip(axes, columns):
        cells = frame[frame["column"] == column].set_index(["row", "class"])
        # cells that exist but have no value: undefined in every case (e.g. HD95 of an empty prediction)
        every = every_cell[every_cell["column"] == column]
        undefined = {(r, c) for r, c, m in zip(every["row"], every["class"], every["mean"]) if pd.isna(m)}
        for i, row in enumerate(rows):
            means = [cells.loc[(row, c), "mean"] if (row, c) in cells.index else np.nan for c in classes]
            seeds = [int(cells.loc[(row, c), "n_seeds"]) if (row, c) in cells.index else 0 for c in classes]
            stds = [_spread(cells.loc[(row, c), "std"], n) if (row, c) in cells.index else np.nan for c, n in zip(classes, seeds)]
            single_any |= any(n == 1 and (row, column, c) not in partial for n, c in zip(seeds, classes))
            x = np.arange(len(classes)) - 0.4 + bar * (i + 0.5)
            # never below 0, where the axis starts (every metric is >= 0), as the curves' whiskers: a distance whose
            # seeds spread wider than its mean drew the axis into negative mm (the plots review)
            below = [min(s, m) if not (np.isnan(s) or np.isnan(m)) else s for s, m in zip(stds, means)]
            handles[row] = ax.bar(x, means, bar, yerr=[below, stds], capsize=2, color=colours[row], label=row,
                                  error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
            for k, c in enumerate(classes):
                if (row, column, c) in partial:
                    patch = handles[row].patches[k]
                    patch.set_hatch(PARTIAL_HATCH)
                    patch.set_edgecolor("#333333")
                    patch.set_alpha(0.6)
                    partial_classes.add(AVG if c == AVG else "class")
            for xi, c, mean in zip(x, classes, means):
                if (row, c) in undefined:
                    undefined_any = True
                    ax.text(xi, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize="x-small", color="#333333")
                elif mean == 0:  # a bar of height 0 looked like a missing cell (the workflow probe)
                    ax.text(xi, 0, "0", ha="center", va="bottom", fontsize="x-small", color=colours[row])
        ax.set_xticks(np.arange(len(classes)), classes)
        ax.set_xlim(-0.5, len(classes) - 0.5)  # the same in every panel, also where a class has no bar
        ax.set_xlabel("class")
        ax.set_title(column, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel(metric_axis_label(metric, unit))
    if metric_style(metric).scale == 100.0:
        axes[0].set_ylim(0, 100)
    else:
        _non_negative(axes[0])
    over = spread_words("search" in every_cell and bool((every_cell["search"] == "yes").any()))
    title = (f"Test {metric_style(metric).label.split(' ')[0]} per class and method (mean \u00b1 std over {over}"
             + (f"; {SINGLE_SEED_NOTE})" if single_any else ")"))
    if undefined_any:
        title += ("\nn/a: undefined in every test case (" + ("prediction and ground truth both empty)"
                                                             if metric_style(metric).higher_is_better
                                                             else "an empty prediction or ground truth)"))
    if partial_classes:
        why = [f"an {AVG} over fewer classes in some seed than the column's other values"] if AVG in partial_classes else []
        why += ["a class's value from fewer seeds than the cell lists (a seed that missed it has none)"] if "class" in partial_classes else []
        title += f"\nhatched: not comparable, {'; '.join(why)}"
    # each line wrapped to the figure, about 12 characters an inch at this size (the hatching's explanation ran 240 px
    # past both edges: the plots review)
    fig.suptitle("\n".join(_wrap(line, int(fig.get_figwidth() * 12)) for line in title.split("\n")), fontsize="medium")
    # plain swatches: a bar container's legend entry takes its first bar's style, so a method whose first class was
    # hatched read as not comparable as a whole (the plots review)
    _legend_below(fig, [Patch(facecolor=colours[r]) for r in rows if r in handles], [r for r in rows if r in handles])
    return fig


# --------------------------------------------------------------------------------------------- curves


def _wants_log_scale(xs: Sequence[float]) -> bool:
    """A log x axis for positive values spanning a decade or more, or crowded at the low end on a linear one
    (two ticks closer than 5% of the range would print over each other, e.g. temperatures 0.07 and 0.1 next to 1)."""
    if len(xs) < 2 or xs[0] <= 0:
        return False
    ratio = xs[-1] / xs[0]
    closest = min(b - a for a, b in zip(xs, xs[1:]))
    return ratio >= 20 or (ratio >= 5 and closest < 0.05 * (xs[-1] - xs[0]))


def is_search(records: Sequence) -> bool:
    """Whether ``records`` are samples of an Optuna search (``tags["search"]``): their spread is the samples'
    hyper-parameters, not seed noise, and the plots say so."""
    return any((r.result.get("tags") or {}).get("search") for r in records)


def spread_words(search: bool) -> str:
    """What a plot's mean and std are taken over: "seeds", or "search samples" for a search's trials."""
    return "search samples" if search else "seeds"


def _non_negative(ax) -> None:
    """Every metric here is >= 0 (Dice, Jaccard in %, distances): start the y axis at 0, never below."""
    _, top = ax.get_ylim()
    ax.set_ylim(0.0, top if top > 0 else 1.0)


def numeric_axes(records: Sequence) -> list[str]:
    """The ablation axes (``tags["axes"]`` keys, label fraction excluded) with at least two numeric values."""
    numbers, texts = _axis_values(records)
    return sorted(k for k, v in numbers.items() if k not in texts and len(v) >= 2)


def single_value_axes(records: Sequence) -> dict[str, float]:
    """The numeric ablation axes whose trials all sit at one value (e.g. after ``--rows`` kept one row per axis): no
    curve, and the plot's skip is said."""
    numbers, texts = _axis_values(records)
    return {k: next(iter(v)) for k, v in sorted(numbers.items()) if k not in texts and len(v) == 1}


def text_axes(records: Sequence) -> list[str]:
    """The ablation axes (label fraction excluded) with a value that is not a number: no curve is drawn over them."""
    return sorted(_axis_values(records)[1])


def _axis_values(records: Sequence) -> tuple[dict[str, set[float]], set[str]]:
    """Per ablation axis (``tags["axes"]``, ``data.labelled`` left out): its numeric values; and the axes with text."""
    numbers: dict[str, set[float]] = {}
    texts = set()
    for record in records:
        for key, value in ((record.result.get("tags") or {}).get("axes") or {}).items():
            if key == "data.labelled":
                continue
            number = _as_float(value)
            if number is None:
                texts.add(key)
            else:
                numbers.setdefault(key, set()).add(number)
    return numbers, texts


def _errorbar_lines(ax, series: Mapping[str, Mapping[float, list[float]]], colours: Mapping[str, str],
                    styles: Mapping[str, tuple[str, str]]) -> dict:
    """One line with error bars (mean ± std over the values at each x; none for a single value) per series; returns
    the handles."""
    handles = {}
    for label, points in series.items():
        xs = sorted(points)
        stats = [seed_statistics(points[x]) for x in xs]
        spreads = [_spread(s, n) for _, s, n in stats]
        below = [min(s, m) for (m, _, _), s in zip(stats, spreads)]  # never below 0, where the axis starts (metrics >= 0)
        colour, linestyle = styles.get(label, (colours.get(label, "#333333"), "-"))
        handles[label] = ax.errorbar(xs, [m for m, _, _ in stats], yerr=[below, spreads], color=colour,
                                     linestyle=linestyle, marker="o", markersize=4, capsize=3, label=label,
                                     clip_on=False)  # a point at 0 (the axis starts there) is drawn whole
    return handles


def _series_styles(series_variants: Mapping[str, str], colours: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """(colour, linestyle) per series: the colour of its variant; the line style of what follows the variant's
    name in the series label (e.g. " (num_anchors=64)"), the same style for the same suffix in every variant."""
    linestyles = ["-", "--", ":", "-."]
    suffixes = {label: label[len(variant):] if label.startswith(variant) else label for label, variant in series_variants.items()}
    style_of = {suffix: linestyles[i % len(linestyles)] for i, suffix in enumerate(sorted(set(suffixes.values()), key=natural_key))}
    return {label: (colours.get(variant, colours.get(label, "#333333")), style_of[suffixes[label]])
            for label, variant in series_variants.items()}


def natural_key(text: str) -> list:
    """Sort key with numbers compared as numbers ("x=64" before "x=128")."""
    return [(0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]


def axis_curves(records: Sequence, axis: str, metric: str, colours: Mapping[str, str], unit: str | None = None) -> Figure | Skipped:
    """``metric`` (class average) vs the numeric ablation axis ``axis``: a line per variant (and label
    fraction, and value of the other axes), mean ± std over seeds."""
    series: dict[str, dict[float, list[float]]] = {}
    variants: dict[str, str] = {}
    multi_column = len({column_label(r) for r in records}) > 1
    on_axis = [(r, (r.result.get("tags") or {})) for r in records]
    on_axis = [(r, tags) for r, tags in on_axis if _as_float((tags.get("axes") or {}).get(axis)) is not None]
    # a variant's line is split by another axis only where every point of that variant has it (a shared
    # reference row that also sits on other axes stays a point of the same line)
    common: dict[str, set] = {}
    for record, tags in on_axis:
        variant = str(tags.get("variant") or row_label(record))
        keys = set(tags.get("axes") or {}) - {axis, "data.labelled"}
        common[variant] = common[variant] & keys if variant in common else keys
    for record, tags in on_axis:
        axes = tags.get("axes") or {}
        x = _as_float(axes.get(axis))
        variant = str(tags.get("variant") or row_label(record))
        others = [f"{k.split('.')[-1]}={v}" for k, v in sorted(axes.items()) if k in common[variant]]
        label = variant + (f" ({', '.join(others)})" if others else "") + (f", {column_label(record)}" if multi_column else "")
        variants[label] = variant
        series.setdefault(label, {}).setdefault(x, []).append(trial_value(record, metric))
    if sum(len(points) for points in series.values()) < 2:
        return Skipped(f"{metric} vs {axis}: fewer than two values of the axis have results")
    rank = {row: i for i, row in enumerate(row_order([r for r, _ in on_axis]))}
    first: dict[str, int] = {}  # a variant's place: its first row in the table's order
    for record, tags in on_axis:
        variant = str(tags.get("variant") or row_label(record))
        first[variant] = min(first.get(variant, len(rank)), rank.get(row_label(record), len(rank)))
    series = dict(sorted(series.items(), key=lambda item: (first[variants[item[0]]], natural_key(item[0]))))
    xs = sorted({x for points in series.values() for x in points})
    return _metric_curves(series, colours, _series_styles(variants, colours), xs, [f"{x:g}" for x in xs], axis_name(axis),
                          metric, unit, axis_name(axis))


def label_fraction_curves(records: Sequence, metric: str, colours: Mapping[str, str], unit: str | None = None) -> Figure | Skipped:
    """``metric`` (class average) vs the number of labelled patients: a line per table row, mean ± std over seeds."""
    series: dict[str, dict[float, list[float]]] = {}
    percent: dict[float, float] = {}
    for record in records:
        labelled = record.result.get("labelled") or {}
        patients = _as_float(labelled.get("num_patients"))
        if patients is None:
            continue
        percent[patients] = _as_float(labelled.get("percent_patients")) or math.nan
        series.setdefault(row_label(record), {}).setdefault(patients, []).append(trial_value(record, metric))
    if len(percent) < 2:
        return Skipped(f"{metric} vs label fraction: fewer than two label fractions have results")
    order = {label: i for i, label in enumerate(row_order(records))}
    series = dict(sorted(series.items(), key=lambda item: order.get(item[0], len(order))))
    xs = sorted(percent)
    return _metric_curves(series, colours, {}, xs, [f"{x:g}\n({percent[x]:.1f}%)" for x in xs],
                          "labelled patients (percent of the training patients)", metric, unit, "label fraction")


def _metric_curves(series: Mapping[str, Mapping[float, list[float]]], colours: Mapping[str, str],
                   styles: Mapping[str, tuple[str, str]], xs: Sequence[float], tick_labels: Sequence[str], xlabel: str,
                   metric: str, unit: str | None, versus: str) -> Figure:
    """The figure of :func:`axis_curves` / :func:`label_fraction_curves`: a line with error bars per series."""
    fig = _new_figure(7.0, 4.6)
    ax = fig.subplots()
    handles = _errorbar_lines(ax, series, colours, styles)
    single = any(seed_statistics(values)[2] == 1 for points in series.values() for values in points.values())
    if _wants_log_scale(xs):
        ax.set_xscale("log")
    ax.set_xticks(xs, tick_labels, rotation=45 if len(xs) > 6 else 0)
    ax.minorticks_off()
    ax.set_xlabel(xlabel + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(metric_axis_label(metric, unit) + ", class average")
    _non_negative(ax)
    if metric_style(metric).scale == 100.0:  # percent: values of 0 to 0.05 points must not look like differences
        ax.set_ylim(0.0, max(ax.get_ylim()[1], 10.0))
    ax.grid(alpha=0.3)
    ax.set_title(f"Test {metric_style(metric).label.split(' ')[0]} vs {versus} (mean \u00b1 std over seeds"
                 + (f";\n{SINGLE_SEED_NOTE})" if single else ")"))
    _legend_below(fig, list(handles.values()), list(handles))
    return fig


def _read_curve(path: Path, field: str) -> dict[float, float]:
    """step -> value of ``field`` from a curve CSV (empty when missing or unreadable)."""
    try:
        rows = read_csv(path)
    except (OSError, ValueError):
        return {}
    out = {}
    for row in rows:
        step, value = _as_float(row.get("step")), _as_float(row.get(field))
        if step is not None and value is not None:
            out[step] = value
    return out


def _seed_mean_curve(curves: Sequence[Mapping[float, float]]) -> tuple[list[float], list[float]]:
    """Steps and the mean over the seeds' curves at each step (steps any seed has)."""
    steps = sorted({s for c in curves for s in c})
    return steps, [float(np.mean([c[s] for c in curves if s in c])) for s in steps]


def training_curves(records: Sequence, colours: Mapping[str, str]) -> Figure | Skipped:
    """Training loss (``curves.csv``) and val Dice (``val_curve.csv``) vs training step, mean over seeds;
    one line per method, one row of two panels per label fraction."""
    by_cell: dict[tuple[str, str], list] = {}
    for record in records:
        by_cell.setdefault((column_label(record), row_label(record)), []).append(record)
    loaded = {key: ([_read_curve(Path(r.path) / CURVES_FILE, "loss") for r in rs],
                    [_read_curve(Path(r.path) / VAL_CURVE_FILE, "val_dice") for r in rs]) for key, rs in by_cell.items()}
    columns = [c for c in column_order(records) if any(any(l) or any(v) for (col, _), (l, v) in loaded.items() if col == c)]
    if not columns:
        return Skipped("training curves: no trial has curves.csv or val_curve.csv rows")
    rows = row_order(records)
    fig = _new_figure(11.0, 3.2 * len(columns) + 0.9)
    grid = fig.subplots(len(columns), 2, squeeze=False, sharex=True)
    handles = {}
    for (loss_ax, val_ax), column in zip(grid, columns):
        for row in rows:
            if (column, row) not in loaded:
                continue
            losses, vals = loaded[(column, row)]
            if any(losses):
                steps, mean = _seed_mean_curve([c for c in losses if c])
                handles[row] = loss_ax.plot(steps, mean, color=colours[row], linewidth=1.3, label=row)[0]
            if any(vals):
                steps, mean = _seed_mean_curve([c for c in vals if c])
                handles[row] = val_ax.plot(steps, [100.0 * v for v in mean], color=colours[row], marker="o",
                                           markersize=3, linewidth=1.3, label=row)[0]
        loss_ax.set_ylabel("training loss (each method's objective)")
        val_ax.set_ylabel("val Dice (%)")
        _non_negative(val_ax)  # an all-zero curve (a model that never learnt) would otherwise get negative ticks
        for ax in (loss_ax, val_ax):
            ax.set_title(f"{column}", fontsize="medium")
            ax.grid(alpha=0.3)
    for ax in grid[-1]:
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Training loss and validation Dice (mean over {spread_words(is_search(records))})")
    ordered = [r for r in rows if r in handles]
    # plain lines: the loss panels have no markers, the val panels do (the last-drawn handle's style was shown)
    _legend_below(fig, [Line2D([], [], color=colours[r], linewidth=1.3) for r in ordered], ordered)
    return fig


# --------------------------------------------------------------------------------------------- overlays


def load_qualitative(path: Path) -> dict[str, Any] | None:
    """``qualitative.npz`` as ``{"cases", "slices", "image": [...], "label": [...], "prediction": [...]}``;
    None when missing or unreadable (the layout is documented in :mod:`medseg_platform.results`)."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as data:
            cases = [str(c) for c in data["cases"]]
            return {"cases": cases, "slices": [int(s) for s in data["slices"]],
                    **{k: [np.asarray(data[f"{k}_{i}"]) for i in range(len(cases))] for k in ("image", "label", "prediction")}}
    except (OSError, KeyError, ValueError):
        return None


def crop_box(label: np.ndarray, margin: float = 0.5, min_size: int = 24) -> tuple[slice, slice]:
    """A square-ish window (rows, cols) around the foreground of ``label`` (H, W), grown by ``margin`` of its
    size on each side and at least ``min_size`` pixels; the whole slice when there is no foreground."""
    rows, cols = np.nonzero(np.asarray(label) > 0)
    h, w = label.shape
    if rows.size == 0:
        return slice(0, h), slice(0, w)
    size = max(int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1)
    half = max(min_size, int(round(size * (1 + 2 * margin)))) // 2
    centre = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2)
    return (slice(max(0, centre[0] - half), min(h, centre[0] + half)),
            slice(max(0, centre[1] - half), min(w, centre[1] + half)))


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None) -> None:
    ax.imshow(np.asarray(image, dtype=np.float32), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if labels is not None:
        colours = ListedColormap(["#00000000"] + [class_colour(c) for c in range(1, 1 + max(3, int(labels.max(initial=0))))])
        ax.imshow(np.asarray(labels), cmap=colours, vmin=-0.5, vmax=colours.N - 0.5, alpha=0.55, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _qualitative_rank(record) -> tuple:
    """Which trial of a row a qualitative figure shows, smallest first: the lowest seed, then the best val Dice (the
    samples of a search share one seed: the best one, as ``best_config.json`` picks, not the first folder)."""
    best = _as_float(record.result.get("best_val_dice"))
    return natural_key(str(trial_seed(record))), -(best if best is not None else -math.inf), record.path.name


def qualitative_overlays(records: Sequence, column: str, class_names: Mapping[int, str] | None = None) -> Figure | Skipped:
    """For the label fraction ``column``: the same test slices (rows) as image, ground truth and each
    method's prediction (columns; the trial of the smallest seed, of a search the sample of the best val Dice), classes as coloured overlays named by
    ``class_names`` (label -> name; default: the records' own, :func:`analysis.tables.study_class_names`)."""
    if class_names is None:
        class_names = study_class_names(records)
    by_row: dict[str, list] = {}
    for record in sorted((r for r in records if column_label(r) == column), key=_qualitative_rank):
        by_row.setdefault(row_label(record), []).append(record)
    # each row's trials in rank order, read until one holds the reference's slices (the first row's first file that
    # loads); a row's files are read only as far as that (every file used to be read and decompressed to draw one per
    # row: the analysis scaling probe), and a row none of whose files holds them is named (it was dropped silently
    # while another seed's file would have done: the plots review)
    chosen: dict[str, tuple[Any, dict]] = {}
    reference, omitted = None, []
    for row in row_order([trials[0] for trials in by_row.values()]):
        loaded = False
        for record in by_row.get(row, ()):
            data = load_qualitative(Path(record.path) / QUALITATIVE_FILE)
            if data is None or not data["cases"]:
                continue
            loaded, reference = True, reference if reference is not None else data
            if data["cases"] == reference["cases"]:
                chosen[row] = (record, data)
                break
        if loaded and row not in chosen:
            omitted.append(row)
    if not chosen:
        return Skipped(f"qualitative overlays ({column}): no trial has qualitative.npz")
    methods = list(chosen)
    cases = reference["cases"]
    ncols = 2 + len(methods)
    width = min(26.0, 1.9 * ncols + 0.6)
    fig = _new_figure(width, 1.9 * len(cases) + 1.3)
    grid = fig.subplots(len(cases), ncols, squeeze=False)
    titles = ["image", "ground truth"] + methods
    for i, case in enumerate(cases):  # every panel of a row shows the same window around the ground truth
        window = crop_box(reference["label"][i])
        image = reference["image"][i][window]
        _overlay(grid[i][0], image, None)
        _overlay(grid[i][1], image, reference["label"][i][window])
        for j, method in enumerate(methods):
            _overlay(grid[i][2 + j], image, chosen[method][1]["prediction"][i][window])
        grid[i][0].set_ylabel(f"{case}\nslice {reference['slices'][i]}", fontsize="x-small")
    for j, title in enumerate(titles):
        grid[0][j].set_title(_wrap(title, 14), fontsize="small")
    patches = [Patch(color=class_colour(c), alpha=0.7, label=class_names[c]) for c in sorted(class_names)]
    fig.legend(handles=patches, loc="outside lower center", ncol=len(patches), fontsize="small", frameon=False)
    which = "the search sample of the best val Dice" if is_search(records) else "trial of the lowest seed"
    title = (f"Test predictions, {column} (middle slice of the first test cases, cropped around the ground truth; "
             f"{which} with these slices)" + (f"; left out: {', '.join(omitted)} (no trial with these slices)" if omitted else ""))
    fig.suptitle(_wrap(title, int(width * 10)), fontsize="medium")  # about 10 characters an inch: it fits a narrow figure
    return fig


def _wrap(text: str, width: int) -> str:
    """``text`` broken at spaces into lines of about ``width`` characters (for narrow panel titles); never inside
    "τ = 0.1" (the spaces around "=" are kept as no-break spaces)."""
    text = text.replace(" = ", "\u00a0=\u00a0")
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


# --------------------------------------------------------------------------------------------- search


def _finished_at(record) -> float:
    value = _as_float(record.result.get("finished_at"))
    if value is not None:
        return value
    try:
        return (Path(record.path) / "result.json").stat().st_mtime
    except OSError:
        return math.inf


def search_records(records: Sequence) -> list:
    """The trials of an Optuna search (``tags["search"]`` set and a finite ``best_val_dice``), in the
    order they finished (``finished_at``, else the result file's time)."""
    chosen = [r for r in records if (r.result.get("tags") or {}).get("search")
              and _as_float(r.result.get("best_val_dice")) is not None]
    return sorted(chosen, key=lambda r: (_finished_at(r), r.path.name))


def search_history(records: Sequence, samples: Sequence | None = None) -> Figure | Skipped:
    """The search objective (best val Dice of each trial) per trial and the running best.

    ``samples``: the search's history (:func:`analysis.search.load_samples`, proposal order, every status);
    with it, trials that ASHA stopped early are drawn too (their best val Dice before they were stopped).
    Without it (no Tune experiment on disk), the finished trials in the order they finished.
    """
    if samples is not None:
        scored = [s for s in samples if s.best_val_dice is not None]
        if not scored:
            return Skipped("search history: no sample reported a best_val_dice")
        x = np.array([s.order for s in scored])
        values = [100.0 * float(s.best_val_dice) for s in scored]
        stopped = np.array([s.status != "completed" for s in scored])
        xlabel = "trial (in order proposed by Optuna)"
    else:
        trials = search_records(records)
        if not trials:
            return Skipped("search history: no searched trial (tags['search']) with a best_val_dice")
        values = [100.0 * float(r.result["best_val_dice"]) for r in trials]
        x = np.arange(1, len(values) + 1)
        stopped = np.zeros(len(values), dtype=bool)
        xlabel = "trial (in order of completion)"
    # the best so far among completed trials only: a stopped or errored one is never the search's best configuration
    running = np.maximum.accumulate(np.where(stopped, -np.inf, values))
    running = np.where(np.isfinite(running), running, np.nan)
    fig = _new_figure(7.0, 4.4)
    ax = fig.subplots()
    ys = np.array(values)
    handles = [ax.scatter(x[~stopped], ys[~stopped], color="#1f77b4", zorder=3)]
    labels = ["trial (completed)" if stopped.any() else "trial"]
    if stopped.any():
        handles.append(ax.scatter(x[stopped], ys[stopped], facecolors="none", edgecolors="#7f7f7f", zorder=3))
        # the statuses drawn hollow, as search_history.csv names them (unfinished and result-less samples are not
        # "stopped early or errored": the plots review)
        hollow = sorted({s.status for s, hidden in zip(scored, stopped) if hidden}) if samples is not None else []
        labels.append("trial " + (" / ".join(hollow) if hollow else "not completed"))
    handles.append(ax.step(x, running, where="post", color="#d62728")[0])
    labels.append("best so far (completed trials)" if stopped.any() else "best so far")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best val Dice (%)")
    _non_negative(ax)
    ax.set_xticks(x if len(x) <= 20 else np.linspace(x.min(), x.max(), 10, dtype=int))
    ax.grid(alpha=0.3)
    ax.set_title("Optimisation history")
    _legend_below(fig, handles, labels)
    return fig


def _distribution(values: Sequence[Any], domain: str | None = None):
    """An Optuna distribution covering ``values`` (None when a parameter has a single value). ``domain``: the search
    space's own description (``study.json``'s ``search_space``, :func:`medseg_platform.study.spec.describe_domain`),
    whose bounds and log scale are used where it has them and covers the values; without it the scale is guessed (log
    when the values span 100x), which took weights searched log-uniform over [0.1, 10] whose samples spanned 58x as
    linear (the search review)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distinct = sorted(set(values), key=str)
    if len(distinct) < 2:
        return None
    numbers = all(_as_float(v) is not None and not isinstance(v, str) for v in distinct)
    low, high = (min(distinct), max(distinct)) if numbers else (None, None)
    log = numbers and low > 0 and high / low >= 100
    bounds = re.search(r"\blower=(\S+) upper=(\S+)", domain or "")
    if numbers and bounds and _as_float(bounds[1]) is not None and _as_float(bounds[2]) is not None:
        lower, upper = _as_float(bounds[1]), _as_float(bounds[2])
        if lower <= low and high <= upper:
            low, high, log = lower, upper, "LogUniform" in domain
    if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
        return IntDistribution(int(low), int(high), log=log)
    if numbers:
        return FloatDistribution(float(low), float(high), log=log)
    return CategoricalDistribution([str(v) for v in distinct])


def param_importances(records: Sequence, search_space: Mapping[str, str] | None = None) -> Figure | Skipped:
    """Parameter importances of the searched parameters: PED-ANOVA (Optuna 5's default evaluator, named
    explicitly so the axis label stays true; fANOVA would need scikit-learn) over an in-memory Optuna study
    rebuilt with ``optuna.trial.create_trial`` (distributions from ``search_space``, ``study.json``'s description of
    the domains, where it has them; else inferred from the values)."""
    trials = search_records(records)
    if len(trials) < 2:
        return Skipped(f"parameter importances: {len(trials)} completed search trial(s), need at least 2")
    import optuna

    scores = {float(r.result["best_val_dice"]) for r in trials}
    if len(scores) == 1:  # Optuna would warn and share the importance out equally: no information to plot
        return Skipped(f"parameter importances: all {len(trials)} completed search trials scored val Dice {scores.pop():.4f}")
    params = [dict(r.result["tags"]["search"]) for r in trials]
    names = sorted({k for p in params for k in p})
    distributions = {name: _distribution([p[name] for p in params if name in p], (search_space or {}).get(name)) for name in names}
    distributions = {k: d for k, d in distributions.items() if d is not None}
    if not distributions:
        return Skipped("parameter importances: every searched parameter has a single value")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    try:
        for p, record in zip(params, trials):
            values = {k: (str(v) if type(distributions[k]).__name__ == "CategoricalDistribution" else v)
                      for k, v in p.items() if k in distributions}
            if values.keys() != distributions.keys():
                continue
            study.add_trial(optuna.trial.create_trial(params=values, distributions=distributions,
                                                      value=float(record.result["best_val_dice"])))
        importances = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as exc:  # noqa: BLE001 - Optuna's evaluators raise many kinds; the plot is optional
        return Skipped(f"parameter importances: Optuna could not compute them ({type(exc).__name__}: {exc})")
    if not importances:
        return Skipped("parameter importances: Optuna returned none")
    names = list(importances)[::-1]
    fig = _new_figure(7.0, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_ylabel("searched parameter")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Parameter importances ({len(study.trials)} completed trials)")
    return fig


# --------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class PlotFile:
    """A written plot: its path and a one-line description for the report."""

    path: Path
    description: str


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)
    return path


#: the plots :func:`write_plots` draws under fixed names, and the prefixes of those named by an axis or a column
PLOT_NAMES = ("bars_dice.png", "bars_hd95.png", "dice_vs_label_fraction.png", "training_curves.png",
              "search_history.png", "param_importances.png")
PLOT_PREFIXES = ("dice_vs_", "qualitative_")


def is_plot_name(name: str) -> bool:
    """Whether ``name`` is a file name :func:`write_plots` can write (so an earlier report's copy may be removed)."""
    return name in PLOT_NAMES or (name.endswith(".png") and name.startswith(PLOT_PREFIXES))


def write_plots(records: Sequence, out_dir: str | Path, df: pd.DataFrame | None = None,
                log=print, search_samples: Sequence | None = None,
                class_names: Mapping[int, str] | None = None,
                search_space: Mapping[str, str] | None = None) -> tuple[list[PlotFile], list[str]]:
    """Draw every plot that has data into ``out_dir``; returns the written plots and the skip reasons.

    ``df``: the long-form table (built from ``records`` when not given). ``search_samples``: a search's
    history (see :func:`search_history`). ``class_names``: label -> name (default: the records' own).
    ``search_space``: a search's domains as ``study.json`` describes them (for :func:`param_importances`).
    Skip reasons are also passed to ``log``.
    """
    out_dir = Path(out_dir)
    records = list(records)
    if class_names is None:
        class_names = study_class_names(records)
    if df is None:
        df = build_table(records, class_names=class_names)
    variants = {row_label(r): str((r.result.get("tags") or {}).get("variant") or "") for r in records}
    colours = palette([*row_order(records), *variants.values()], family=variants)  # e.g. "SG, 9 groups, ..." as ARCO-SG
    unit = distance_unit(records)
    over = spread_words(is_search(records))
    columns = column_order(records)
    # "one panel per label fraction" under a figure of one panel (a report review): name the fraction instead
    panels = "one panel per label fraction" if len(columns) > 1 else (columns[0] if columns else "")
    jobs: list[tuple[str, str, Any]] = [
        ("bars_dice.png", f"Test Dice per class and method (mean \u00b1 std over {over}), {panels}",
         lambda: class_bars(df, "dice", colours)),
        ("bars_hd95.png", f"Test HD95 per class and method (mean \u00b1 std over {over}), {panels}",
         lambda: class_bars(df, "hd95", colours, unit)),
        ("dice_vs_label_fraction.png", "Test Dice (class average) vs labelled patients, one line per method",
         lambda: label_fraction_curves(records, "dice", colours)),
    ]
    for axis in numeric_axes(records):
        jobs.append((f"dice_vs_{slug(axis)}.png", f"Test Dice (class average) vs {axis_name(axis)}, one line per variant",
                     lambda axis=axis: axis_curves(records, axis, "dice", colours)))
    for axis, value in single_value_axes(records).items():
        jobs.append((f"dice_vs_{slug(axis)}.png", "", lambda axis=axis, value=value: Skipped(
            f"dice vs {axis}: every finished trial has {axis_name(axis)} {value:g}, so no curve (one value of the axis "
            "among the finished trials)")))
    for axis in text_axes(records):
        jobs.append((f"dice_vs_{slug(axis)}.png", "", lambda axis=axis: Skipped(
            f"dice vs {axis}: its values are not all numbers, so no curve (the table's rows compare them)")))
    jobs.append(("training_curves.png", f"Training loss and val Dice vs training step (mean over {over})",
                 lambda: training_curves(records, colours)))
    for column in columns:
        # as _qualitative_rank picks, among the trials with qualitative.npz
        shown = "its best sample by val Dice" if is_search(records) else "its lowest seed's with prediction slices"
        jobs.append((f"qualitative_{slug(column)}.png", f"Test slices with each method's prediction (one trial per method: "
                     f"{shown}), {column}",
                     lambda column=column: qualitative_overlays(records, column, class_names)))
    jobs += [("search_history.png", "Optuna search: best val Dice per trial and the running best", lambda: search_history(records, search_samples)),
             ("param_importances.png", "Optuna search: parameter importances", lambda: param_importances(records, search_space))]
    written, skipped = [], []
    # labels are text, never math: a class name or row label with '$' (a dataset's manifest) failed the whole report in
    # matplotlib's math parser (the security review)
    with matplotlib.rc_context({"text.parse_math": False}):
        for name, description, draw in jobs:
            fig = draw()
            if isinstance(fig, Skipped):
                skipped.append(fig.reason)
                continue
            written.append(PlotFile(save_figure(fig, out_dir / name), description))
    quiet = ("search history", "parameter importances: 0 ")  # not a search: nothing worth saying
    for reason in skipped:
        if not reason.startswith(quiet):
            log(f"plot skipped: {reason}")
    return written, skipped
