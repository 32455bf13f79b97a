"""A study's ``--test-root``: each trial's selected weights scored on a second dataset's test split
(:func:`medseg_platform.predict.evaluate_on_test_root`), checked before Ray starts, shown as its own block in the
tables and the report; trials finished without it are scored at the next run from their checkpoints."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from analysis.report import write_report
from analysis.console import main
from medseg_platform.data.layout import AcdcLayout, write_manifest
from medseg_platform.data.phantom import ensure_phantom
from medseg_platform.predict import evaluate_on_test_root, has_test_root_evaluation, needs_test_root_evaluation
from medseg_platform.results import TEST_ROOT_PER_CASE
from tests.conftest import make_tiny_dataset
from tests.test_study_cli import study_main

SMOKE_PHANTOM = {"patients": 6, "size": 40}  # the smoke profile's phantom; the external one differs in its seed only


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_scoring_a_trial_on_a_test_root_equals_predict_then_evaluate(tmp_path, capsys):
    root = make_tiny_dataset(tmp_path / "tiny")
    external = make_tiny_dataset(tmp_path / "external", seed=1)
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root), "--results-dir", str(results),
                 "--set", "optim.lr=0.1", "--set", "optim.max_steps=20", "--set", "eval.val_every=10"]) == 0
    study_dir = results / "train-supervised-smoke"
    (trial,) = (study_dir / "trials").iterdir()
    assert needs_test_root_evaluation(trial, external) and not has_test_root_evaluation(trial, external)

    block = evaluate_on_test_root(trial, external)
    assert main(["predict", "--trial", str(trial), "--data-root", str(external), "--out", str(tmp_path / "pred")]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(external), "--quiet", "--out", str(tmp_path / "eval")]) == 0
    ours = read_rows(trial / TEST_ROOT_PER_CASE)
    columns = ("case", "class", "dice", "jaccard", "hd95", "asd", "assd", "n_pred", "n_gt")
    assert [[r[c] for c in columns] for r in ours] == [[r[c] for c in columns] for r in read_rows(tmp_path / "eval" / "per_case.csv")]
    assert {r["case"] for r in ours} == set(AcdcLayout(external).test_cases) and len(ours) == 2 * 3
    result = json.loads((trial / "result.json").read_text())
    assert result["test_root"] == block and block["root"] == str(external) and block["num_test_cases"] == 2
    assert 0.3 < block["test"]["mean"]["dice"] < 1.0  # a model that segments, on the other dataset too
    assert has_test_root_evaluation(trial, external) and not needs_test_root_evaluation(trial, external)
    assert needs_test_root_evaluation(trial, root)  # another root: to be scored
    # the same path holding a dataset written again (its manifest, with each file's checksum, changed): scored again,
    # not tabled from the old one; file times alone do not count (copies on other nodes have their own)
    volume = AcdcLayout(external).volume_path(AcdcLayout(external).test_cases[0])
    os.utime(volume, ns=(volume.stat().st_atime_ns, volume.stat().st_mtime_ns + 1_000_000_000))
    assert has_test_root_evaluation(trial, external)
    write_manifest(external, {"generator": "again"}, {})  # this tiny dataset had none: a converter's run writes one
    assert needs_test_root_evaluation(trial, external)
    (external / "manifest.json").unlink()
    assert has_test_root_evaluation(trial, external)

    report = write_report(study_dir, log=lambda *_: None)
    table = (study_dir / "table_dice.md").read_text()
    assert table.count("### Dice (%)") == 2 and f"### Dice (%), external test set: {external}\n" in table
    assert f"### Dice (%), external test set: {external}" in report.report.read_text()
    tex = (study_dir / "table_dice.tex").read_text()
    assert r"\label{tab:dice-external-1}" in tex and r"\caption{External test set " in tex

    # scoring that fails (an unreadable checkpoint) is recorded for the report, not only printed in a Ray worker's log
    from medseg_platform.results import TEST_ROOT_ERROR_FILE, checkpoint_path, scan_study
    from medseg_platform.study.trainable import score_test_root

    checkpoint = checkpoint_path(trial)
    kept = checkpoint.read_bytes()
    checkpoint.write_bytes(kept[: len(kept) // 2])
    write_manifest(external, {"generator": "again"}, {})  # the external dataset written again
    score_test_root(trial, str(external), trial.name)
    problems = scan_study(study_dir)[1]
    assert len(problems) == 1 and problems[0].startswith(f"external test set not scored: {trial / TEST_ROOT_ERROR_FILE}: {external}: ")
    # the evaluation of what the path held before is gone, not tabled as this dataset's
    assert "test_root" not in json.loads((trial / "result.json").read_text()) and not (trial / TEST_ROOT_PER_CASE).exists()
    checkpoint.write_bytes(kept)
    score_test_root(trial, str(external), trial.name)  # scored now: the record of the failure goes
    assert not (trial / TEST_ROOT_ERROR_FILE).exists() and scan_study(study_dir)[1] == []
    assert has_test_root_evaluation(trial, external)


@pytest.mark.parametrize("case, message", [
    ("names", "error: --test-root {root}: class names Liver, Kidney, Spleen differ from RV, Myo, LV of the study's data "
              "{data} (labels must mean the same classes; if only the names differ, convert it again with --class-names)\n"),
    ("classes", "error: --test-root {root}: a dataset of 3 classes, but the study's data {data} has 4 classes (RV, Myo, LV and "
                "background) (use a dataset labelled with the same classes)\n"),
    ("missing", "error: --test-root: {root}: dataset root does not exist"),  # names the flag (the evaluation review)
    ("truncated", "error: data preflight, nothing started: {root}/data/{case}.h5: unreadable HDF5 file"),
])
def test_a_bad_test_root_is_one_line_before_anything_runs(tmp_path, phantom_env, capsys, case, message):  # noqa: F811
    root = ensure_phantom(tmp_path / "cache", seed=1, **SMOKE_PHANTOM)
    test_case = AcdcLayout(root).test_cases[0]
    if case in ("names", "classes"):
        root = make_tiny_dataset(tmp_path / "other")
        write_manifest(root, {"converter": "a test"}, {}, ("Liver", "Kidney", "Spleen")[: 3 if case == "names" else 2])
    elif case == "missing":
        root = tmp_path / "nowhere"
    else:
        path = root / "data" / f"{test_case}.h5"
        path.write_bytes(path.read_bytes()[:200])
    results = tmp_path / "results"
    assert study_main("ablation_tailness", results, "--rows", "Supervised only", "--test-root", str(root)) == 2
    lines = capsys.readouterr().err.splitlines()  # the preflight may first say that the study's own data is fine
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and (lines[-1] + "\n").startswith(message.format(root=root, data=phantom_env, case=test_case)), lines
    assert not results.exists()  # nothing validated into Ray, nothing trained


def test_a_study_with_a_test_root_scores_new_and_earlier_trials_and_reports_the_block(tmp_path, phantom_env, ray_address, capsys):  # noqa: F811
    external = ensure_phantom(tmp_path / "cache", seed=1, **SMOKE_PHANTOM)
    results = tmp_path / "results"
    flags = ("--address", ray_address)
    assert study_main("ablation_tailness", results, *flags, "--rows", "Supervised only") == 0  # before the flag was given
    study_dir = results / "ablation_tailness-smoke"
    (supervised,) = (study_dir / "trials").iterdir()
    curves = (supervised / "curves.csv").read_bytes()
    assert not (supervised / TEST_ROOT_PER_CASE).exists()

    assert study_main("ablation_tailness", results, *flags, "--rows", "Supervised only", "Mean teacher", "--test-root", str(external)) == 0
    trials = sorted((study_dir / "trials").iterdir())
    assert len(trials) == 2 and supervised in trials
    test_cases = AcdcLayout(external).test_cases
    for trial in trials:
        result = json.loads((trial / "result.json").read_text())
        assert result["test_root"]["root"] == str(external) and result["test_root"]["num_test_cases"] == len(test_cases)
        rows = read_rows(trial / TEST_ROOT_PER_CASE)
        assert [(r["case"], r["class"]) for r in rows] == [(c, str(k)) for c in test_cases for k in (1, 2, 3)]
        assert result["attempts"] == 1  # the earlier trial was scored from its checkpoint, not trained again
    assert (supervised / "curves.csv").read_bytes() == curves
    assert json.loads((study_dir / "settings.json").read_text())["test_root"] == str(external)
    heading = f"### Dice (%), external test set: {external}\n"
    table, report = (study_dir / "table_dice.md").read_text(), (study_dir / "report.md").read_text()
    assert heading in table and heading in report and "trials have no evaluation" not in table
    assert f"- **External test set** (`--test-root`): {external}; " in report
    # the long form of the external set: table.csv's columns after test_root, the same numbers as the block
    from analysis.table_files import read_table_csv
    from analysis.table_render import to_markdown

    own, other = read_table_csv(study_dir / "table.csv"), read_table_csv(study_dir / "table_external.csv")
    assert list(other.columns) == ["test_root", *own.columns] and set(other["test_root"]) == {str(external)}
    assert to_markdown(other.drop(columns="test_root"), "dice").replace("### Dice (%)", heading.strip(), 1) in table
    assert "[table_external.csv](table_external.csv)" in report
    # the block sits after the main table, which keeps the study's own test set
    assert report.index("### Test Dice (%)") < report.index(heading) < report.index("## Tables")
    # the own test set's spacing names the main table's unit; the external block's volumes are not the trials' own
    hd95 = (study_dir / "table_hd95.md").read_text()
    assert hd95.count(" HD95 in mm. ") == 1 and hd95.index(" HD95 in mm. ") < hd95.index(" HD95 in voxels or mm as evaluated. ")

    before = {p: p.read_bytes() for p in (study_dir / "report.md", study_dir / "table_dice.md", study_dir / "table_dice.tex")}
    write_report(study_dir, log=lambda *_: None)
    assert {p: p.read_bytes() for p in before} == before  # unchanged files: identical bytes
    # the latest run without --test-root: the block stays, and the report still says where it comes from (the studies
    # walkthrough: the settings line went with the flag)
    settings = json.loads((study_dir / "settings.json").read_text())
    (study_dir / "settings.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "test_root"}))
    write_report(study_dir, log=lambda *_: None)
    assert (f"- **External test set** (`--test-root` of an earlier run of the study command): {external}; "
            in (study_dir / "report.md").read_text())
    (study_dir / "settings.json").write_text(json.dumps(settings))
    write_report(study_dir, log=lambda *_: None)
    # a trial that lost its evaluation (and its checkpoint) is counted as missing from the block
    (supervised / TEST_ROOT_PER_CASE).unlink()
    shutil.rmtree(supervised / "checkpoint")
    assert not needs_test_root_evaluation(supervised, external)  # nothing left to score it with: reported, not retried
    write_report(study_dir, log=lambda *_: None)
    assert "_1 of 2 trials have no evaluation on this test set" in (study_dir / "table_dice.md").read_text()
    # in the LaTeX table's float, printed: it was a comment, lost from a pasted table (the tables review)
    tex = (study_dir / "table_dice.tex").read_text()
    external_float = tex[tex.index("External test set"):]
    note = r"\textbf{1 of 2 trials have no evaluation on this test set"
    assert note in external_float and external_float.index(note) < external_float.index(r"\end{table}")
    assert "% 1 of 2 trials" not in tex
    # no trial scored on it any more: the long form written for it goes with the blocks
    mean_teacher = next(trial for trial in trials if trial != supervised)
    (mean_teacher / TEST_ROOT_PER_CASE).unlink()
    write_report(study_dir, log=lambda *_: None)
    assert "external test set" not in (study_dir / "table_dice.md").read_text()
    assert not (study_dir / "table_external.csv").exists() and "table_external.csv" not in (study_dir / "report.md").read_text()
