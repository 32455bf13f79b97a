"""report.md, and `medseg report` regenerating a finished study's files byte for byte."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from analysis.report import write_report
from medseg_platform.errors import MedsegError
from analysis.console import main
from tests.analysis.fakes import case_offset, make_fake_study, make_search_study, write_fake_trial


@pytest.fixture
def study(tmp_path):
    return make_fake_study(tmp_path / "results")


def _outputs(study_dir):
    files = [*study_dir.glob("table*"), study_dir / "report.md"]
    return {p.name: p.read_bytes() for p in files}


def test_medseg_report_regenerates_identical_tables(study, capsys):
    first = write_report(study, log=lambda m: None)  # what the study command writes after its run
    assert [p.name for p in first.tables][-1] == "table.csv" and len(first.tables) == 9
    written = _outputs(study)
    for path in first.tables:
        path.unlink()
    # the results folder: every study in it. The fake study's errored and corrupt trials leave its tables incomplete:
    # exit 1, as the study command's (it exited 0, so a script that published the tables after it went on)
    assert main(["report", str(study.parent)]) == 1
    assert _outputs(study) == written
    out, err = capsys.readouterr()
    assert f"Report: {study / 'report.md'}" in out and str(study / "plots" / "bars_dice.png") in out
    assert str(study / "table_dice.md") in out
    assert err.strip().splitlines()[-1].startswith(f"{study.name}: incomplete: 2 of the study's 14 trials have no result")


def test_medseg_report_exits_0_for_a_complete_study(study, capsys):
    info = json.loads((study / "study.json").read_text(encoding="utf-8"))
    unfinished = ["action-l1-s1-0000000000", "arco-l1-s1-1111111111"]  # the fake study's errored and corrupt trials
    for key in unfinished:
        shutil.rmtree(study / "trials" / key)
    info["trials"] = [k for k in info["trials"] if k not in unfinished]
    (study / "study.json").write_text(json.dumps(info), encoding="utf-8")
    assert main(["report", str(study)]) == 0
    assert "incomplete" not in capsys.readouterr().err


def test_report_states_settings_problems_and_links_that_exist(study):
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text(encoding="utf-8")
    for expected in ("# Report: fake-quick", "- **Profile**: quick", "`python studies/fake.py --seeds 1 2`",
                     "- **Dataset**: /data/phantom; 70 training patients, 8 test cases", "- **Seeds**: 1, 2",
                     "- **Iterations**: 40 fine-tuning steps (validation every 20",
                     "none: Mean teacher", "1 stage (10 steps): MONA, ARCO-SG", "- **Precision**: full precision (float32)\n",
                     "- **Label fractions**: 1 patient (1.4%), 3 patients (4.3%)",
                     "- **Trials**: 12 of 14 finished, 1 errored, 1 corrupt",
                     "last run of the study command 5.3 min (321 s)",
                     "errored trial action-l1-s1-0000000000: non-finite loss at step 7 in term(s) anco",
                     "corrupt result:", "### Test Dice (%)", "contains 0"):
        assert expected in text, expected
    # the tables themselves say that 2 of the 14 trials (one errored, one corrupt) are not in them
    note = "Incomplete: 12 of the study's 14 trials have a result; the others' cells are missing or average fewer seeds"
    assert f"**{note}" in (study / "table_dice.md").read_text()
    tex = (study / "table_dice.tex").read_text()  # printed inside the float (a comment was lost in a pasted table)
    assert f"\\par\\smallskip{{\\footnotesize\\textbf{{{note}" in tex and tex.index(note) < tex.index("\\end{table}")
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "table_dice.tex" in links and "plots/training_curves.png" in links and len(links) >= 15
    assert all((study / link).is_file() for link in links)


def test_a_damaged_settings_or_last_run_file_is_a_problem_not_a_lost_report(study):
    """The concurrency review: a damaged last_run.json or settings.json (they only describe the run) stopped the whole
    report with study.json's reason ("without it a report would table every trial"); the report is written without
    what they hold, and says so. A damaged study.json still stops it."""
    from medseg_platform.results import LAST_RUN_FILE, SETTINGS_FILE

    (study / SETTINGS_FILE).write_bytes(b"\x00\x00")
    (study / LAST_RUN_FILE).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")  # deeper than json's recursion
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text(encoding="utf-8")
    assert "- **Trials**: 12 of 14 finished" in text and "`python studies/fake.py" not in text  # the command was settings'
    assert f"{study / SETTINGS_FILE}: not valid JSON (" in text and "leaves out the command's settings" in text
    assert f"{study / LAST_RUN_FILE}: not valid JSON (" in text and "leaves out the last run's wall time" in text
    assert "- **Profile**: unknown (no readable settings.json)" in text
    odd = make_fake_study(study.parent.parent / "a; b")  # a ';' in the path: the reason was cut there (the diff review)
    (odd / SETTINGS_FILE).write_bytes(b"\x00")
    assert any(p.startswith(f"{odd / SETTINGS_FILE}: not valid JSON (") for p in write_report(odd, log=lambda m: None).problems)
    (study / "study.json").write_text("{", encoding="utf-8")
    with pytest.raises(MedsegError, match="study.json: not valid JSON .*; rerun the study command"):
        write_report(study, log=lambda m: None)


def test_search_report_lists_the_best_configurations(tmp_path):
    study = make_search_study(tmp_path, n=6)
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text(encoding="utf-8")
    assert "## Best configurations" in text and "(Optuna search)" in text
    # the search walkthrough: the report never said which row is best_config.json's, nor how to use it; it says so when
    # best_config.json names that row (this fake search has no Tune experiment, so its summary is not rewritten)
    section = text.split("## Best configurations")[1].split("\n## ")[0]
    first = section.split("\n| ")[3].split(" |")[0]  # the first row after the header and its rule
    assert "search's choice" not in section  # no best_config.json: nothing to name
    (study / "best_config.json").write_text(json.dumps({"trial_key": first}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    section = text.split("## Best configurations")[1].split("\n## ")[0]
    assert "The first row is the search's choice, `best_config.json`." in section
    assert (f"- train it with another seed: `medseg train --config {study / 'best_config.json'} --seed 2 --results-dir "
            f"{study.parent}` (its own seed gives the trial above, which medseg train reuses)") in section
    assert f"- predict with its weights: `medseg predict --trial {study / 'trials' / first} --out PREDICTIONS`" in section
    (study / "best_config.json").write_text(json.dumps({"trial_key": "another"}), encoding="utf-8")  # an earlier report's
    assert "search's choice" not in write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "Incomplete" not in (study / "table_dice.md").read_text()  # a search has no fixed trial list
    assert {p.name for p in report.plots} >= {"search_history.png", "param_importances.png"}


def test_errored_search_samples_without_an_error_file_are_problems_and_a_rerun_is_not_the_advice(tmp_path, capsys, monkeypatch,
                                                                                                 no_plots):
    """The diff review: a sample whose application error reached Tune but whose error.json a full disk refused was
    "errored" in search_history.csv while the report said "Problems: none" and "0 errored", and the exit line advised a
    rerun, which trains no ended sample of a search again."""
    from types import SimpleNamespace

    import analysis.search
    from medseg_platform.profiles import PROFILES
    from medseg_platform.results import search_trial_key, write_trial_error

    study = tmp_path / "hparam_search-mona-smoke"
    (study / "ray" / "hparam_search-mona-smoke-abc").mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"name": "hparam_search-mona-smoke", "spec_hash": "abc", "search": True,
                                                  "num_samples": 2, "trials": []}), encoding="utf-8")
    base = PROFILES["smoke"].trial.replace(objective="supervised").to_dict()

    def errored(index: int, lr: float):
        return SimpleNamespace(trial_id=f"id{index}", experiment_tag=f"{index}_optim.lr={lr}", status="TERMINATED",
                               config={"trial": {"config": base, "tags": {"row": "Sup"}}, "search": {"optim.lr": lr}},
                               last_result={"step": 2, "best_val_dice": float("nan"), "test_dice": float("nan"), "done": True,
                                            "errored": True, "error": f"step 2: loss is NaN/inf (sample {index})"})

    trials = [errored(1, 1e9), errored(2, 1e12)]
    monkeypatch.setattr(analysis.search, "tune_trial_states", lambda path: trials)
    recorded = search_trial_key({**base, "optim": {**base["optim"], "lr": 1e9}}, "id1")
    write_trial_error(study / "trials" / recorded, config=base, tags={}, seed=1, error="step 2: loss is NaN/inf (sample 1)")
    unrecorded = analysis.search.samples_from_trials(study, trials)[1].key
    assert main(["report", str(study)]) == 1
    err = capsys.readouterr().err
    text = (study / "report.md").read_text(encoding="utf-8")
    assert (f"errored trial {unrecorded}: step 2: loss is NaN/inf (sample 2) (search sample 2; no error.json in its folder: "
            "search_history.csv keeps what Tune reported)") in text
    assert "0 finished, 2 errored, 0 corrupt" in text and "Problems: none" not in text
    assert err.strip().splitlines()[-1] == (
        "hparam_search-mona-smoke: no finished trial: 2 errored (the problems above and search_history.csv say why); fix the "
        "cause first (e.g. a lower --set optim.lr): a rerun of the search command runs again the samples that crashed, not "
        "those that ended with an application error (a NaN loss, bad data), for which run the search again under a new --name")


def test_medseg_report_on_an_empty_or_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no study here" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    study = make_fake_study(tmp_path / "a-study")  # a trial folder given: its study named (the walkthrough)
    trial = next(p for p in (study / "trials").iterdir() if (p / "result.json").is_file())
    assert main(["report", str(trial)]) == 2
    assert f"a trial folder, not a study; its study is {study} (medseg report {study})" in capsys.readouterr().err
    notes = tmp_path / "notes"  # an empty trials/ folder is not a study: a report.md there is not replaced
    (notes / "trials").mkdir(parents=True)
    (notes / "report.md").write_text("my notes", encoding="utf-8")
    assert main(["report", str(notes)]) == 2 and (notes / "report.md").read_text(encoding="utf-8") == "my notes"
    assert "no study here" in capsys.readouterr().err
    (tmp_path / "empty-study" / "trials" / "mona-l1-s1-x").mkdir(parents=True)  # a study whose trials never finished: exit 1, and why
    assert main(["report", str(tmp_path / "empty-study")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("empty-study: no finished trial (no trials/*/result.json); "
                                                                "run its study command to train them")
    # every trial errored (the reports probe: "run its study command" retrains them into the same NaN)
    (tmp_path / "empty-study" / "trials" / "mona-l1-s1-x" / "error.json").write_text('{"error": "non-finite loss"}', encoding="utf-8")
    assert main(["report", str(tmp_path / "empty-study")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "empty-study: no finished trial: 1 errored (the problems above and trials/*/error.json say why); fix the cause first "
        "(e.g. a lower --set optim.lr), then rerun the study command, which trains them again")
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    assert main(["report", str(afile)]) == 2
    assert f"{afile}: a file, not a folder (give a study folder" in capsys.readouterr().err


def test_a_report_of_a_running_study_says_its_missing_trials_are_running(study):
    """The reports probe: ``medseg report`` beside a running study said each pending trial was "not run yet or
    interrupted; rerun the study command to resume"."""
    import fcntl

    info = json.loads((study / "study.json").read_text(encoding="utf-8"))
    (study / "study.json").write_text(json.dumps({**info, "trials": [*info["trials"], "mona-l7-s1-0000000000"]}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "trial mona-l7-s1-0000000000 has no result (not run yet or interrupted" in text and ", 1 not run or interrupted" in text
    with open(study / ".lock", "a+", encoding="utf-8") as held:  # as medseg_platform.io.folder_lock holds it for a run
        held.write("pid 4242 on node1, since 2026-12-06T08:00:00+00:00\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert ("trial mona-l7-s1-0000000000 has no result yet: the study is running there (pid 4242 on node1, since "
            "2026-12-06T08:00:00+00:00); this report is a snapshot") in text
    assert ", 1 still to finish (the study is running)" in text and "interrupted" not in text
    # and it removes no output of the running study that it does not write itself (the security audit)
    (study / "plots" / "qualitative_99 patients.png").write_bytes(b"png")
    with open(study / ".lock", "a+", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        write_report(study, log=lambda m: None)
    assert (study / "plots" / "qualitative_99 patients.png").exists()
    write_report(study, log=lambda m: None)  # the study ended: a stale plot goes
    assert not (study / "plots" / "qualitative_99 patients.png").exists()


def test_a_running_study_without_a_finished_trial_is_not_told_to_run_its_command(tmp_path):
    """`medseg report` beside a running study listed the running trials, then ended with "no finished trial ...; run its
    study command to train them" (the workflow probe)."""
    import fcntl

    from analysis.cli import no_result_reason

    (tmp_path / "trials").mkdir()
    assert no_result_reason(tmp_path).endswith("run its study command to train them")
    with open(tmp_path / ".lock", "a+", encoding="utf-8") as held:
        held.write("pid 4242 on node1, since 2026-12-06T08:00:00+00:00\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        assert no_result_reason(tmp_path) == ("no finished trial yet: the study is running; its command writes the report "
                                              "when it ends")


def test_a_study_whose_every_result_is_unreadable_says_so_instead_of_no_result(study, capsys):
    results = list(study.glob("trials/*/result.json"))
    for path in results:
        path.write_text("{", encoding="utf-8")  # truncated
    assert main(["report", str(study)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{study.name}: no readable result: {len(results)} trials/*/result.json file(s) could not be read")


def test_a_study_whose_readable_results_are_all_left_out_says_so(study, capsys):
    info = json.loads((study / "study.json").read_text(encoding="utf-8"))
    (study / "study.json").write_text(json.dumps({**info, "trials": ["mona-l9-s9-0000000000"]}), encoding="utf-8")
    assert main(["report", str(study)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{study.name}: no finished trial of this study: the ") and "readable" in last
    assert "could not be read" not in last


def test_a_bad_claim_or_a_plots_file_is_an_error_before_anything_is_rewritten(study, capsys):
    write_report(study, log=lambda m: None)
    before = _outputs(study)
    info = json.loads((study / "study.json").read_text(encoding="utf-8"))
    info["claims"] = [{"a": "MONA", "b": "Mean teacher", "direction": "<"}]
    (study / "study.json").write_text(json.dumps(info), encoding="utf-8")
    mtimes = {p: p.stat().st_mtime_ns for p in study.rglob("*.png")}
    assert main(["report", str(study)]) == 2
    assert "study.json claims[0]" in capsys.readouterr().err
    assert _outputs(study) == before and {p: p.stat().st_mtime_ns for p in study.rglob("*.png")} == mtimes
    del info["claims"]
    (study / "study.json").write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(study / "plots")
    (study / "plots").write_text("not a folder", encoding="utf-8")
    assert main(["report", str(study)]) == 2
    assert "plots: not a folder" in capsys.readouterr().err and _outputs(study) == before


def test_a_study_file_that_is_not_a_json_object_is_a_one_line_error(study, capsys):
    """It used to be read as empty, and the report was written without the study's trial list. A settings.json that is
    no object is a problem line instead, and the report is written without its settings (the concurrency review)."""
    (study / "study.json").write_text("[1, 2]", encoding="utf-8")
    assert main(["report", str(study)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {study / 'study.json'}: holds an array, not a JSON object; rerun the study command, which writes it again "
        "(without it a report would table every trial in the folder, whatever command trained it)"]
    assert not (study / "report.md").exists() and not list(study.glob("table*"))
    shutil.rmtree(study.parent)
    study = make_fake_study(study.parent)
    (study / "settings.json").write_text('"x"', encoding="utf-8")
    assert main(["report", str(study)]) == 1  # the fake study's errored and corrupt trials: incomplete, as without it
    assert f"{study / 'settings.json'}: holds a string, not a JSON object; the report leaves out" in capsys.readouterr().out
    assert (study / "report.md").is_file()


def test_report_says_when_every_trial_plateaued(study):
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text(encoding="utf-8")
    assert "## Trial health" in text and "All 12 judged trials plateaued (none still rising, collapsed or failing to learn)." in text
    assert not any(p.startswith("trial health") for p in report.problems) and "§" not in text


def test_report_lists_still_rising_and_collapsed_trials_and_marks_their_cells(study):
    def mona(seed, val_curve):  # rewrites the MONA / 1 patient trial of ``seed`` (same config, same folder)
        dice = lambda case, cls: 0.6 + 0.02 * seed + case_offset(case) + 0.01 * (cls - 2)  # noqa: E731
        return write_fake_trial(study, row="MONA", order=0, patients=1, seed=seed, dice=dice,
                                pretrain=[{"max_steps": 10}], val_curve=val_curve).name
    rising, collapsed = mona(1, [(20, 0.50), (40, 0.62)]), mona(2, [(20, 0.80), (40, 0.55)])
    report = write_report(study, log=lambda m: None)
    text = report.report.read_text(encoding="utf-8")
    section = text.split("## Trial health", 1)[1].split("\n## ", 1)[0]
    assert "2 of 12 judged trials flagged: 1 still rising, 1 collapsed." in section
    assert f"| {rising} | MONA | 1 patient (1.4%) | 1 | still rising | 62.0 | 50.0 | 62.0 | 40 |" in section
    assert f"| {collapsed} | MONA | 1 patient (1.4%) | 2 | collapsed | 55.0 | 80.0 | 80.0 | 20 |" in section
    assert section.count("| still rising |") + section.count("| collapsed |") == 2
    problem = "trial health: 2 of 12 judged trials flagged (1 still rising, 1 collapsed); see Trial health"
    assert problem in report.problems and f"- {problem}" in text
    mona_line = next(line for line in text.splitlines() if line.startswith("| MONA "))
    cells = [c.strip() for c in mona_line.split("|")[2:-1]]
    assert all(c.endswith("§") for c in cells[:4]) and not any("§" in c for c in cells[4:])
    assert ("§ 4 of 24 cells include a trial flagged at the end of training: 1 still rising (the last validation its best "
            "and more than 1 val Dice point above the previous one); 1 collapsed (the last validation more than 10 points "
            "below the best); listed under Trial health in report.md.") in text


def test_report_states_the_protocol_and_what_the_trials_did(study, no_plots):
    head = "- **Protocol**: {0} (`--protocol {0}`; docs/evaluation.md, 'Released evaluation protocol'): "
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert (head.format("corrected") + "model selected on val; undefined values of empty masks left out (NaN); HD95/ASD in "
            "mm where the volumes have a spacing (else voxels); labelled: whole patients in the published order\n") in text
    for path in (study / "trials").glob("*/result.json"):  # what --protocol released gives on the phantom
        if path.read_text(encoding="utf-8") == "{truncated":  # the fake study's corrupt trial
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        result["config"]["eval"].update(selection="final", empty_policy="released", distance_units="voxel")
        path.write_text(json.dumps(result), encoding="utf-8")
    settings = json.loads((study / "settings.json").read_text(encoding="utf-8"))
    (study / "settings.json").write_text(json.dumps({**settings, "protocol": "released"}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert (head.format("released") + "final-iteration weights tested; an empty prediction scored as distance 0; HD95/ASD "
            "in voxels; labelled: whole patients in the published order (the released slice counts exist only for the "
            "SSL4MIS ACDC list)\n") in text
    assert "(validation every 20; final-iteration weights tested)" in text


def test_a_run_that_trained_nothing_says_so_instead_of_its_wall_time(study, no_plots):
    (study / "last_run.json").write_text(json.dumps({"timing": {"total_s": 0.018}, "pending_at_start": 0}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Wall time**: the last run of the study command had nothing to train (every trial had finished); " in text
    assert "0.0 s" not in text
    # a run that only scored finished trials on --test-root said "7 trial(s) to run at its start" (the studies walkthrough)
    (study / "last_run.json").write_text(json.dumps({"timing": {"total_s": 16.9}, "pending_at_start": 7,
                                                     "test_root_only_at_start": 7}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert ("- **Wall time**: the last run of the study command had nothing to train; it scored 7 finished trial(s) on "
            "--test-root in 16.9 s") in text
    (study / "last_run.json").write_text(json.dumps({"timing": {"total_s": 16.9}, "pending_at_start": 7,
                                                     "test_root_only_at_start": 2}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "(7 trial(s) to run at its start; 2 of them finished, to score on --test-root only)" in text


def _set_environment(path, environment):
    result = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**result, "environment": environment}), encoding="utf-8")


def test_report_names_the_machines_and_warns_when_the_trials_ran_on_several(study, no_plots):
    results = sorted(p for p in (study / "trials").glob("*/result.json") if p.read_text(encoding="utf-8") != "{truncated")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert f"- **Machines**: {len(results)} trials not recorded\n" in text  # results of earlier code say so
    _set_environment(results[0], {"cpu": "Intel(R) Xeon(R) Processor", "accelerator": None, "torch": "2.13.0+cpu"})
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")  # a seed added later: no warning
    assert f"- **Machines**: Intel(R) Xeon(R) Processor, torch 2.13.0+cpu; {len(results) - 1} trials not recorded\n" in text
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "accelerator": None, "torch": "2.13.0+cpu", "python": "3.11.7",
            "platform": "Linux-x86_64"}
    for path in results:
        _set_environment(path, xeon)
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Machines**: Intel(R) Xeon(R) Processor, torch 2.13.0+cpu\n" in text
    _set_environment(results[0], {**xeon, "python": "3.12.1"})  # versions that do not decide the numbers: one machine
    assert "- **Machines**: Intel(R) Xeon(R) Processor, torch 2.13.0+cpu\n" in write_report(study, log=lambda m: None).report.read_text()
    _set_environment(results[0], {**xeon, "cpu": "AMD EPYC Processor"})
    _set_environment(results[1], {**xeon, "accelerator": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128"})
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("- **Machines**"))
    assert line.startswith("- **Machines**: mixed: AMD EPYC Processor, torch 2.13.0+cpu (1 trial); NVIDIA H100 80GB HBM3, "
                           f"Intel(R) Xeon(R) Processor, torch 2.13.0+cu128 (1 trial); Intel(R) Xeon(R) Processor, torch "
                           f"2.13.0+cpu ({len(results) - 2} trials). ")
    assert "docs/analysis.md, 'Reproducibility across machines'" in line


def test_a_search_with_samples_left_to_end_is_unfinished():
    """A stopped search: its report lists it and hparam_search prints its best configuration as "so far"."""
    from analysis.search import Sample, unfinished_search

    def sample(order, status):
        return Sample(order, f"t{order}", f"k{order}", status, {}, {}, None, None, None)

    ended = [sample(1, "completed"), sample(2, "stopped early"), sample(3, "errored")]
    assert unfinished_search(ended, 3) == ""
    assert unfinished_search(ended + [sample(4, "unfinished")], 4) == ("search unfinished: 3 of 4 samples ended; rerun the "
                                                                       "study command to finish it")
    assert unfinished_search(ended, 6) == "search unfinished: 3 of 6 samples ended; rerun the study command to finish it"


def test_an_unfinished_search_report_says_so_for_the_exit_code(tmp_path, monkeypatch):
    """A search that printed "search unfinished ... rerun the study command" exited 0 (the runner review): the report now
    carries it, and the study command exits 1 on it as on a grid trial left without a result."""
    import analysis.search as search_module
    from analysis.search import Sample

    study = make_search_study(tmp_path, n=6)
    keys = sorted(p.parent.name for p in (study / "trials").glob("*/result.json"))
    samples = [Sample(i, f"t{i}", key, "completed", {}, {}, None, None, None) for i, key in enumerate(keys)]
    info = json.loads((study / "study.json").read_text())
    monkeypatch.setattr(search_module, "write_search_summary", lambda folder: ([], None, samples + [
        Sample(len(samples), "late", "late-key", "unfinished", {}, {}, None, None, None)]))
    info["num_samples"] = len(samples) + 1
    (study / "study.json").write_text(json.dumps(info))
    report = write_report(study, log=lambda m: None)
    assert report.unfinished and any(p.startswith("search unfinished: 6 of 7 samples ended") for p in report.problems)
    monkeypatch.setattr(search_module, "write_search_summary", lambda folder: ([], None, samples))
    info["num_samples"] = len(samples)
    (study / "study.json").write_text(json.dumps(info))
    assert not write_report(study, log=lambda m: None).unfinished


def test_tables_and_plots_the_trials_no_longer_give_are_removed(study):
    from analysis.plots import is_plot_name

    first = write_report(study, log=lambda m: None)
    assert (study / "table.csv").is_file() and (study / "plots" / "bars_dice.png").is_file()
    assert first.plots and all(is_plot_name(p.name) for p in first.plots)  # every plot it writes is one it may remove
    search = write_report(make_search_study(study.parent / "search"), log=lambda m: None)
    assert {"search_history.png", "param_importances.png"} <= {p.name for p in search.plots}
    assert all(is_plot_name(p.name) for p in search.plots)
    (study / "plots" / "notes.txt").write_text("kept", encoding="utf-8")  # not report outputs: kept
    (study / "plots" / "my_figure.png").write_bytes(b"png")
    for trial in (study / "trials").glob("*/result.json"):
        trial.unlink()
    again = write_report(study, log=lambda m: None)
    assert again.records == [] and again.tables == [] and again.plots == []
    assert not [p for p in first.paths if p.is_file() and p.name != "report.md"]  # no table or plot with old numbers
    assert (study / "plots" / "notes.txt").read_text(encoding="utf-8") == "kept" and "0 of 14 finished" in again.report.read_text()
    assert (study / "plots" / "my_figure.png").read_bytes() == b"png"


def test_finished_trials_left_out_of_the_study_as_last_defined_are_named(study):
    """A run with --rows into the folder of a full study narrows study.json; the report says what it leaves out."""
    info = json.loads((study / "study.json").read_text())
    keep = [k for k in info["trials"] if (study / "trials" / k / "result.json").is_file()][:2]
    (study / "study.json").write_text(json.dumps({**info, "trials": keep}), encoding="utf-8")
    report = write_report(study, log=lambda m: None)
    assert len(report.records) == 2
    from medseg_platform.results import scan_study

    left_out = sorted(r.path.name for r in scan_study(study)[0] if r.path.name not in keep)
    named = f"{', '.join(left_out[:3])} and 7 more"
    assert any(p.startswith(f"10 finished trial(s) in trials/ ({named}) are not part of this study as its last command "
                            "defined it") for p in report.problems)


def test_one_unreadable_study_does_not_stop_the_others(tmp_path, capsys):
    bad = make_fake_study(tmp_path / "results", name="a-bad")
    good = make_fake_study(tmp_path / "results", name="b-good")
    (bad / "study.json").write_text("[]", encoding="utf-8")
    assert main(["report", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad / 'study.json'}: holds an array" in err
    assert "2 of 2 studies not regenerated or incomplete" in err  # the good one's errored and corrupt trials too
    assert (good / "report.md").is_file() and (good / "table_dice.md").is_file()
    # the report review: a study.json whose trials are no list was a TypeError that stopped the studies after it
    (bad / "study.json").write_text(json.dumps({"trials": 5}), encoding="utf-8")
    (good / "report.md").unlink()
    assert main(["report", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad / 'study.json'}: its 'trials' is not a list of trial keys" in err and (good / "report.md").is_file()
    # and any other failure of one study (a bug) is named with its type, and the others go on
    from unittest import mock

    import analysis.report as report_module

    real = report_module.write_report
    with mock.patch.object(report_module, "write_report",
                           side_effect=lambda d, **k: (_ for _ in ()).throw(KeyError("x")) if d == bad else real(d, **k)):
        (good / "report.md").unlink()
        assert main(["report", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert "error: KeyError: 'x' (a bug or a hand-edited file)" in err and (good / "report.md").is_file()


def test_the_trials_model_selection_for_the_trial_health_text(study):
    """The selection the report passes to the trial health section (whose text it changes: tests/analysis/test_health.py)."""
    from analysis.report import model_selection
    from medseg_platform.results import read_trial

    records = [read_trial(p) for p in sorted((study / "trials").glob("mona-*"))]
    assert model_selection(records) == "best_val" and model_selection([]) == "best_val"
    for record in records:
        record.result["config"]["eval"]["selection"] = "final"
    assert model_selection(records) == "final"
    records[0].result["config"]["eval"]["selection"] = "best_val"
    assert model_selection(records) == "mixed"


def test_best_configurations_break_ties_as_the_best_config_file_does():
    """All samples at val Dice 0: the table's top row was the first folder name, best_config.json the earliest sample."""
    from pathlib import Path
    from types import SimpleNamespace

    from analysis.report import _best_search_lines

    def sample(name: str) -> SimpleNamespace:
        return SimpleNamespace(path=Path("trials") / name, result={"tags": {"search": {"optim.lr": 0.1}}, "best_val_dice": 0.0,
                                                                   "test": {"mean": {"dice": 0.0}}})

    records = [sample("k-aaa"), sample("k-zzz")]
    assert _best_search_lines(records)[4].startswith("| k-aaa |")  # no order known: by folder name
    assert _best_search_lines(records, order={"k-zzz": 1, "k-aaa": 2})[4].startswith("| k-zzz |")


def test_a_report_that_cannot_be_written_or_imported_is_one_line(study, capsys, monkeypatch):
    """A full disk (or a read-only copy) ended `medseg report` in a traceback, and a broken matplotlib let a study train
    to its end and then lose even its tables (a probe of user environments)."""
    import sys

    import analysis.report as report_module
    from analysis.study_cli import import_report
    from medseg_platform.errors import ConfigError

    write_report(study, log=lambda m: None)  # an earlier report, which a failed one must leave as it was
    before = _outputs(study)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(study / "table_dice.md"))
    monkeypatch.setattr(report_module, "write_tables", full_disk)
    assert main(["report", str(study)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {study}: the report could not be written (No space left on device: {study / 'table_dice.md'}); the "
        "trials' results and the files written before are intact: free space (or fix the folder) and write it again "
        "(medseg report on the folder, or rerun the study command)")
    assert _outputs(study) == before  # nothing already written was lost
    monkeypatch.delitem(sys.modules, "analysis.report")
    monkeypatch.delitem(sys.modules, "analysis.plots")
    for name in [m for m in sys.modules if m.startswith("matplotlib.")]:  # as if never imported: analysis.plots imports them
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ConfigError, match=r"^the report cannot be written: .*matplotlib.*pip install -c constraints.txt -e \."):
        import_report()


def test_a_path_name_longer_than_a_file_system_takes_is_one_line(tmp_path):
    from medseg_platform.errors import ConfigError
    from medseg_platform.io import check_output_folder

    with pytest.raises(ConfigError, match=r"--results-dir .*: the name x{40}\.\.\. has 300 bytes; a file system takes at most 255"):
        check_output_folder(tmp_path / ("x" * 300) / "study", "--results-dir")


def test_the_dataset_line_counts_test_patients_when_they_have_several_volumes(tmp_path):
    """The reports probe: at the smoke size the tables said no cell could be tested while the report's Dataset line
    said "2 test cases", which hid that they were one patient's two frames (the unit of the significance tests)."""
    from tests.analysis.fakes import write_fake_trial

    study = tmp_path / "s"
    frames = ["patient001_frame01", "patient001_frame02", "patient002_frame01", "patient002_frame02"]
    for seed in (1, 2):
        write_fake_trial(study, row="MONA", order=0, patients=1, seed=seed, dice=lambda c, k: 0.5, cases=frames)
    (study / "study.json").write_text(json.dumps({"name": "s", "trials": [p.name for p in (study / "trials").iterdir()]}))
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "test cases of 2 patients" in text and "4 test cases" in text



def test_medseg_report_piped_into_head_exits_141_not_blaming_the_disk(study):
    """The review: `medseg report DIR | head -1` exited 2 with "the report could not be written (Broken pipe) ... free
    space": write_report turned the reader's going away into a disk error."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(f"{sys.executable} -m analysis report {study} | head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 141 and "free space" not in proc.stderr, (proc.returncode, proc.stderr[-800:])


def test_a_report_before_any_trial_finished_reads_the_started_trials_settings(study):
    """The search walkthrough: a run stopped before any trial finished reported "unknown" steps, patch size and label
    fractions, though each started trial's config.json holds them."""
    for result in study.glob("trials/*/result.json"):
        try:
            config = json.loads(result.read_text(encoding="utf-8"))["config"]
        except ValueError:  # the fake study's corrupt one
            config = None
        if config is not None:
            (result.parent / "config.json").write_text(json.dumps({"config": config}), encoding="utf-8")
        result.unlink()
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Iterations**: 40 fine-tuning steps (validation every 20; " in text
    assert "- **Patch size / batch**: 32x32; 4 labelled + 4 unlabelled" in text
    assert "- **Label fractions**: 1, 3" in text and "- **Dataset**: /data/phantom; " in text
    assert "unknown fine-tuning steps" not in text


def test_the_report_gives_a_multi_worker_trials_batch_per_worker_and_per_step(study, no_plots):
    """The multi-worker review: a study of 2-worker trials reported "4 labelled + 4 unlabelled", the batch of one worker,
    as a 1-worker study does; each of the N workers draws the full batch, so a step trains on N times it."""
    for result in study.glob("trials/*/result.json"):
        try:
            record = json.loads(result.read_text(encoding="utf-8"))
        except ValueError:  # the fake study's corrupt one
            continue
        record["config"]["workers"] = 2
        result.write_text(json.dumps(record), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Patch size / batch**: 32x32; 4 labelled + 4 unlabelled per worker × 2 workers (8 + 8 per step)\n" in text


def test_report_states_the_code_kernels_labelled_patients_and_working_folder(study, tmp_path, no_plots):
    """A report review could not tell from report.md which code computed the trials, that the baselines ran other CPU
    convolution kernels than the contrastive rows, that every seed trained on the same labelled patient, what the
    validation ran on, or where the command ran (its ./results and relative paths)."""
    from analysis.report import _val_split_phrase

    results = sorted(p for p in (study / "trials").glob("*/result.json") if p.read_text(encoding="utf-8") != "{truncated")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Labelled patients**: 1 patient (1.4%): p0, every seed | 3 patients (4.3%): p0, p1, p2, every seed\n" in text
    assert "**Code**" not in text and "**Convolution kernels**" not in text  # results of earlier code record neither
    for path in results:
        result = json.loads(path.read_text(encoding="utf-8"))
        kernels = "onednn" if result["tags"]["row"] == "Mean teacher" else "pytorch"
        path.write_text(json.dumps({**result, "conv_kernels": kernels,
                                    "environment": {"cpu": "AMD EPYC", "code": "medseg-platform 0.1.0, git abc1234"}}), encoding="utf-8")
    settings = json.loads((study / "settings.json").read_text(encoding="utf-8"))
    (study / "settings.json").write_text(json.dumps({**settings, "cwd": "/home/me/project"}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Code**: medseg-platform 0.1.0, git abc1234\n" in text
    kernels_doc = "docs/methods.md, 'CPU convolution kernels'"
    assert "read from the pretraining cache" not in text  # no result records its stages
    for index, path in enumerate(results):  # one trial trained the stage, the others read it
        result = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**result, "pretrain_stages": [{"stage": 0, "objective": "isd_pretrain", "key": "stage0-x",
                                                                    "cached": index > 0}]}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert (f"; 1 stage trained, {len(results) - 1} read from the pretraining cache (a stage is shared by the trials of the same "
            "chain, seed and labelled patients: the first trains it)") in text
    result = json.loads(results[0].read_text(encoding="utf-8"))  # scored from a finished trial: it trained no stage
    results[0].write_text(json.dumps({**result, "scored_from": {"trial_key": "x", "study": "other"}}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert f"; 0 stages trained, {len(results) - 1} read from the pretraining cache" in text
    results[0].write_text(json.dumps(result), encoding="utf-8")
    assert ("- **Convolution kernels**: PyTorch's own: MONA, ARCO-SG; oneDNN: Mean teacher (fine-tuning, validation and test; "
            f"CPU pretraining stages run oneDNN); the two round differently (`conv_kernels`; {kernels_doc})\n") in text
    assert "(run in `/home/me/project`: relative paths and the default `./results` start there)" in text
    result = json.loads(results[0].read_text(encoding="utf-8"))
    results[0].write_text(json.dumps({**result, "environment": {"code": "medseg-platform 0.1.0, git def5678 + local changes"}}))
    line = next(line for line in write_report(study, log=lambda m: None).report.read_text().splitlines() if line.startswith("- **Code**"))
    assert line.startswith(f"- **Code**: mixed: medseg-platform 0.1.0, git def5678 + local changes (1 trial); medseg-platform "
                           f"0.1.0, git abc1234 ({len(results) - 1} trials)")
    for path in results:  # rows on another dataset: the patients' rows are named (the review)
        result = json.loads(path.read_text(encoding="utf-8"))
        if result["tags"]["row"] == "Mean teacher" and result["labelled"]["num_patients"] == 1:
            path.write_text(json.dumps({**result, "labelled": {**result["labelled"], "patients": ["q0"]}}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "- **Labelled patients**: 1 patient (1.4%): p0, MONA, ARCO-SG, every seed; q0, Mean teacher, every seed | 3 " in text
    root = tmp_path / "data"
    root.mkdir()
    (root / "val.list").write_text("patient021_frame01\npatient021_frame02\npatient023_frame01\n", encoding="utf-8")
    assert _val_split_phrase([str(root)]).startswith(", 3 val cases of 2 patients (model selection: a trial's val Dice is on these,")
    assert "val Dice is on the first 2 of them (`eval.val_cases`)," in _val_split_phrase([str(root)], [2, 2])
    assert "the first `eval.val_cases` of them, 2 or 3 by trial" in _val_split_phrase([str(root)], [2, 0])
    assert _val_split_phrase([str(tmp_path / "moved")]) == "" and _val_split_phrase([str(root), str(root) + "2"]) == ""


def test_the_environment_names_the_code_that_computed_a_trial():
    import torch

    from medseg_platform import __version__
    from medseg_platform.environment import code_version, trial_environment

    code = trial_environment(torch.device("cpu"))["code"]
    assert code == code_version() and code.startswith(f"medseg-platform {__version__}")


def test_a_checkout_is_described_by_its_commit_and_a_hash_of_its_local_changes(tmp_path, monkeypatch):
    """Two different uncommitted states of one commit read alike ("+ local changes"), an untracked new module was not
    seen, and an inherited GIT_DIR described another repository (the session's review)."""
    import shutil
    import subprocess

    from medseg_platform.environment import describe_checkout

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert describe_checkout(tmp_path, "v") == "v"  # not a checkout
    repo = tmp_path / "repo"
    (repo / "methods").mkdir(parents=True)
    (repo / "methods" / "a.py").write_text("x = 1\n", encoding="utf-8")
    (repo / "README.md").write_text("docs\n", encoding="utf-8")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    commit = git("rev-parse", "--short=7", "HEAD")
    assert describe_checkout(repo, "v") == f"v, git {commit}"
    (repo / "README.md").write_text("other docs\n", encoding="utf-8")  # docs are not code
    assert describe_checkout(repo, "v") == f"v, git {commit}"
    (repo / "methods" / "a.py").write_text("x = 2\n", encoding="utf-8")
    first = describe_checkout(repo, "v")
    (repo / "methods" / "a.py").write_text("x = 3\n", encoding="utf-8")
    second = describe_checkout(repo, "v")
    assert re.fullmatch(rf"v, git {commit} \+ local changes [0-9a-f]{{8}}", first) and first != second
    (repo / "methods" / "a.py").write_text("x = 1\n", encoding="utf-8")
    (repo / "methods" / "results" / "study").mkdir(parents=True)  # results written inside a code folder are not code
    (repo / "methods" / "results" / "study" / "result.json").write_text("{}\n", encoding="utf-8")
    assert describe_checkout(repo, "v") == f"v, git {commit}"
    (repo / "methods" / "new.py").write_text("y = 1\n", encoding="utf-8")  # an untracked module counts
    assert describe_checkout(repo, "v").startswith(f"v, git {commit} + local changes ")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere" / ".git"))  # inherited: ignored
    assert describe_checkout(repo, "v").startswith(f"v, git {commit} + local changes ")
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # git missing: the version alone
    assert describe_checkout(repo, "v") == "v"


def test_a_note_says_when_the_distances_leave_out_or_zero_empty_predictions(tmp_path):
    """A report review found a seed that did not learn looking fine in HD95 (its empty predictions were left out), with
    the dagger explained only inside table_hd95.md."""
    from types import SimpleNamespace

    from analysis.report import _distance_note

    def record(policy, row="MONA"):
        return SimpleNamespace(result={"config": {"eval": {"empty_policy": policy}}, "tags": {"row": row}})

    hd95 = tmp_path / "table_hd95.md"
    hd95.write_text("| MONA | 12.0 ± 1.0 |\n", encoding="utf-8")
    assert _distance_note([hd95], [record("nan")]) == []
    hd95.write_text("| MONA | 12.0 ± 1.0\u2020 |\n", encoding="utf-8")
    assert _distance_note([hd95], [record("nan")])[0].startswith("HD95 and ASD leave out a case where a class's prediction")
    assert _distance_note([hd95], [record("released")])[0].startswith("HD95 and ASD score an empty prediction as distance 0 (")
    mixed = _distance_note([hd95], [record("released", "MONA"), record("nan", "ARCO-SG")])[0]
    assert mixed.startswith("HD95 and ASD score an empty prediction as distance 0 in rows MONA (the released")


def test_the_report_a_study_command_writes_under_its_own_lock_says_its_unfinished_trials_were_not_run(study):
    """After a Ctrl-C the study's command writes its report while it still holds its folder's lock; that report said its
    unfinished trials were running there ("this report is a snapshot", "still to finish (the study is running)") after
    the command had ended, and it kept the stale outputs it exists to remove (the workflow review)."""
    from medseg_platform.io import folder_holder, folder_lock

    info = json.loads((study / "study.json").read_text(encoding="utf-8"))
    (study / "study.json").write_text(json.dumps({**info, "trials": [*info["trials"], "mona-l7-s1-0000000000"]}), encoding="utf-8")
    (study / "plots").mkdir(exist_ok=True)
    (study / "plots" / "qualitative_99 patients.png").write_bytes(b"png")
    with folder_lock(study, "study x"):
        assert folder_holder(study) is not None  # held, by this process
        text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    assert "trial mona-l7-s1-0000000000 has no result (not run yet or interrupted" in text and ", 1 not run or interrupted" in text
    assert "running there" not in text and "snapshot" not in text
    assert not (study / "plots" / "qualitative_99 patients.png").exists()


def test_user_paths_and_commands_are_verbatim_text_in_the_report(study, no_plots):
    """The security review: a data root or --test-root with HTML, a link or "$...$" reached report.md as markup, and a
    backtick in the command closed its code span."""
    evil = "/d <img src=x> *a* $m$ [l](http:x) `z`"
    for path in (study / "trials").glob("*/result.json"):
        if path.read_text(encoding="utf-8") == "{truncated":  # the fake study's corrupt trial
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        result["config"]["data"]["root"] = evil
        path.write_text(json.dumps(result), encoding="utf-8")
    settings = json.loads((study / "settings.json").read_text(encoding="utf-8"))
    (study / "settings.json").write_text(json.dumps({**settings, "command": f"python s.py --data-root '{evil}'", "cwd": "/w`x",
                                                     "test_root": evil}), encoding="utf-8")
    text = write_report(study, log=lambda m: None).report.read_text(encoding="utf-8")
    escaped = r"/d &lt;img src=x> \*a\* \$m\$ [l]\(http:x) \`z\`"
    assert f"- **Dataset**: {escaped};" in text and f"- **External test set** (`--test-root`): {escaped};" in text
    assert f"- **Command**: ``python s.py --data-root '{evil}'`` (run in ``/w`x``: " in text
    assert text.count("<img") == text.count("](http") == 1  # verbatim inside the command's code span only




def test_medseg_report_of_several_studies_lets_a_gone_reader_end_the_command(tmp_path, monkeypatch):
    """The README review: `medseg report RESULTS_DIR | head -1` printed "BrokenPipeError ... (a bug or a hand-edited
    file)": the per-study handler took the reader's leaving (a print inside write_report) for a broken study. It now
    reaches run_cli, which exits 141 quietly where stdout is the pipe that broke."""
    import argparse

    import analysis.report as report_module
    from analysis import cli
    from tests.analysis.fakes import make_fake_study

    for name in ("a-quick", "b-quick"):
        make_fake_study(tmp_path / "results", name)

    def reader_gone(study_dir, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(report_module, "write_report", reader_gone)
    with pytest.raises(BrokenPipeError):
        cli.run(argparse.Namespace(results_dir=str(tmp_path / "results")))
