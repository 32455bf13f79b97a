"""Class names belong to the dataset (issue 12, item 6): converters and the phantom record them in the
manifest, each trial's result.json carries them, and tables, plots and reports show them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis.plots import qualitative_overlays
from analysis.report import write_report
from analysis.table_files import write_tables
from analysis.tables import build_table, column_label, study_class_names, trial_class_names
from analysis.console import main
from medseg_platform.data import phantom
from medseg_platform.data.check import check_dataset
from medseg_platform.data.layout import AcdcLayout, dataset_class_names, default_class_names, write_manifest
from medseg_platform.errors import DataError, MedsegError
from medseg_platform.results import read_trial, scan_study, trial_key, write_trial_results
from tests.analysis.fakes import FakeLabelled, FakeOutcome, write_qualitative
from tests.data.test_convert import make_acdc, make_generic


def _convert_generic(tmp_path: Path, capsys, *extra: str) -> tuple[int, str, Path]:
    raw, out = tmp_path / "raw", tmp_path / "out"
    if not raw.exists():
        make_generic(raw, ["a", "b", "c", "d"], num_classes=3)
    rc = main(["data", "convert-nifti", str(raw), str(out), "--num-classes", "3", "--val-count", "1", "--test-count", "1", *extra])
    return rc, capsys.readouterr().err, out


def _write_trial(study: Path, root: Path, num_classes: int, seed: int = 1, row: str = "MONA") -> Path:
    """A finished trial on dataset ``root`` (classes 1..num_classes-1, Dice 0.5 + 0.1 * class)."""
    config = {"objective": "mona", "seed": seed, "data": {"root": str(root), "num_classes": num_classes, "labelled": "1"},
              "optim": {"max_steps": 10}}
    rows = [{"case": f"case{i}", "class": c, "dice": 0.5 + 0.1 * c, "jaccard": 0.3, "hd95": 1.0, "asd": 0.5}
            for i in range(2) for c in range(1, num_classes)]
    trial_dir = study / "trials" / trial_key({**config, "row": row})
    write_trial_results(trial_dir, config=config, tags={"row": row}, outcome=FakeOutcome(FakeLabelled(1), rows), seed=seed)
    return trial_dir


def test_convert_nifti_class_names_reach_the_manifest_the_result_and_the_table(tmp_path, capsys):
    rc, err, out = _convert_generic(tmp_path, capsys, "--class-names", "liver, tumour")
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["class_names"] == ["liver", "tumour"]
    assert AcdcLayout(out, 3).class_names == ("liver", "tumour")

    study = tmp_path / "results" / "s"
    trial = _write_trial(study, out, num_classes=3)
    assert json.loads((trial / "result.json").read_text())["class_names"] == ["liver", "tumour"]
    shutil.rmtree(out)  # the results stay readable without the data folder
    records, problems = scan_study(study)
    assert problems == [] and trial_class_names(records[0]) == ("liver", "tumour")
    df = build_table(records, metrics=("dice",))
    assert list(df["class"]) == ["liver", "tumour", "Avg"]
    assert list(df["mean"]) == pytest.approx([60.0, 70.0, 65.0])  # 0.5 + 0.1 * class, in percent; Avg of the two
    paths = write_tables(records, study, metrics=("dice",))
    header = (study / "table_dice.md").read_text().splitlines()
    assert any("liver" in line and "tumour" in line and "RV" not in line for line in header)
    assert [p.name for p in paths] == ["table_dice.md", "table_dice.tex", "table.csv"]


def test_convert_nifti_without_names_records_generic_ones(tmp_path, capsys):
    rc, err, out = _convert_generic(tmp_path, capsys)
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["class_names"] == ["class 1", "class 2"]


@pytest.mark.parametrize("names, message", [("liver", "1 class name(s) ['liver'] for 3 classes"),
                                            ("liver,liver", "repeat a name"),
                                            ("liver,Avg", "'Avg' is reserved"),
                                            ("liver,avg", "'avg' is reserved"),  # letter case used to get past the rules
                                            ("Liver,liver", "repeat a name"),
                                            ("liver,", "must be non-empty"),
                                            # the security review: a carriage return rewrote the terminal and report
                                            # lines; a leading '=' ran as a formula in a spreadsheet opening table.csv
                                            ("liver,tu\rmour", "without commas, line breaks or other control characters"),
                                            ("liver,=HYPERLINK(1)", "must not start with '=', '+', '-' or '@'")])
def test_bad_class_names_are_a_one_line_error_before_anything_is_written(tmp_path, capsys, names, message):
    rc, err, out = _convert_generic(tmp_path, capsys, "--class-names", names)
    assert rc == 2 and message in err and err.startswith("error: --class-names") and err.count("\n") == 1
    assert not out.exists()


def test_convert_acdc_defaults_to_rv_myo_lv_and_takes_other_names(tmp_path, capsys):
    raw = tmp_path / "ACDC"
    make_acdc(raw)
    assert main(["data", "convert-acdc", str(raw), str(tmp_path / "default")]) == 0
    assert json.loads((tmp_path / "default" / "manifest.json").read_text())["class_names"] == ["RV", "Myo", "LV"]
    assert main(["data", "convert-acdc", str(raw), str(tmp_path / "named"), "--class-names", "right ventricle,myocardium,left ventricle"]) == 0
    assert AcdcLayout(tmp_path / "named").class_names == ("right ventricle", "myocardium", "left ventricle")
    capsys.readouterr()
    assert main(["data", "convert-acdc", str(raw), str(tmp_path / "bad"), "--class-names", "RV,LV"]) == 2
    assert "2 class name(s) ['RV', 'LV'] for 4 classes" in capsys.readouterr().err


def test_phantom_records_the_names_of_what_it_draws(tmp_path):
    out = phantom.generate_phantom(tmp_path / "ph", patients=3, size=32, seed=0)
    assert json.loads((out / "manifest.json").read_text())["class_names"] == ["RV", "Myo", "LV"]
    assert phantom.holds_phantom(out, phantom.PhantomParams(3, 32, 0))  # the cache still recognises it


def test_dataset_without_names_gets_defaults_by_number_of_classes(tiny_root):
    assert not (tiny_root / "manifest.json").exists()
    assert dataset_class_names(tiny_root, 4) == ("RV", "Myo", "LV")
    assert dataset_class_names(tiny_root, 3) == ("class 1", "class 2")
    assert default_class_names(6) == ("class 1", "class 2", "class 3", "class 4", "class 5")
    write_manifest(tiny_root, {"converter": "an old version"}, {})  # a manifest from before class names
    assert "class_names" not in json.loads((tiny_root / "manifest.json").read_text())
    assert AcdcLayout(tiny_root).class_names == ("RV", "Myo", "LV")


def test_old_results_without_names_use_the_defaults_of_their_num_classes(tmp_path):
    study = tmp_path / "s"
    _write_trial(study, tmp_path / "gone", num_classes=3)  # no data folder: nothing recorded
    record = read_trial(next((study / "trials").iterdir()))
    assert "class_names" not in record.result
    assert trial_class_names(record) == ("class 1", "class 2")
    assert list(build_table([record], metrics=("dice",))["class"]) == ["class 1", "class 2", "Avg"]


def test_manifest_names_must_match_num_classes(tiny_root):
    write_manifest(tiny_root, {}, {}, class_names=["liver", "tumour"])  # 2 names, but the data have 4 classes
    with pytest.raises(DataError, match=r"manifest.json: 'class_names': 2 class name\(s\) \['liver', 'tumour'\] for 4 classes"):
        AcdcLayout(tiny_root, 4).class_names
    report = check_dataset(tiny_root, 4)
    assert len(report.problems) == 1 and "2 class name(s)" in report.problems[0]
    assert AcdcLayout(tiny_root, 3).class_names == ("liver", "tumour")


def test_a_study_mixing_datasets_with_other_names_is_a_one_line_report_error(tmp_path, tiny_root, capsys):
    named = tmp_path / "named"
    shutil.copytree(tiny_root, named)
    write_manifest(named, {}, {}, class_names=["a", "b", "c"])
    study = tmp_path / "results" / "mixed"
    first = _write_trial(study, tiny_root, num_classes=4, seed=1)
    second = _write_trial(study, named, num_classes=4, seed=2)
    records, _ = scan_study(study)
    with pytest.raises(MedsegError) as info:
        study_class_names(records)
    message = str(info.value)
    assert "\n" not in message and "class names" in message and "RV, Myo, LV" in message and "a, b, c" in message
    assert {first.name, second.name} & set(message.replace("/", " ").split())
    with pytest.raises(MedsegError, match="class names"):
        write_report(study, log=lambda m: None)
    assert not (study / "table.csv").exists() and not (study / "report.md").exists()
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "class names" in err


def test_report_table_and_overlay_legend_name_the_classes_of_the_dataset(tmp_path, tiny_root):
    write_manifest(tiny_root, {}, {}, class_names=["cortex", "medulla", "pelvis"])
    study = tmp_path / "results" / "kidney"
    write_qualitative(_write_trial(study, tiny_root, num_classes=4), shift=0)
    report = write_report(study, log=lambda m: None)
    assert "; classes cortex, medulla, pelvis" in report.report.read_text()
    table = (study / "table_dice.md").read_text()
    assert "cortex" in table and "pelvis" in table and "RV" not in table
    assert build_table(report.records, metrics=("dice",)).set_index("class").loc["pelvis", "mean"] == pytest.approx(80.0)
    figure = qualitative_overlays(report.records, column_label(report.records[0]))
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["cortex", "medulla", "pelvis"]


def test_names_from_a_dataset_reach_the_report_as_text_not_markup(tmp_path, tiny_root):
    """The security review: class names went into report.md raw (an HTML comment hid the rest of the report, a link
    with a script URL was clickable) and a '$' in one failed the whole report in matplotlib's math parser."""
    write_manifest(tiny_root, {}, {}, class_names=["RV<!--", "[click](javascript:alert(1))", "$\\badcmd$"])
    study = tmp_path / "results" / "names"
    write_qualitative(_write_trial(study, tiny_root, num_classes=4), shift=0)
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text()
    assert "; classes RV&lt;!--, [click]\\(javascript:alert(1)), \\$\\\\badcmd\\$" in text  # no math either (the tables review)
    assert "<!--" not in text and "](javascript" not in text
    table = (study / "table_dice.md").read_text()
    assert "RV&lt;!--" in table and "<!--" not in table
    assert (study / "plots" / "bars_dice.png").is_file()  # drawn: '$...$' is text in the plots
