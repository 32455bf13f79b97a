"""Tables from a fake study: 2 methods x 2 label fractions x 2 seeds, 2 test cases, known per-case values."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from analysis import table_files, table_render, tables
from medseg_platform.results import TrialRecord, scan_study, trial_key, write_trial_error, write_trial_results

MT, MONA = "Mean teacher", "MONA w/o L_contrast"
FEW, MANY = "3 patients (4.3%)", "14 patients (20.0%)"
FRACTIONS = {FEW: 3, MANY: 14}  # of 70 training patients


@dataclass
class FakeLabelled:
    patients: int

    def to_dict(self) -> dict:
        return {"num_patients": self.patients, "available_patients": 70,
                "percent_patients": round(100.0 * self.patients / 70, 3), "patients": [f"p{i}" for i in range(self.patients)]}


@dataclass
class FakeOutcome:
    labelled: FakeLabelled
    test_rows: list
    best_step: int = 10
    best_val_dice: float = 0.5
    curves: list = field(default_factory=lambda: [{"step": 1, "loss": 1.0}])
    val_curve: list = field(default_factory=lambda: [{"step": 1, "val_dice": 0.5}])
    timing: dict = field(default_factory=dict)
    resumed_from_step: int | None = None


def dice_value(method: int, many: int, seed: int, case: int, cls: int) -> float:
    """MONA is better with few labels, Mean teacher with many; seed +0.04, case +0.02, class -0.01/0/+0.01."""
    return 0.60 + 0.10 * method - 0.20 * method * many + 0.04 * seed + 0.02 * case + 0.01 * (cls - 2)


def case_rows(method: int, many: int, seed: int) -> list[dict]:
    rows = []
    for case in range(2):
        for cls in (1, 2, 3):
            d = dice_value(method, many, seed, case, cls)
            hd = 10.0 - 2.0 * method + case
            if (method, many, seed, case, cls) == (1, 0, 1, 0, 3):
                hd = math.nan  # one undefined HD95: MONA, few labels, seed 1, LV
            rows.append({"case": f"patient{case:03d}_frame01", "class": cls, "dice": d, "jaccard": d / (2 - d),
                         "hd95": hd, "asd": hd / 4})
    return rows


def write_trial(study: Path, row: str, method: int, column: str, seed: int, order: int | None = 0,
                max_steps: int = 100, empty_policy: str | None = None, val_curve: list | None = None,
                selection: str | None = None) -> Path:
    """One trial; ``empty_policy`` / ``selection`` add ``eval.empty_policy`` / ``eval.selection`` to its config,
    ``val_curve`` replaces its (single-validation, hence never flagged) val curve with (step, val Dice) pairs."""
    config = {"objective": "mona" if method else "mean_teacher", "data": {"labelled": str(FRACTIONS[column])},
              "seed": seed, "optim": {"max_steps": max_steps}}
    evaluation = {k: v for k, v in (("empty_policy", empty_policy), ("selection", selection)) if v is not None}
    if evaluation:
        config["eval"] = evaluation
    tags = {"row": row} if order is None else {"row": row, "order": order}
    trial_dir = study / "trials" / trial_key({**config, "row": row})  # distinct rows may share a fake config
    outcome = FakeOutcome(FakeLabelled(FRACTIONS[column]), case_rows(method, int(column == MANY), seed))
    if val_curve is not None:
        outcome.val_curve = [{"step": step, "val_dice": value} for step, value in val_curve]
    write_trial_results(trial_dir, config=config, tags=tags, outcome=outcome, seed=seed)
    return trial_dir


def make_study(root: Path, with_order: bool = True) -> Path:
    for method, row in ((0, MT), (1, MONA)):
        for column in (MANY, FEW):
            for seed in (1, 0):
                write_trial(root, row, method, column, seed, order=method if with_order else None)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def records(study):
    records, problems = scan_study(study)
    assert problems == [] and len(records) == 8
    return records


@pytest.fixture(scope="module")
def df(records) -> pd.DataFrame:
    return tables.build_table(records)


def cell(df: pd.DataFrame, row: str, column: str, cls: str, metric: str) -> pd.Series:
    hit = df[(df["row"] == row) & (df["column"] == column) & (df["class"] == cls) & (df["metric"] == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_mean_and_sample_std_over_seeds(df):
    # MT, few labels, RV: seed 0 cases 0.59/0.61 -> 0.60; seed 1 0.63/0.65 -> 0.64 => 62.0 ± sqrt(8)
    rv = cell(df, MT, FEW, "RV", "dice")
    assert rv["mean"] == pytest.approx(62.0) and rv["std"] == pytest.approx(math.sqrt(8.0))
    assert rv["n_seeds"] == 2 and rv["n_undefined"] == 0 and rv["unit"] == "%"
    assert set(rv["seeds"].split(",")) == {"0", "1"}
    # Avg = mean of RV/Myo/LV per seed = Myo's value; MONA with many labels: 0.50 + 0.01 -> 51 / 55
    avg = cell(df, MONA, MANY, "Avg", "dice")
    assert avg["mean"] == pytest.approx(53.0) and avg["std"] == pytest.approx(math.sqrt(8.0))
    # HD95 is not scaled; MONA few LV: seed 0 -> (8+9)/2 = 8.5, seed 1 -> only case 1 = 9.0 (NaN excluded)
    lv = cell(df, MONA, FEW, "LV", "hd95")
    assert lv["mean"] == pytest.approx(8.75) and lv["std"] == pytest.approx(math.sqrt(0.125))
    assert lv["n_undefined"] == 1 and cell(df, MONA, FEW, "Avg", "hd95")["n_undefined"] == 1
    assert cell(df, MONA, FEW, "RV", "hd95")["n_undefined"] == 0


def test_long_form_has_one_row_per_key_even_when_records_repeat(records, df):
    keys = ["row", "column", "class", "metric"]
    assert len(df) == 2 * 2 * 4 * 4 and not df.duplicated(keys).any()
    doubled = tables.build_table(list(records) + list(records))
    assert len(doubled) == len(df) and (doubled["n_seeds"] == 2).all()


def test_stored_means_are_not_trusted(records):
    record = records[0]
    forged = dict(record.result, test={"1": {"dice": 0.0}, "mean": {"dice": 0.0}})
    original = tables.build_table([record], metrics=("dice",))
    recomputed = tables.build_table([TrialRecord(record.path, forged, record.per_case)], metrics=("dice",))
    pd.testing.assert_frame_equal(original, recomputed)
    assert (original["mean"] > 50).all()


def test_row_and_column_order(records, df):
    assert list(dict.fromkeys(df["row"])) == [MT, MONA]  # tags["order"]: MT 0, MONA 1 (alphabetical would flip)
    assert list(dict.fromkeys(df["column"])) == [FEW, MANY]  # by patients (alphabetical would flip)
    assert list(dict.fromkeys(df["class"])) == ["RV", "Myo", "LV", "Avg"]
    lines = table_render.to_markdown(df, "dice").splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert header.index("3 patients (4.3%): RV") < header.index("3 patients (4.3%): Avg") < header.index("14 patients (20.0%): RV")
    body = [line for line in lines if line.startswith("| M") and not line.startswith("| Method")]
    assert body[0].startswith("| Mean teacher") and body[1].startswith("| MONA")


def test_rows_sorted_alphabetically_without_order_tags(tmp_path):
    records, _ = scan_study(make_study(tmp_path, with_order=False))
    assert list(dict.fromkeys(tables.build_table(records, metrics=("dice",))["row"])) == [MONA, MT]


def test_markdown_bold_on_best_cell_and_undefined_marker(df):
    table = table_render.to_markdown(df, "dice")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| M") and not line.startswith("| Method")}
    # RV, few labels: MONA 72.0 beats MT 62.0; many labels: MT 62.0 beats MONA 52.0
    assert rows[MONA][0] == "**72.0 ± 2.8**" and rows[MT][0] == "62.0 ± 2.8"
    assert rows[MT][4] == "**62.0 ± 2.8**" and rows[MONA][4] == "52.0 ± 2.8"
    assert "†" not in table  # no undefined Dice
    hd = table_render.to_markdown(df, "hd95")
    hd_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
               for line in hd.splitlines() if line.startswith("| M") and not line.startswith("| Method")}
    assert hd_rows[MONA][2] == "**8.75 ± 0.35**†"  # lower is better, and one NaN excluded
    assert hd_rows[MONA][0] == "**8.50 ± 0.00**" and hd_rows[MT][0] == "10.50 ± 0.00"  # HD95 does not vary by seed
    assert ("† 2 of 16 cells include undefined per-case values (empty prediction or empty ground truth), "
            "excluded from their means: 1 value over all seeds and classes.") in hd  # MONA / few / LV and its Avg
    assert f"{MONA} / {FEW}" not in hd  # counts, not a list of cells
    assert "lower is better" in hd and "voxels or mm as evaluated" in hd and "2 seeds per cell" in hd


def test_latex_escapes_and_booktabs(df):
    tex = table_render.to_latex(df, "dice")
    assert r"MONA w/o L\_contrast" in tex and r"3 patients (4.3\%)" in tex and "L_contrast" not in tex
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-5}", r"\cmidrule(lr){6-9}"):
        assert rule in tex
    assert r"\begin{tabular}{lcccccccc}" in tex and tex.count(r"\begin{table}") == 1 and r"\caption{Test Dice (\%)" in tex
    mona_line = next(line for line in tex.splitlines() if line.startswith("MONA"))
    assert mona_line.split(" & ")[1] == r"\textbf{72.0 $\pm$ 2.8}" and mona_line.endswith(r"\\")
    hd = table_render.to_latex(df, "hd95", float_env=False)
    assert r"$^\dagger$" in hd and r"\begin{table}" not in hd and hd.startswith("% requires")
    recipe = table_render.recipe_sentence({"objective_params.temperature": 0.2, "data.patch_size": [32, 32]})
    assert recipe == "Every trial ran with --set data.patch_size=[32, 32], objective_params.temperature=0.2 (the profile's recipe changed)."
    assert (r"Every trial ran with -{}-set data.patch\_size=[32, 32], objective\_params.temperature=0.2 (the profile's recipe "
            "changed).") in table_render.to_latex(df, "dice", recipe=recipe)
    assert table_render.recipe_sentence({}) == "" and table_render.to_latex(df, "dice", recipe="") == tex
    assert table_render.escape_latex("a_b%c&d#e$f{g}h~i^j\\") == r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}"
    # two hyphens stay two (TeX made the caption's --set an en dash: the report review); an en dash is TeX's --
    assert table_render.escape_latex("ran with --set x \u2013 a-b") == "ran with -{}-set x -- a-b"


def _body(markdown: str) -> dict[str, list[str]]:
    """Method -> its cell texts, from a Markdown table."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| M") and not line.startswith("| Method")}


def test_single_seed_cell_shows_the_mean_alone(records):
    one = [r for r in records if r.result["seed"] == 0]
    df1 = tables.build_table(one, metrics=("dice",))
    assert (df1["n_seeds"] == 1).all() and df1["std"].isna().all()  # no sample std from one seed (0.0 read as no spread)
    md = table_render.to_markdown(df1, "dice")
    assert "±" not in md.split("\n\n")[1]  # the table itself
    assert _body(md)[MT][:2] == ["60.0", "61.0"] and _body(md)[MONA][0] == "**70.0**"
    assert "One seed per cell: the mean over its test cases (no std). Seed 0;" in md
    assert r"\textbf{70.0} & " in table_render.to_latex(df1, "dice")


def test_cells_mixing_one_and_several_seeds_say_which_is_which(records):
    mixed = [r for r in records if not (r.result["seed"] == 1 and tables.row_label(r) == MT)]
    md = table_render.to_markdown(tables.build_table(mixed, metrics=("dice",)), "dice")
    assert _body(md)[MT][0] == "60.0" and _body(md)[MONA][0] == "**72.0 ± 2.8**"
    assert ("Mean ± sample std (ddof=1) over seeds, 1–2 seeds per cell; a cell without ± is from a single seed "
            "(8 of 16 cells); per seed, the mean over test cases. Seeds 0, 1;") in md


def test_caption_states_seeds_steps_patients_and_empty_policy(df, tmp_path):
    md = table_render.to_markdown(df, "dice")
    assert ("Seeds 0, 1; 100 fine-tuning steps; 3 or 14 labelled patients; the weights of the best validation Dice "
            "tested; empty-mask policy unknown.") in md
    root = tmp_path / "mixed"
    write_trial(root, MT, 0, FEW, 0, max_steps=100, empty_policy="nan")
    write_trial(root, MONA, 1, FEW, 0, max_steps=100, empty_policy="nan")
    records, _ = scan_study(root)
    same = tables.build_table(records, metrics=("dice", "hd95"))
    assert ("Seed 0; 100 fine-tuning steps; 3 labelled patients; the weights of the best validation Dice tested; "
            "empty-mask policy \"nan\" (a case where prediction and ground truth are both empty is left out of that "
            "class's mean; where one of them is empty the case scores 0).") in table_render.to_markdown(same, "dice")
    assert ("empty-mask policy \"nan\" (a case where prediction or ground truth is empty is left out of that "
            "class's mean).") in table_render.to_markdown(same, "hd95")
    write_trial(root, MONA, 1, FEW, 1, max_steps=200, empty_policy="released", selection="final")
    records, _ = scan_study(root)
    mixed = tables.build_table(records, metrics=("dice",))
    assert list(mixed["empty_policy"][mixed["row"] == MONA].unique()) == ["nan,released"]
    assert list(mixed["selection"][mixed["row"] == MONA].unique()) == ["best_val,final"]
    assert ("Seeds 0, 1; fine-tuning steps mixed (100, 200); 3 labelled patients; tested weights mixed (best_val, final); "
            "empty-mask policy mixed (nan, released).") in table_render.to_markdown(mixed, "dice")
    released = tables.build_table([r for r in records if r.result["config"].get("eval", {}).get("selection") == "final"],
                                  metrics=("dice",))  # --protocol released: the final iteration's weights
    assert "; 3 labelled patients; the final iteration's weights tested; empty-mask policy \"released\"" in \
        table_render.to_markdown(released, "dice")
    back = pd.read_csv(io.StringIO(table_files.to_csv(mixed)))  # "nan" comes back as NaN, 100 as a number
    assert table_render.to_markdown(back, "dice") == table_render.to_markdown(mixed, "dice")
    csv_path = tmp_path / "table.csv"
    table_files.to_csv(mixed, csv_path)
    read = table_files.read_table_csv(csv_path)  # the policy "nan" stays a name, a missing number stays NaN
    assert list(read["empty_policy"].unique()) == list(mixed["empty_policy"].unique()) and "nan" in read["empty_policy"].iloc[0]
    assert read["mean"].dtype == float and read["p_vs_best"].isna().sum() == mixed["p_vs_best"].isna().sum()
    assert table_render.to_markdown(read, "dice") == table_render.to_markdown(mixed, "dice")


def test_cells_with_a_flagged_trial_are_marked_and_counted(tmp_path):
    root = make_study(tmp_path / "flagged")
    # rewrites MONA / few labels / seed 1 (same config, same folder) with a collapsed curve: 0.20 below its best
    write_trial(root, MONA, 1, FEW, 1, order=1, val_curve=[(50, 0.80), (100, 0.60)])
    records, _ = scan_study(root)
    assert len(records) == 8
    df_flagged = tables.build_table(records, metrics=("dice", "hd95"))
    flagged = df_flagged[df_flagged["n_flagged"] > 0]
    assert set(zip(flagged["row"], flagged["column"])) == {(MONA, FEW)} and (flagged["n_flagged"] == 1).all()
    assert len(flagged) == 2 * 4  # every class and Avg of both metrics
    md = table_render.to_markdown(df_flagged, "dice")
    assert all(c.endswith("§") for c in _body(md)[MONA][:4]) and not any("§" in c for c in _body(md)[MONA][4:] + _body(md)[MT])
    # the footnote names the verdicts that occur (it repeated all three criteria, whichever had flagged the trials)
    assert ("§ 4 of 16 cells include a trial flagged at the end of training: 1 collapsed (the last validation more than "
            "10 points below the best); listed under Trial health in report.md.") in md
    assert set(df_flagged["flags"][df_flagged["n_flagged"] > 0]) == {"collapsed: 1"} and set(df_flagged["flags"]) == {"collapsed: 1", ""}
    older = df_flagged.drop(columns=["flags"])  # a table.csv written before the column: all three criteria, as before
    assert ("§ 4 of 16 cells include a trial whose validation Dice was still rising (the last validation its best "
            "and more than 1 val Dice point above the previous one) or collapsed (the last more than 10 points below the best) at the end "
            "of training, or that did not learn (its best below 15 points): 1 trial in all, listed under Trial health in report.md.") in \
        table_render.to_markdown(older, "dice")
    tex = table_render.to_latex(df_flagged, "dice")
    mona_line = next(line for line in tex.splitlines() if line.startswith("MONA"))
    assert mona_line.split(" & ")[1].endswith(r"}$^\S$") and r"$^\S$ 4 of 16 cells" in tex
    assert "n_flagged" in table_files.to_csv(df_flagged).splitlines()[0].split(",")


def test_missing_method_fraction_pair_is_a_dash(records):
    partial = [r for r in records if not (tables.row_label(r) == MT and tables.column_label(r) == FEW)]
    df_partial = tables.build_table(partial, metrics=("dice",))
    assert list(dict.fromkeys(df_partial["column"])) == [MANY, FEW]  # MT (first row) has only MANY
    md = table_render.to_markdown(df_partial, "dice")
    mt_line = next(line for line in md.splitlines() if line.startswith("| Mean teacher"))
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.index(FEW) < header.index(MANY)  # layout follows column_rank, not long-form order
    assert [c.strip() for c in mt_line.split("|")[2:-1]][:4] == ["–"] * 4


def test_write_tables_writes_every_file_and_no_temporary_one_is_left(records, tmp_path):
    """(the atomic replacement itself: tests/test_io.py)"""
    paths = table_files.write_tables(records, tmp_path / "out", metrics=("dice", "hd95"))
    assert [p.name for p in paths] == ["table_dice.md", "table_dice.tex", "table_hd95.md", "table_hd95.tex", "table.csv"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert not list((tmp_path / "out").glob(".*.tmp"))
    back = pd.read_csv(paths[-1])
    assert len(back) == 2 * 2 * 4 * 2 and not back.duplicated(["row", "column", "class", "metric"]).any()
    assert table_render.to_markdown(back, "dice") == paths[0].read_text(encoding="utf-8")  # CSV round trip keeps layout


def test_problems_and_print_summary(study, tmp_path, capsys):
    root = make_study(tmp_path / "s")
    write_trial(root, MT, 0, FEW, 0, max_steps=200)  # same method, fraction, seed with a changed config
    write_trial_error(root / "trials" / "broken", config={"objective": "mona"}, tags={}, seed=3, error="CUDA OOM")
    (root / "trials" / "corrupt").mkdir()
    (root / "trials" / "corrupt" / "result.json").write_text("{trunc", encoding="utf-8")
    records, problems = scan_study(root)
    problems += tables.duplicate_seeds(records)  # as the report lists them
    assert len(records) == 9
    assert any("CUDA OOM" in p for p in problems) and any(p.startswith("corrupt result") for p in problems)
    assert any(p.startswith("duplicate trials") and MT in p and "seed 0" in p for p in problems)
    # which settings the averaged trials do not share (a --set run into the same folder, a study.json deleted)
    assert any(p.endswith("is reported by 2 trials (all averaged); their configs differ in optim.max_steps") for p in problems)
    paths = table_files.write_tables(records, tmp_path / "tables")
    text = table_files.print_summary(paths, problems)
    assert capsys.readouterr().out == text
    assert "### Dice (%)" in text and str(paths[-1]) in text and "Problems (3):" in text and "CUDA OOM" in text
    assert "### HD95" not in text


def test_unknown_metric_is_rejected(records):
    with pytest.raises(ValueError, match="unknown metric"):
        tables.build_table(records, metrics=("dice", "volume"))


def test_analysis_imports_neither_ray_nor_torch():
    import subprocess
    import sys
    code = "import sys, analysis.tables; print(any(m.split('.')[0] in ('ray', 'torch') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_search_table_calls_its_cells_samples_not_seeds():
    """A search's row averages samples of one seed: "over seeds, 6 seeds per cell" misread their spread as seed noise."""
    from analysis.table_render import Cell, WideTable, _seeds_sentence

    def table(n: int, seeds: list[str], search: str = "yes") -> WideTable:
        cell = Cell(mean=50.0, std=3.0, n_seeds=n, n_undefined=0, best=True)
        return WideTable("dice", ["R"], ["1"], ["Avg"], {("R", "1", "Avg"): cell}, settings={"seeds": seeds, "search": [search]})

    assert _seeds_sentence(table(6, ["1"])).startswith("Mean \u00b1 sample std (ddof=1) over the trials of a cell, 6 per cell: "
                                                       "search samples, whose hyper-parameters differ")
    assert _seeds_sentence(table(3, ["1", "2", "3"], "no")).startswith("Mean \u00b1 sample std (ddof=1) over seeds, 3 seeds per cell")
    # a grid study with a seed reported twice (a problem line says so) is still a table over seeds
    assert _seeds_sentence(table(4, ["1", "2", "3"], "no")).startswith("Mean \u00b1 sample std (ddof=1) over seeds, 4 seeds per cell")


def test_hd95_and_asd_tables_name_the_unit_they_were_evaluated_in(tmp_path):
    """The caption used to say "voxels or mm as evaluated" whatever the trials did; the plots already knew."""
    import dataclasses

    from tests.analysis.fakes import make_fake_study

    records = scan_study(make_fake_study(tmp_path))[0]  # the fake test volumes carry a spacing

    def units(records, metric):
        df = tables.build_table(records)
        return set(df[df["metric"] == metric]["unit"]), table_render.caption(table_render.wide_table(df, metric))

    assert units(records, "dice")[0] == {"%"}
    unit, text = units(records, "hd95")
    assert unit == {"mm"} and " HD95 in mm. " in text and "as evaluated" not in text

    def in_voxels(record):
        config = {**record.result["config"], "eval": {**record.result["config"]["eval"], "distance_units": "voxel"}}
        return dataclasses.replace(record, result={**record.result, "config": config})

    unit, text = units([in_voxels(r) for r in records], "asd")
    assert unit == {"voxels"} and " ASD in voxels. " in text
    mona_in_voxels = [in_voxels(r) if tables.row_label(r) == "MONA" else r for r in records]
    unit, text = units(mona_in_voxels, "hd95")
    assert unit == {"mm", "voxels"} and "HD95 in mm or voxels: the cells differ" in text


def test_latex_writes_greek_letters_and_their_subscripts_as_math():
    """The temperature study's rows ("ARCO-SG, ISD τ_t = 0.01") went into the .tex raw: pdflatex stops at "τ"."""
    assert table_render.escape_latex("ARCO-SG, ISD τ_t = 0.01") == r"ARCO-SG, ISD $\tau_{t}$ = 0.01"
    assert table_render.escape_latex("ACTION, τ = 0.1 ± 2") == r"ACTION, $\tau$ = 0.1 $\pm$ 2"
    assert table_render.escape_latex("λ Λ Α ο") == r"$\lambda$ $\Lambda$ $A$ $o$"  # Unicode's "LAMDA"; no \Alpha in LaTeX
    assert table_render.escape_latex("MONA w/o L_contrast") == r"MONA w/o L\_contrast"  # a subscript only after a Greek letter
    assert table_render.escape_latex('policy "nan" and "released"') == "policy ``nan'' and ``released''"  # not ”nan” (the reports probe)
    assert table_render.escape_latex('say "a" or "') == "say ``a'' or \""  # an unpaired last quote stays straight


def test_an_average_over_fewer_classes_is_never_the_best(tmp_path):
    """A method that never predicts the LV has no LV HD95; its Avg over RV and Myo was the lowest, hence bold, though it
    was the worst on both classes it shares with the other row (a probe of the tables)."""
    for method, row in ((0, MT), (1, MONA)):
        for seed in (1, 0):
            trial_dir = write_trial(tmp_path, row, method, FEW, seed, order=method)
            rows = [dict(r) for r in case_rows(method, 0, seed)]
            for r in rows:  # MT: HD95 5 on RV/Myo and no LV at all; MONA: 8 on every class
                r["hd95"] = (math.nan if r["class"] == 3 else 5.0 + r["class"]) if method == 0 else 8.0
            write_trial_results(trial_dir, config=json_config(trial_dir), tags={"row": row, "order": method},
                                outcome=FakeOutcome(FakeLabelled(3), rows), seed=seed)
    records, problems = scan_study(tmp_path)
    assert problems == []
    frame = tables.build_table(records, metrics=("hd95",))
    assert tables.partial_averages(frame.to_dict("records")) == {(MT, FEW, "hd95")}
    hd = table_render.to_markdown(frame, "hd95")
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in hd.splitlines() if line.startswith("| M") and not line.startswith("| Method")}
    # MT's 6.5 covers RV and Myo only; on those two it beats MONA, so it is not shown to be worse (‡)
    assert cells[MT][3] == "6.50 ± 0.00†‡" and cells[MONA][3] == "**8.00 ± 0.00**"
    assert cells[MT][0] == "**6.00 ± 0.00**" and cells[MONA][0] == "8.00 ± 0.00"  # the classes themselves as before
    assert cells[MONA][2] == "8.00 ± 0.00"  # LV: one row only defines it, so no best
    assert "1 Avg cell leaves out a class that its other seeds or other rows of the column define" in hd


def test_an_average_whose_seeds_cover_different_classes_is_partial_and_an_empty_one_is_not(tmp_path):
    """Each seed's Avg averages its own defined classes: MT's seed 1 has no RV HD95 and seed 0 no LV HD95, so every
    class has a value from some seed, yet its Avg mixes (Myo, LV) with (RV, Myo); it was bold as the lowest (a probe of
    the outputs). A row whose Avg has no value at all is not counted as a partial average."""
    empty = "Empty"
    for method, row in ((0, MT), (1, MONA), (2, empty)):
        for seed in (1, 0):
            trial_dir = write_trial(tmp_path, row, method, FEW, seed, order=method)
            rows = [dict(r) for r in case_rows(method, 0, seed)]
            for r in rows:
                missing = {1: 1, 0: 3}[seed] if method == 0 else None
                r["hd95"] = {0: math.nan if r["class"] == missing else 5.0, 1: 8.0, 2: math.nan}[method]
            write_trial_results(trial_dir, config=json_config(trial_dir), tags={"row": row, "order": method},
                                outcome=FakeOutcome(FakeLabelled(3), rows), seed=seed)
    records, problems = scan_study(tmp_path)
    assert problems == []
    frame = tables.build_table(records, metrics=("hd95",))
    avg = frame[frame["class"] == tables.AVG].set_index("row")
    assert avg.loc[MT, "avg_classes"] == 2 and avg.loc[MONA, "avg_classes"] == 3 and math.isnan(avg.loc[empty, "avg_classes"])
    assert tables.partial_averages(frame.to_dict("records")) == {(MT, FEW, "hd95")}
    hd = table_render.to_markdown(frame, "hd95")
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in hd.splitlines() if line.startswith("| ") and not line.startswith("| Method")}
    assert cells[MT][3] == "5.00 ± 0.00†‡" and cells[MONA][3] == "**8.00 ± 0.00**"
    assert "1 Avg cell leaves out a class that its other seeds or other rows of the column define" in hd
    # the report review: so are MT's RV and LV cells, from 1 of their 2 seeds (each seed missed one in every case); they
    # were bold at 5.00 over MONA's 8.00 from both seeds. Myo, from both seeds, is compared as before
    assert sorted(tables.partial_cells(frame.to_dict("records"))) == sorted(
        [(MT, FEW, "Avg", "hd95"), (MT, FEW, "RV", "hd95"), (MT, FEW, "LV", "hd95")])
    assert cells[MT][0] == cells[MT][2] == "5.00†‡" and cells[MONA][0] == cells[MONA][2] == "**8.00 ± 0.00**"
    assert cells[MT][1] == "**5.00 ± 0.00**"
    assert "2 class cells average fewer seeds than they list (a seed with no defined value in any test case)" in hd


def json_config(trial_dir: Path) -> dict:
    import json

    return json.loads((trial_dir / "config.json").read_text())["config"]


def test_rows_with_identical_results_are_named_unless_they_segmented_nothing(tmp_path):
    """A smoke sweep of L_unsup's weight trained three identical rows (the term stays zero before the teacher passes
    its threshold) and the table compared them as if they differed (a probe). Rows that predict nothing agree
    without training alike, so they are not named."""
    from tests.analysis.fakes import write_fake_trial

    for row, order, dice in (("w = 0", 0, 0.6), ("w = 1", 1, 0.6), ("w = 2", 2, 0.7), ("blank a", 3, 0.0), ("blank b", 4, 0.0)):
        for seed in (1, 2):
            write_fake_trial(tmp_path, row=row, order=order, patients=1, seed=seed, dice=lambda c, k, d=dice, s=seed: d and d + 0.01 * s,
                             qualitative_shift=None)
    records, _ = scan_study(tmp_path)
    (line,) = tables.identical_rows(records)
    assert line.startswith("identical results: rows 'w = 0', 'w = 1' at 1 patient") and "for every seed (1, 2)" in line
    assert tables.identical_rows([r for r in records if r.result["seed"] == 1 or r.result["tags"]["row"] != "w = 1"]) == []
    # one seed that predicts nothing (the reports probe: seed 1 of two identical rows segmented nothing, seed 2 did, and
    # the rows were never named)
    for row, order in (("half a", 5), ("half b", 6)):
        for seed in (1, 2):
            write_fake_trial(tmp_path, row=row, order=order, patients=1, seed=seed, dice=lambda c, k, s=seed: 0.3 * (s - 1),
                             qualitative_shift=None)
    records, _ = scan_study(tmp_path)
    lines = tables.identical_rows(records)
    assert len(lines) == 2 and any(line.startswith("identical results: rows 'half a', 'half b' at 1 patient") for line in lines)


def test_the_undefined_footnote_names_what_makes_each_metric_undefined():
    """Under the "nan" policy an empty prediction of a present structure scores Dice 0 and a prediction where the ground
    truth is empty too: only both empty leave Dice undefined, while the distances are undefined for either (the
    statistics probe and review)."""
    cells = {("MONA", "1", "RV"): table_render.Cell(50.0, 1.0, 2, 1, False)}
    for metric, why in (("dice", "(empty ground truth and prediction)"), ("jaccard", "(empty ground truth and prediction)"),
                        ("hd95", "(empty prediction or empty ground truth)")):
        table = table_render.WideTable(metric, ["MONA"], ["1"], ["RV"], cells)
        assert f"† 1 of 1 cells include undefined per-case values {why}, excluded" in table_render.undefined_note(table)


def test_a_summary_without_tables_says_none_instead_of_an_empty_list(capsys):
    """An interrupted run printed "Tables written (0 files):" and "Plots (0 files):" over nothing (the workflow probe)."""
    text = table_files.print_summary([], ["no finished trial"])
    assert text == "Tables written: none\nProblems (1):\n  - no finished trial\n" and capsys.readouterr().out == text


def test_a_wide_table_is_printed_with_its_average_columns_only(tmp_path):
    """A paper-size Dice table (17 columns) printed 460-character lines in the terminal (the analysis scaling probe);
    the file keeps every column."""
    header = ["Method", *[f"{p} patients: {c}" for p in (1, 3, 7, 70) for c in ("RV", "Myo", "LV", "Avg")]]
    body = [["MONA", *[f"{v:.1f} ± 1.0‡" for v in range(16)]], ["Mean teacher", *[f"{v:.1f} ± 2.0" for v in range(16)]]]
    markdown = "\n".join(["### Dice (%)", "", *table_render._markdown_lines([header, *body]), "", "Caption."]) + "\n"
    text = table_render.terminal_table(markdown, tmp_path / "table_dice.md")
    lines = text.splitlines()
    assert lines[2].split("|")[1:-1] == [" Method       ", " 1 patients: Avg ", " 3 patients: Avg ", " 7 patients: Avg ",
                                          " 70 patients: Avg "]
    assert "|" in lines[3] and "3.0 ± 1.0‡" in lines[4] and "15.0 ± 2.0" in lines[5] and "0.0 ±" not in text
    assert lines[-2] == "Caption." and lines[-1] == f"(the Avg columns of 16; every class in {tmp_path / 'table_dice.md'})"
    narrow = "\n".join(["### Dice (%)", "", *table_render._markdown_lines([header[:5], *(row[:5] for row in body)]), "", "Caption."])
    assert table_render.terminal_table(narrow, "x") == narrow  # the default study's 4 columns: as written

    # the plots review: an external test set's table in the same file ran on under the study's header (its heading,
    # header and the study's caption lost), and an escaped pipe in a row label split the row (every cell moved left)
    piped = [[r"Mean teacher \| EMA", *row[1:]] if row[0] == "Mean teacher" else row for row in body]
    block = lambda rows, title, note: [f"### {title}", "", *table_render._markdown_lines([header, *rows]), "", note]  # noqa: E731
    two = "\n".join(block(piped, "Dice (%)", "Caption.") + [""] + block(body, "Dice (%), external test set: /x", "External."))
    lines = table_render.terminal_table(two, "t.md").splitlines()
    assert lines[0] == "### Dice (%)" and lines[2].split("|")[1].strip() == "Method"
    assert lines[5].startswith(r"| Mean teacher \| EMA |") and lines[5].rstrip(" |").endswith("15.0 ± 2.0")
    assert lines[6:10] == ["", "Caption.", "", "### Dice (%), external test set: /x"]
    assert lines[11].split("|")[1].strip() == "Method" and "15.0 ± 2.0" in lines[14]
    assert lines[-2:] == ["External.", "(the Avg columns of 16; every class in t.md)"]


def test_labels_with_markdown_and_latex_specials_print_as_written():
    """GitHub rendered a row "lr $2e-3$" as math and "~~old~~ _tuned_" struck through and in italics; pdflatex set "<",
    ">" and "|" as ¡, ¿ and an em dash and stopped at "→" (the tables review)."""
    from analysis.markdown import escape_markdown
    from analysis.table_render import escape_latex

    assert escape_markdown("lr $2e-3$ vs ~~old~~ _tuned_ mean_teacher") == r"lr \$2e-3\$ vs \~\~old\~\~ \_tuned\_ mean_teacher"
    assert escape_latex("τ<0.1 | x→y ≤ 2 ⊕") == r"$\tau$\textless{}0.1 \textbar{} x$\rightarrow$y $\leq$ 2 [U+2295]"
    assert escape_latex("Müller ±") == r"Müller $\pm$"  # Latin-1 letters stay (pdflatex's UTF-8 input sets them up)
    # ... and the Latin Extended letters pdflatex sets by default, with typographic quotes mapped (written as [U+..] they
    # garbled names LaTeX sets: the diff review); ę, Ħ and ð stop pdflatex's default preamble (the third diff review)
    assert escape_latex("Mięsień Čerebellum Crohn’s “LV” Myo − LV") == r"Mi[U+0119]sie" + "ń" + r" Čerebellum Crohn's ``LV'' Myo $-$ LV"
    assert escape_latex("Ħal ð Gdańsk") == "[U+0126]al [U+00F0] Gdańsk"


def test_a_class_name_is_plain_text_in_the_markdown_caption(df):
    """The security review: the header escaped a class name's "$...$" and "_x_", the caption left them as math and
    emphasis."""
    renamed = df.assign(**{"class": df["class"].replace({"RV": "$x^$ #_y_"})})
    markdown = table_render.to_markdown(renamed, "dice")
    assert r"per class (\$x^\$ #\_y\_, " in markdown and "$x^$ #_y_" not in markdown
    assert "per class ($x^$ #_y_, " in table_render.caption(table_render.wide_table(renamed, "dice"))  # LaTeX: escaped whole
