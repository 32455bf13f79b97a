"""A study's table files: ``table.csv`` (the long form, :func:`analysis.tables.build_table`), and ``table_<metric>.md``
and ``.tex`` (:mod:`analysis.table_render`), written atomically (:func:`write_tables`), read back
(:func:`read_table_csv`) and summed up in the terminal (:func:`print_summary`).

External test sets (a study's ``--test-root``): trials scored on another dataset's test split keep those rows in
``per_case_test_root.csv`` (:func:`medseg_platform.results.read_test_root`). Each such dataset gets its own block
after the main table in ``table_<metric>.md`` / ``.tex``, built by the same code from those rows
(:func:`external_test_sets`, :func:`external_blocks`); trials of the study without that evaluation are counted
there as missing. ``table.csv`` holds the study's own test set only; ``table_external.csv`` the external sets' long
form, the same columns after a first one, ``test_root`` (:func:`external_long_form`), written only when a trial has
such an evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from analysis.markdown import escape_markdown
from analysis.table_render import escape_latex, terminal_table, to_latex, to_markdown
from analysis.tables import (DEFAULT_METRICS, LONG_COLUMNS, unique_records, build_table, configured_distance_unit,
                             metric_style)
from medseg_platform.io import write_text_atomic
from medseg_platform.results import TrialRecord, read_test_root


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
    """``table.csv`` (or ``table_external.csv``) back as the long form: "nan" is a missing number in the number columns
    and stays text elsewhere (the empty-mask policy named "nan"; ``pandas.read_csv``'s defaults made it a missing value)."""
    return pd.read_csv(path, keep_default_na=False, na_values={name: ["nan", ""] for name in NUMBER_COLUMNS},
                       dtype={name: str for name in (*LONG_COLUMNS, "test_root") if name not in NUMBER_COLUMNS})


def external_test_sets(records: Iterable[TrialRecord]) -> dict[str, list[TrialRecord]]:
    """Per external test root (sorted), the trials scored on it, each as a :class:`TrialRecord` whose ``per_case``
    holds that set's rows (so the table code builds the block unchanged); {} when no trial has one."""
    out: dict[str, list[TrialRecord]] = {}
    for record in unique_records(records):
        found = read_test_root(record)
        if found is not None:
            out.setdefault(found[0], []).append(TrialRecord(record.path, record.result, found[1]))
    return dict(sorted(out.items()))


def external_blocks(records: Sequence[TrialRecord], metric: str, suffix: str,
                    class_names: Mapping[int, str] | None = None, recipe: str = "",
                    sets: Mapping[str, list[TrialRecord]] | None = None) -> str:
    """The external test set blocks of ``table_<metric>.<suffix>`` (``md`` or ``tex``), one per root; "" when none.

    Each is the metric's table of that set's per-case rows, titled with the root, plus a line counting the study's
    trials that have no evaluation on it (finished before ``--test-root`` was given and not scored since, e.g. their
    checkpoint is gone; rerunning the study command with the flag scores those that still have a checkpoint).
    ``recipe``: as :func:`caption`'s; ``sets``: :func:`external_test_sets` of ``records`` when the caller has it (each
    trial's ``per_case_test_root.csv`` is then read once for every file).
    """
    records = unique_records(records)
    style = metric_style(metric)
    text = ""
    for index, (root, scored) in enumerate((external_test_sets(records) if sets is None else sets).items(), 1):
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
            text += "\n" + (_inside_float(block, note) if note else block)
    return text


def _inside_float(latex: str, note: str) -> str:
    """``latex`` (one table float) with ``note`` printed in bold small type at the float's end: a LaTeX comment is lost
    from a pasted table (the report review; the external test set's note was still one, the tables review)."""
    head, end, tail = latex.rpartition("\\end{table}")
    return f"{head}\\par\\smallskip{{\\footnotesize\\textbf{{{escape_latex(note)}}}}}\n{end}{tail}"


def external_long_form(records: Sequence[TrialRecord], metrics: Sequence[str] = DEFAULT_METRICS,
                       class_names: Mapping[int, str] | None = None,
                       sets: Mapping[str, list[TrialRecord]] | None = None) -> pd.DataFrame | None:
    """The long form of every external test set (:func:`analysis.tables.build_table` of its rows, as the blocks of
    :func:`external_blocks`), one after the other with the root in a first column ``test_root``; None when no trial
    was scored on one. A researcher comparing datasets found these numbers only in the Markdown and LaTeX blocks.
    ``sets``: as :func:`external_blocks`'."""
    frames = []
    for root, scored in (external_test_sets(unique_records(records)) if sets is None else sets).items():
        df = build_table(scored, metrics, class_names, configured_distance_unit)
        df.insert(0, "test_root", root)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None


TABLE_CSV = "table.csv"
#: :func:`write_tables`' long form of the external test sets: only where a trial has been scored on one.
EXTERNAL_TABLE_CSV = "table_external.csv"


def table_file_names(metrics: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """The files :func:`write_tables` writes, in its order: ``table_<metric>.md`` and ``.tex`` per metric, then the CSV
    (and, where a trial was scored on an external test set, :data:`EXTERNAL_TABLE_CSV`, not listed here)."""
    return [f"table_{metric}.{suffix}" for metric in metrics for suffix in ("md", "tex")] + [TABLE_CSV]


def write_tables(records: Iterable[TrialRecord], out_dir: str | Path,
                 metrics: Sequence[str] = DEFAULT_METRICS,
                 class_names: Mapping[int, str] | None = None, incomplete: str = "", recipe: str = "",
                 table: pd.DataFrame | None = None) -> list[Path]:
    """Write ``table_<metric>.md`` and ``table_<metric>.tex`` per metric (each followed by its external test set
    blocks, :func:`external_blocks`), ``table.csv`` (long form) and, where a trial was scored on an external test set,
    ``table_external.csv`` (:func:`external_long_form`). ``incomplete``: a sentence saying which trials of
    the study have no result yet (:func:`incomplete_note`), written under each Markdown table and as a LaTeX comment.
    ``recipe``: :func:`recipe_sentence` of the study's ``--set`` overrides, in every caption.

    Every file is written atomically; returns the paths in that order (CSVs last). ``table``: the
    :func:`build_table` of ``records``, ``metrics`` and ``class_names`` when the caller has it already (the report
    builds it for the plots too: building it twice was 15-20% of a paper-size report).
    """
    out_dir = Path(out_dir)
    records = unique_records(records)
    df = build_table(records, metrics, class_names) if table is None else table
    sets = external_test_sets(records)
    names = iter(table_file_names(metrics))
    paths = []
    for metric in metrics:
        for suffix, render in (("md", to_markdown), ("tex", to_latex)):
            path = out_dir / next(names)
            text = render(df, metric, recipe=recipe)
            if incomplete and suffix == "md":
                text += f"\n**{incomplete}**\n"
            elif incomplete:  # inside the float, printed (a comment left a pasted table without it: the report review)
                text = _inside_float(text, incomplete)
            write_text_atomic(path, text + external_blocks(records, metric, suffix, class_names, recipe, sets))
            paths.append(path)
    csv_path = out_dir / next(names)
    to_csv(df, csv_path)
    paths.append(csv_path)
    external = external_long_form(records, metrics, class_names, sets)
    if external is not None:
        to_csv(external, out_dir / EXTERNAL_TABLE_CSV)
        paths.append(out_dir / EXTERNAL_TABLE_CSV)
    return paths


def incomplete_note(finished: int, expected: int) -> str:
    """The sentence under a table whose study has trials without a result ("" when all ``expected`` finished)."""
    if finished >= expected:
        return ""
    return (f"Incomplete: {finished} of the study's {expected} trials have a result; the others' cells are missing or "
            "average fewer seeds (rerun the study command to finish them).")


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
