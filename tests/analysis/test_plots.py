"""Every plot draws from synthetic result files, with labelled axes, and writes a non-empty PNG."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import plots, tables
from medseg_platform.results import scan_study
from tests.analysis import fakes
from tests.analysis.fakes import make_fake_study, make_search_study, write_fake_trial


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return scan_study(make_fake_study(tmp_path_factory.mktemp("plots")))[0]


@pytest.fixture(scope="module")
def colours(records):
    return plots.palette(tables.row_order(records))


def _labels(fig: Figure) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_palette_is_fixed_for_known_methods_and_distinct_otherwise():
    first = plots.palette(["MONA", "ACTION", "my variant", "other variant"])
    second = plots.palette(["other variant", "my variant", "MONA"])
    assert first["MONA"] == second["MONA"] == plots.FIXED_COLOURS["MONA"]
    assert len(set(first.values())) == 4 and first["my variant"] == second["my variant"]
    assert not set(first.values()) & (set(plots.FIXED_COLOURS.values()) - {first["MONA"], first["ACTION"]})


def test_palette_gives_a_methods_variants_shades_of_its_colour_and_no_one_elses():
    from matplotlib.colors import to_rgb

    labels = ["ARCO-SG, τ = 0.1", "ARCO-SG, τ = 0.5", "ACTION, τ = 0.1", "ARCO-SAG (x=1)", "Supervised, all labels"]
    colours = plots.palette(labels)
    assert len(set(colours.values())) == len(labels)
    assert colours["ACTION, τ = 0.1"] == plots.FIXED_COLOURS["ACTION"]  # the only ACTION row: its own colour
    assert colours["ARCO-SAG (x=1)"] == plots.FIXED_COLOURS["ARCO-SAG"]  # not ARCO-SG's: the longest known prefix
    assert colours["Supervised, all labels"] == plots.FIXED_COLOURS["Supervised, all labels"]
    green = to_rgb(plots.FIXED_COLOURS["ARCO-SG"])
    for label in labels[:2]:  # ARCO-SG's two rows: shades of its green (the same hue), darker first
        shade = to_rgb(colours[label])
        assert shade[1] == max(shade) and shade != green
    assert sum(to_rgb(colours[labels[0]])) < sum(to_rgb(colours[labels[1]]))
    with_base = plots.palette(["MONA", "MONA (x=1)"])
    assert with_base["MONA"] == plots.FIXED_COLOURS["MONA"] != with_base["MONA (x=1)"]
    # the sampling study's rows name their sampler (NS, SG, SAG): their variant tag says whose family they are (they
    # took hash colours, the two NS rows blue and olive, "SAG, 9 groups" a purple next to ACTION's: the studies probe)
    rows = {"NS (MONA), 32 anchors": "MONA", "NS (MONA), 64 anchors": "MONA", "SG, 9 groups": "ARCO-SG", "SAG, 9 groups": "ARCO-SAG"}
    sampling = plots.palette([*rows, *rows.values()], family=rows)
    for row, method in rows.items():
        shade, base = to_rgb(sampling[row]), to_rgb(plots.FIXED_COLOURS[method])
        assert shade != base and int(np.argmax(shade)) == int(np.argmax(base)), (row, shade, base)
    assert len(set(sampling.values())) == len(sampling)


def test_a_new_method_of_the_recipes_gets_a_fixed_colour_and_its_variants_shades_of_it(monkeypatch):
    from medseg_platform.recipes import METHOD_LABELS

    # an id and label no method will have: a newcomer who added "entmin" (docs/methods.md's example) broke this test
    fixed = plots.fixed_colours({**METHOD_LABELS, "__probe__": "Probe method"})
    assert {label: fixed[label] for label in plots.FIXED_COLOURS} == plots.FIXED_COLOURS  # the others keep theirs
    # the next spare colour: methods of the recipes without a METHOD_COLOURS entry (a newcomer's) took the first ones
    spare = plots._EXTRA[sum(m not in plots.METHOD_COLOURS for m in METHOD_LABELS)]
    assert fixed["Probe method"] == spare not in plots.FIXED_COLOURS.values()
    monkeypatch.setattr(plots, "FIXED_COLOURS", fixed)
    colours = plots.palette(["Probe method", "Probe method (w=0.5)", "Mean teacher"])
    assert colours["Probe method"] == spare != colours["Probe method (w=0.5)"]
    assert plots._known_prefix("Probe method (w=0.5)") == "Probe method"  # shaded as its family
    others = plots.palette([f"row{i}" for i in range(10)])  # rows of other studies never take the new method's colour
    assert spare not in others.values() and len(set(others.values())) == 10


def test_class_bars_per_label_fraction(records, colours):
    df = tables.build_table(records)
    fig = plots.class_bars(df, "dice", colours)
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["1 patient (1.4%)", "3 patients (4.3%)"]
    assert fig.axes[0].get_ylabel() == "Dice (%)" and fig.axes[0].get_xlabel() == "class"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["RV", "Myo", "LV", "Avg"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MONA", "Mean teacher", "ARCO-SG"]
    assert plots.class_bars(df, "hd95", colours, plots.distance_unit(records)).axes[0].get_ylabel() == "HD95 (mm)"
    assert isinstance(plots.class_bars(df.iloc[0:0], "dice", colours), plots.Skipped)


def test_class_bar_whiskers_and_axis_stay_at_or_above_zero(records, colours):
    """A distance whose seeds spread wider than its mean (e.g. 2, 3 and 45 mm: 13.9 +- 25.0) drew its whisker and the
    axis into negative mm (the plots review); the lower whisker now stops at 0, as the curves' do."""
    df = tables.build_table(records)
    cell = (df["metric"] == "hd95") & (df["row"] == "MONA") & (df["class"] == "LV")
    df.loc[cell, ["mean", "std"]] = [13.9, 25.0]
    fig = plots.class_bars(df, "hd95", colours, "mm")
    assert fig.axes[0].get_ylim()[0] == 0.0
    whiskers = [segment for ax in fig.axes for collection in ax.collections for segment in collection.get_segments()]
    assert whiskers and min(point[1] for segment in whiskers for point in segment) >= 0.0
    assert max(point[1] for segment in whiskers for point in segment) == pytest.approx(13.9 + 25.0)


def test_the_search_history_legend_names_the_statuses_it_draws_hollow():
    """Unfinished and result-less samples were drawn under "trial stopped early (ASHA) or errored" (the plots review)."""
    from analysis.search import Sample

    statuses = ["completed", "stopped early", "unfinished", "result missing", "completed"]
    samples = [Sample(i, f"t{i}", f"k{i}", status, {}, {}, None, 0.1 * (i + 3), None) for i, status in enumerate(statuses)]
    fig = plots.search_history([], samples)
    labels = [t.get_text().replace("\n", " ") for t in fig.legends[0].get_texts()] if fig.legends else \
        [t.get_text() for t in fig.axes[0].get_legend().get_texts()]  # a long label is wrapped in the legend
    assert "trial result missing / stopped early / unfinished" in labels and "trial (completed)" in labels


def test_class_bars_keep_rows_classes_and_panels_undefined_everywhere_marked_na(records, colours):
    df = tables.build_table(records)
    hd95 = df["metric"] == "hd95"
    undefined = hd95 & ((df["row"] == "Mean teacher") | (df["class"] == "Myo") | (df["column"] == "3 patients (4.3%)"))
    df.loc[undefined, ["mean", "std"]] = float("nan")  # as for trials whose predictions are all empty
    fig = plots.class_bars(df, "hd95", colours, "mm")
    assert [ax.get_title() for ax in fig.axes] == ["1 patient (1.4%)", "3 patients (4.3%)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["RV", "Myo", "LV", "Avg"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MONA", "Mean teacher", "ARCO-SG"]
    assert sum(t.get_text() == "n/a" for t in fig.axes[1].texts) == 3 * 4  # every bar of the undefined panel
    assert "n/a: undefined in every test case (an empty prediction or ground truth)" in fig._suptitle.get_text()


def test_a_dice_of_zero_is_marked_so_it_does_not_read_as_a_missing_bar(records, colours):
    """A 0.0 bar looked exactly like a cell with no trial (the workflow probe): it gets a "0" at its foot."""
    df = tables.build_table(records)
    zero = (df["metric"] == "dice") & (df["row"] == "Mean teacher") & (df["column"] == "3 patients (4.3%)")
    df.loc[zero, "mean"] = 0.0
    fig = plots.class_bars(df, "dice", colours)
    assert [t.get_text() for t in fig.axes[1].texts] == ["0"] * int(zero.sum()) and not fig.axes[0].texts
    undefined = (df["metric"] == "dice") & (df["row"] == "MONA")
    df.loc[undefined, ["mean", "std"]] = float("nan")
    assert "n/a: undefined in every test case (prediction and ground truth both empty)" in \
        plots.class_bars(df, "dice", colours)._suptitle.get_text()


def test_class_bars_hatch_a_partial_average_and_draw_no_error_bar_for_a_single_seed(records, colours):
    """The tables never bold an Avg over fewer classes than its column's; the bars drew it like any other. A cell of
    one seed had a zero-length error bar, as if two seeds agreed (a probe of the outputs)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    df = tables.build_table(records)
    first = df["column"] == "1 patient (1.4%)"
    df.loc[(df["metric"] == "hd95") & first & (df["row"] == "MONA") & (df["class"] == "LV"), ["mean", "std"]] = float("nan")
    fig = plots.class_bars(df, "hd95", colours, "mm")
    hatched = [(i, patch.get_hatch()) for i, patch in enumerate(fig.axes[0].patches) if patch.get_hatch()]
    assert hatched == [(3, plots.PARTIAL_HATCH)]  # MONA's Avg bar (its bars come first: RV, Myo, LV, Avg)
    assert not any(patch.get_hatch() for patch in fig.axes[1].patches)
    assert "hatched: not comparable, an Avg over fewer classes" in fig._suptitle.get_text()
    assert plots.SINGLE_SEED_NOTE not in fig._suptitle.get_text()
    # the plots review: a class's distance from fewer seeds than the cell lists (a seed missed the structure) is never
    # bold in the tables; the bars drew it plain, possibly the lowest, and its missing error bar read as "a single seed"
    fewer = (df["metric"] == "hd95") & first & (df["row"] == "ARCO-SG") & (df["class"] == "RV")
    assert str(df.loc[fewer, "seeds"].iloc[0]).count(",") >= 1  # the cell lists two seeds
    df.loc[fewer, ["n_seeds", "std"]] = [1, float("nan")]
    fig = plots.class_bars(df, "hd95", colours, "mm")
    hatched = [i for i, patch in enumerate(fig.axes[0].patches) if patch.get_hatch()]
    assert hatched == [3, 8]  # MONA's Avg and ARCO-SG's RV (the third row's first bar)
    assert "a class's value from fewer seeds than the cell lists" in fig._suptitle.get_text()
    assert plots.SINGLE_SEED_NOTE not in fig._suptitle.get_text()
    # the plots review: the legend took each row's first bar's style (ARCO-SG's entry hatched as if the whole row were
    # not comparable, MONA's not), and the explanation ran past both edges of the figure
    assert [handle.get_hatch() for handle in fig.legends[0].legend_handles] == [None] * 3
    canvas = FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png")
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    single = (df["row"] == "ARCO-SG") & first
    df.loc[single, "n_seeds"] = 1
    fig = plots.class_bars(df, "dice", colours)
    assert plots.SINGLE_SEED_NOTE in fig._suptitle.get_text()
    from matplotlib.container import BarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]  # per row: MONA, Mean teacher, ARCO-SG
    drawn = [sum(np.asarray(segment).size > 0 for segment in bar.errorbar.lines[2][0].get_segments()) for bar in bars]
    assert drawn == [4, 4, 0]  # an error bar on every class of the 2-seed rows, none on the single-seed row


def test_a_long_row_label_is_wrapped_in_the_legend_so_it_stays_inside_the_figure(records, colours):
    """The plots review: a 113-character row label pushed the bars' legend past both edges of the figure, cutting
    the other labels ("pervised only")."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    long = "MONA " + "with a very long description of its settings " * 5 + "and more"
    df = tables.build_table(records)
    df.loc[df["row"] == "MONA", "row"] = long
    fig = plots.class_bars(df, "dice", {**colours, long: colours["MONA"]})
    canvas = FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png")
    box = fig.legends[0].get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert fig.legends[0].get_texts()[0].get_text().replace("\n", " ") == long


def test_distance_unit_reads_eval_distance_units_before_the_volume_spacing(records):
    def with_units(record, units):
        config = {**record.result["config"], "eval": {**record.result["config"]["eval"], "distance_units": units}}
        return dataclasses.replace(record, result={**record.result, "config": config})

    assert plots.distance_unit(records) == "mm"  # the fake volumes carry a spacing, the configs say nothing
    assert plots.distance_unit([with_units(r, "mm") for r in records]) == "mm"
    assert plots.distance_unit([with_units(r, "voxel") for r in records]) == "voxels"  # spacing ignored
    mixed = [with_units(r, "voxel" if i % 2 else "mm") for i, r in enumerate(records)]
    assert plots.distance_unit(mixed) is None
    assert plots.metric_axis_label("hd95", plots.distance_unit(mixed)) == "HD95 (mm or voxels, as evaluated)"


def test_curves_vs_label_fraction_and_ablation_axis(records, colours, tmp_path):
    fig = plots.label_fraction_curves(records, "dice", colours)
    assert _labels(fig) == [("labelled patients (percent of the training patients)", "Dice (%), class average")]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1\n(1.4%)", "3\n(4.3%)"]
    one = [r for r in records if r.result["labelled"]["num_patients"] == 1]
    assert isinstance(plots.label_fraction_curves(one, "dice", colours), plots.Skipped)
    for tau in (0.05, 0.1, 0.5):  # a temperature axis expressed as variants (tags["axes"])
        for seed in (1, 2):
            write_fake_trial(tmp_path, row=f"MONA (tau={tau})", order=0, patients=1, seed=seed, axes={"objective_params.temperature": tau},
                             dice=lambda c, k, t=tau, s=seed: 0.7 - t / 2 + 0.01 * s, qualitative_shift=None)
    axis_records = scan_study(tmp_path)[0]
    assert plots.numeric_axes(axis_records) == ["objective_params.temperature"]
    fig = plots.axis_curves(axis_records, "objective_params.temperature", "dice", plots.palette(["MONA"]))
    assert _labels(fig) == [("pixel-contrast temperature τ", "Dice (%), class average")]
    write_fake_trial(tmp_path / "wide", row="MONA (tau=0.01)", order=0, patients=1, seed=1, axes={"objective_params.temperature": 0.01},
                     dice=lambda c, k: 0.6, qualitative_shift=None)
    wide = plots.axis_curves(axis_records + scan_study(tmp_path / "wide")[0], "objective_params.temperature", "dice",
                             plots.palette(["MONA"]))
    assert wide.axes[0].get_xscale() == "log" and wide.axes[0].get_xlabel() == "pixel-contrast temperature τ (log scale)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MONA"]
    assert plots.numeric_axes(records) == [] and plots.text_axes(axis_records) == []
    # the error bars stop at 0, where the axis starts (a whisker crossed the tick labels below it): mean 15, std 21.2
    ax = Figure().subplots()
    plots._errorbar_lines(ax, {"A": {1.0: [0.0, 30.0], 2.0: [40.0, 50.0]}}, {}, {})
    whiskers = [segment[:, 1] for segment in ax.collections[0].get_segments() if len(segment)]
    assert [float(w.min()) for w in whiskers] == pytest.approx([0.0, 45.0 - np.std([40.0, 50.0], ddof=1)])
    for sampler in ("uniform", "stratified"):  # an axis of names: no curve, and the skip is said
        write_fake_trial(tmp_path, row=f"ARCO ({sampler})", order=1, patients=1, seed=1, axes={"objective_params.sampler": sampler},
                         dice=lambda c, k: 0.6, qualitative_shift=None)
    records_with_text = scan_study(tmp_path)[0]
    assert plots.text_axes(records_with_text) == ["objective_params.sampler"]
    said = []
    plots.write_plots(records_with_text, tmp_path / "plots", log=said.append)
    assert "plot skipped: dice vs objective_params.sampler: its values are not all numbers, so no curve" in "\n".join(said)
    one_value = [r for r in axis_records if r.result["tags"]["axes"]["objective_params.temperature"] == 0.1]
    said.clear()  # --rows kept one row of the axis: its plot went away without a word (the studies probe)
    plots.write_plots(one_value, tmp_path / "plots-one", log=said.append)
    assert ("plot skipped: dice vs objective_params.temperature: every finished trial has pixel-contrast temperature τ "
            "0.1, so no curve") in "\n".join(said)


def test_training_curves_and_qualitative_overlays(records, colours):
    fig = plots.training_curves(records, colours)
    loss = "training loss (each method's objective)"
    assert _labels(fig) == [("", loss), ("", "val Dice (%)"), ("training step", loss), ("training step", "val Dice (%)")]
    assert all(handle.get_marker() == "None" for handle in fig.legends[0].legend_handles)  # the loss lines have none
    assert plots._wrap("ARCO-SG, τ = 0.1", 14) == "ARCO-SG,\nτ\u00a0=\u00a00.1"  # was "ARCO-SG, τ =" / "0.1"
    overlay = plots.qualitative_overlays(records, "1 patient (1.4%)")
    assert len(overlay.axes) == 3 * (2 + 3)  # 3 slices x (image, ground truth, 3 methods)
    assert [ax.get_title() for ax in overlay.axes[:5]] == ["image", "ground truth", "MONA", "Mean teacher", "ARCO-SG"]
    assert overlay.axes[0].get_ylabel() == "patient000_frame01\nslice 2"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    narrow = plots.qualitative_overlays([r for r in records if r.result["tags"]["row"] == "MONA"], "1 patient (1.4%)")
    for fig in (overlay, narrow):  # the title was one line, cut at both edges of a figure of one or two methods
        FigureCanvasAgg(fig).draw()
        box = fig._suptitle.get_window_extent()
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    assert len(narrow.axes) == 3 * 3 and "\n" in narrow._suptitle.get_text()
    assert isinstance(plots.qualitative_overlays(records, "7 patients (10.0%)"), plots.Skipped)


def test_a_row_whose_first_trial_kept_other_slices_is_drawn_from_another_or_named(tmp_path):
    """The plots review: only each row's first trial was tried; when its qualitative.npz held other slices than the
    reference's, the row vanished from the figure without a word, while another seed's file would have done."""
    import shutil

    from medseg_platform.engine import QualitativeSlices
    from medseg_platform.data.layout import Volume
    from medseg_platform.results import QUALITATIVE_FILE
    from tests.analysis import fakes

    study = make_fake_study(tmp_path / "r", seeds=(1, 2))
    records = scan_study(study)[0]
    column = "1 patient (1.4%)"
    teacher = sorted((r for r in records if r.result["tags"]["row"] == "Mean teacher" and tables.column_label(r) == column),
                     key=plots._qualitative_rank)
    keeper = QualitativeSlices([fakes.CASES[5]])  # other slices than every other trial's
    image, label = np.zeros((4, 40, 40), np.float32), np.zeros((4, 40, 40), np.uint8)
    label[:, 12:28, 12:28] = 2
    keeper.keep(Volume(fakes.CASES[5], image, label, (5.0, 1.5, 1.5)), label)
    keeper.save(teacher[0].path / QUALITATIVE_FILE)
    overlay = plots.qualitative_overlays(records, column)
    assert [ax.get_title() for ax in overlay.axes[:5]] == ["image", "ground truth", "MONA", "Mean teacher", "ARCO-SG"]
    assert "left out" not in overlay._suptitle.get_text()  # its seed-2 trial holds the reference's slices
    shutil.copy(teacher[0].path / QUALITATIVE_FILE, teacher[1].path / QUALITATIVE_FILE)
    overlay = plots.qualitative_overlays(records, column)
    assert [ax.get_title() for ax in overlay.axes[:4]] == ["image", "ground truth", "MONA", "ARCO-SG"]
    assert "left out: Mean teacher (no trial with these slices)" in overlay._suptitle.get_text().replace("\n", " ")


def test_search_history_and_importances(tmp_path):
    records = scan_study(make_search_study(tmp_path, n=6))[0]
    history = plots.search_history(records)
    assert _labels(history) == [("trial (in order of completion)", "best val Dice (%)")]
    importances = plots.param_importances(records)
    assert importances.axes[0].get_xlabel().startswith("importance")
    names = {t.get_text() for t in importances.axes[0].get_yticklabels()}
    assert names == {"optim.lr", "objective_params.contrast_weight", "objective_params.sampler"}
    assert isinstance(plots.param_importances(records[:1]), plots.Skipped)
    assert isinstance(plots.search_history([r for r in records if False]), plots.Skipped)
    for record in records:  # every sample scored the same (the HPO probe's smoke search): nothing to attribute
        record.result["best_val_dice"] = 0.0
    tied = plots.param_importances(records)
    assert isinstance(tied, plots.Skipped) and "all 6 completed search trials scored val Dice 0.0000" in tied.reason


def test_importances_take_the_searched_domains_bounds_and_scale():
    """A weight searched log-uniform over [0.1, 10] whose samples spanned 58x was taken as linear over the samples' own
    range (the search review): the recorded domain (study.json's search_space) now sets both."""
    samples = [0.148, 0.9, 3.1, 8.64]
    guessed = plots._distribution(samples)
    assert not guessed.log and (guessed.low, guessed.high) == (0.148, 8.64)
    recorded = plots._distribution(samples, "Float lower=0.1 upper=10.0 _LogUniform[]")
    assert recorded.log and (recorded.low, recorded.high) == (0.1, 10.0)
    assert not plots._distribution([0.86, 0.9], "Float lower=0.85 upper=0.99 _Uniform[]").log
    assert plots._distribution([4, 64], "Integer lower=1 upper=128 _LogUniform[]").log
    stale = plots._distribution([0.05, 0.9], "Float lower=0.1 upper=10.0 _LogUniform[]")  # values outside: guessed
    assert (stale.low, stale.high) == (0.05, 0.9) and not stale.log


def test_a_search_is_plotted_over_its_samples_and_shows_its_best_sample(tmp_path):
    """The studies probe: a search's plots said "over seeds" of one seed's samples, its qualitative figure showed the
    first folder's sample as "the trial of the lowest seed", and its history's best-so-far counted stopped samples."""
    from analysis.search import Sample

    study = make_search_study(tmp_path, n=4)
    for trial in (study / "trials").iterdir():  # the fake search writes no qualitative.npz
        fakes.write_qualitative(trial, 0)
    records = scan_study(study)[0]
    bars = plots.class_bars(tables.build_table(records), "dice", plots.palette(["MONA"]))
    assert "(mean \u00b1 std over search samples" in bars._suptitle.get_text()
    assert plots.training_curves(records, plots.palette(["MONA"]))._suptitle.get_text() == (
        "Training loss and validation Dice (mean over search samples)")
    best = max(records, key=lambda r: r.result["best_val_dice"])
    assert min(records, key=plots._qualitative_rank) is best
    overlay = plots.qualitative_overlays(records, "1 patient (1.4%)")
    assert "the search sample of the best val Dice" in overlay._suptitle.get_text().replace("\n", " ")  # wrapped to fit
    written, _ = plots.write_plots(records, tmp_path / "plots", log=lambda m: None)
    assert {p.path.name: p.description for p in written}["bars_dice.png"].startswith(
        "Test Dice per class and method (mean \u00b1 std over search samples)")
    samples = [Sample(i, f"t{i}", f"k{i}", status, {}, {}, 10, value, None)
               for i, (status, value) in enumerate([("completed", 0.0), ("stopped", 0.3), ("completed", 0.002)], 1)]
    history = plots.search_history(records, samples)
    line = history.axes[0].lines[0]
    assert list(line.get_ydata()) == [0.0, 0.0, 0.2]  # the stopped sample's 30 is never the best so far
    assert history.axes[0].get_ylim()[0] == 0.0


def test_write_plots_writes_non_empty_pngs_and_skips_empty_ones(records, tmp_path):
    messages = []
    written, skipped = plots.write_plots(records, tmp_path, log=messages.append)
    names = sorted(p.path.name for p in written)
    assert names == ["bars_dice.png", "bars_hd95.png", "dice_vs_label_fraction.png", "qualitative_1-patient-1-4.png",
                     "qualitative_3-patients-4-3.png", "training_curves.png"]
    for plot in written:
        assert plot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.path.stat().st_size > 5000
    assert any(reason.startswith("search history") for reason in skipped)
    assert not any("search" in m for m in messages)  # not a search: nothing printed about it


def test_crowded_or_wide_positive_axes_get_a_log_scale():
    assert plots._wants_log_scale([0.07, 0.1, 0.5, 1.0])  # 0.07 and 0.1 would print over each other
    assert plots._wants_log_scale([0.01, 0.1, 0.6])  # a wide range
    assert not plots._wants_log_scale([9, 16, 25]) and not plots._wants_log_scale([1, 3, 7])
    assert not plots._wants_log_scale([0.0, 0.5, 1.0])  # zero has no log


def test_importing_the_plots_leaves_the_users_matplotlib_backend_alone():
    """The notebook probe: `matplotlib.use("Agg")` at import replaced a notebook's backend for the user's own plots."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import matplotlib; matplotlib.use('svg'); import analysis.report, analysis.plots; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "svg", out.stderr[-500:]


def test_every_class_of_a_dataset_with_many_gets_its_own_overlay_colour():
    """The own-data review: every label above 4 drew in one colour, so a 6-class dataset's fourth and fifth classes
    (and their legend swatches) could not be told apart in the qualitative figure."""
    colours = [plots.class_colour(label) for label in range(1, 28)]
    assert len(set(colours)) == 27
    assert colours[:3] == ["#E69F00", "#009E73", "#0072B2"]  # ACDC's RV, Myo, LV as before
