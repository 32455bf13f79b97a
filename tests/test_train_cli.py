"""``medseg train``: one configuration as one trial (:mod:`medseg_platform.train_cli`), in-process and through Ray."""

import argparse
import json
import os

import pytest

from analysis.console import main
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import METHOD_LABELS, METHODS, method_overrides
from medseg_platform.study_flags import resolve_data_root
from medseg_platform.results import trial_key

SMOKE = PROFILES["smoke"]
TRIAL_FILES = ("config.json", "labelled.json", "per_case.csv", "curves.csv", "val_curve.csv", "qualitative.npz", "result.json",
               "attempts.json", "checkpoint/checkpoint.pt")


@pytest.fixture
def phantom_root(phantom_cache, monkeypatch) -> str:
    monkeypatch.setenv("MEDSEG_CACHE", str(phantom_cache))
    return str(resolve_data_root(argparse.Namespace(data_root=None), SMOKE))


def expected_key(root: str, method: str, **dotted) -> str:
    """The key of ``method`` at the smoke profile, 1 patient, seed 1, with ``dotted`` overrides (built by hand)."""
    cfg = SMOKE.trial.replace(**{**method_overrides(method, SMOKE), "data.root": root, **dotted, "data.labelled": "1", "seed": 1,
                                 "workers": 1})
    return trial_key(cfg.to_dict())


def test_in_process_writes_a_study_trial_and_a_rerun_or_its_config_file_trains_nothing(tmp_path, phantom_root, capsys):
    results = tmp_path / "results"
    argv = ["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results), "--set", "optim.lr=0.05"]
    assert main(argv) == 0
    key = expected_key(phantom_root, "supervised", **{"optim.lr": 0.05})
    study_dir = results / "train-supervised-smoke"
    trial_dir = study_dir / "trials" / key
    assert [name for name in TRIAL_FILES if not (trial_dir / name).is_file()] == []
    result = json.loads((trial_dir / "result.json").read_text())
    assert result["config"]["optim"]["lr"] == 0.05 and result["placement"]["in_process"] is True
    import torch  # what computed it (docs/analysis.md, 'Reproducibility across machines')
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["accelerator"] is None
    assert result["environment"]["cpu"] and result["environment"]["cpu"] != "unknown"
    assert result["tags"]["row"] == "Supervised only [optim.lr=0.05]" and result["attempts"] == 1  # its own row
    assert json.loads((study_dir / "study.json").read_text())["trials"] == [key]
    assert json.loads((study_dir / "settings.json").read_text())["overrides"] == {"optim.lr": 0.05}
    assert capsys.readouterr().out.startswith(f"trial {key}: best val Dice ")

    before = (trial_dir / "result.json").read_bytes()
    assert main(argv) == 0  # finished: not trained again
    assert "already finished" in capsys.readouterr().err and (trial_dir / "result.json").read_bytes() == before
    # the trial's own config.json reproduces the same trial (same key): nothing to train. Without --profile, the file's
    # smoke sizes name the profile (it used to default to quick: another folder, train-supervised-quick)
    assert main(["train", "--config", str(trial_dir / "config.json"), "--in-process", "--results-dir", str(results)]) == 0
    assert f"trial {key}: already finished" in capsys.readouterr().err
    assert (trial_dir / "result.json").read_bytes() == before


def test_settings_and_report_are_written_while_the_folder_is_still_locked(tmp_path, phantom_root, monkeypatch, capsys):
    # they were written after the lock was released: a second command on the folder could start in between and its
    # trial's files then mixed with this command's settings.json (the known gap of the twenty-fourth session)
    import analysis.report as report
    from medseg_platform.io import folder_holder

    seen = []
    write_report = report.write_report

    def watched(study_dir):
        seen.append((folder_holder(study_dir), (study_dir / "settings.json").is_file()))
        return write_report(study_dir)

    monkeypatch.setattr(report, "write_report", watched)
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results)]) == 0
    assert len(seen) == 1 and seen[0][0] is not None and f"pid {os.getpid()}" in seen[0][0] and seen[0][1]
    assert folder_holder(results / "train-supervised-smoke") is None  # released at the end
    assert (results / "train-supervised-smoke" / "report.md").is_file()


def test_supervised_training_without_an_unlabelled_batch_trains(tmp_path, phantom_root):
    # data.unlabelled_batch=0 is valid for an objective that reads no unlabelled image; the engine used to compute the
    # alpha_t epoch (which divides by it) for every objective and failed inside the trial
    argv = ["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(tmp_path), "--set",
            "data.unlabelled_batch=0"]
    assert main(argv) == 0
    (result,) = (tmp_path / "train-supervised-smoke" / "trials").glob("*/result.json")
    assert json.loads(result.read_text())["config"]["data"]["unlabelled_batch"] == 0


def test_through_ray_the_same_configuration_gets_the_same_trial(tmp_path, phantom_root, ray_address, capsys):
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--results-dir", str(results), "--address", ray_address,
                 "--no-dashboard"]) == 0
    key = expected_key(phantom_root, "supervised")
    trial_dir = results / "train-supervised-smoke" / "trials" / key
    assert [name for name in TRIAL_FILES if not (trial_dir / name).is_file()] == []
    assert "node_id" in json.loads((trial_dir / "result.json").read_text())["placement"]  # ran in a Ray Tune trial
    assert f"trial {key}: best val Dice " in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ([], f"give a method ({', '.join(METHODS)}) or --config FILE.json"),
    (["mona", "--config", "c.json"], f"give a method ({', '.join(METHODS)}) or --config FILE.json, not both"),
    (["--config", "missing.json"], "--config {tmp}/missing.json: cannot read it"),
    (["--config", "bad.json"], "--config {tmp}/bad.json: not valid JSON"),
    (["--config", "unknown.json"], "--config {tmp}/unknown.json: config.optim: unknown key(s) ['lrr']"),
    (["supervised", "--set", "seed=2"], "--set seed: set by the flag --seed; use that instead"),
    (["supervised", "--set", "workers=2"], "--set workers: not settable in medseg train, which runs each trial in one process "
     "(data-parallel trials: a study script's --num-workers)"),  # it said "use that instead" of a flag train has not
    (["--config", "workers.json"], "--config {tmp}/workers.json: workers=2; medseg train runs one worker per trial"),
    (["--config", "seed.json"], "--config {tmp}/seed.json: seed 4294967296 must be a whole number in [0, 2**32 - 1]"),
    (["--config", "study.json"], "--config {tmp}/study.json: not a trial config (give a trial's config.json"),
    (["--config", "negative.json"], "--config {tmp}/negative.json: optim.lr -1.0: must be a finite number > 0"),
    (["supervised", "--gpus-per-trial", "1"], "--in-process trains in this process, on its GPU if it has one: --address and --gpus-per-trial"),
    (["supervised", "--labelled", ""], "label fraction '': expected a patient count like '3' or a percent like '5%'"),
    (["supervised", "--set", "optim.amp=fp16"], "optim.amp 'fp16' needs a CUDA GPU per trial"),
    (["supervised", "--set", "data.labelled=3"], "--set data.labelled: set by the flag --labelled; use that instead"),
    (["supervised", "--set", "optim.lr=x"], "--set optim.lr=x: expected a number"),
    # a value the objective refuses names the --set (a known item: "objective 'mona': MonaConfig.temperature ..." alone)
    (["mona", "--set", "objective_params.temperature=-1"], "--set objective_params.temperature: objective 'mona': "
     "MonaConfig.temperature: must be in (0, inf), got -1.0"),
    (["supervised", "--set", "optim.lrr=1"], "--set optim.lrr: unknown key; close matches: optim.lr"),
    # a parameter no objective has: the trained objective's own (close matches came from every method's)
    (["mean_teacher", "--set", "objective_params.consistency=1"], "--set objective_params.consistency: unknown key; "
     "close matches: objective_params.consistency_weight (objective mean_teacher's parameters: sup_weight, ema_momentum, "
     "consistency_weight, rampup_steps, teacher_bn_mode, input_noise_std)"),
    (["supervised", "--set", "objective_params.lr=1"],  # no parameter of its own is close: every key's close matches
     "--set objective_params.lr: unknown key; close matches: optim.lr (objective supervised's parameters: sup_weight)"),
    # the objective alone swapped: the method's recipe (sizes, pretraining) dropped, the trial tabled under the method's
    # label (the docs review); refused before the objective parameters are checked
    (["supervised", "--set", "objective=mean_teacher", "--set", "objective_params.consistency=1"],
     "--set objective: not settable in medseg train: the METHOD argument names it with its recipe"),
    (["--config", "ok.json", "--set", "objective=mona"], "--set objective: not settable in medseg train: "),
    (["supervised", "--set", "objective_params.temperature=0.2"],
     "--set objective_params.temperature: row 'Supervised only' (objective supervised) has no parameter 'temperature' "
     "(its parameters: sup_weight)\n"),
])
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, phantom_root, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"optim": {"lrr": 1}}))
    (tmp_path / "workers.json").write_text(json.dumps({"objective": "supervised", "workers": 2}))
    (tmp_path / "seed.json").write_text(json.dumps({"objective": "supervised", "seed": 2**32}))
    (tmp_path / "study.json").write_text(json.dumps({"name": "s", "trials": [], "claims": []}))
    (tmp_path / "negative.json").write_text(json.dumps({"objective": "supervised", "optim": {"lr": -1}}))
    (tmp_path / "ok.json").write_text(json.dumps({"objective": "supervised"}))
    results = tmp_path / "results"
    assert main(["train", *extra, "--profile", "smoke", "--in-process", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path.resolve())) and err.count("\n") == 1, err
    assert not results.exists()


def test_seed_beyond_32_bits_is_refused_by_the_parser(capsys):
    """NumPy and torch keep 32 bits of a seed: 2**32 would silently repeat seed 0 under another name."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "supervised", "--profile", "smoke", "--seed", str(2**32)])
    assert exit_info.value.code == 2 and "argument --seed: must be <= 4294967295" in capsys.readouterr().err


def test_runs_collect_in_one_folder_and_a_rerun_keeps_the_record(tmp_path, phantom_root, capsys):
    """Each run adds its trial to the folder's study.json (its --set makes its own row); a rerun that trains nothing
    leaves settings.json as the training run wrote it."""
    results = tmp_path / "results"
    base = ["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results)]
    assert main(base) == 0
    assert main(base + ["--set", "optim.lr=0.05", "--labelled", "01"]) == 0  # "01" is fraction "1"
    study_dir = results / "train-supervised-smoke"
    first, second = expected_key(phantom_root, "supervised"), expected_key(phantom_root, "supervised", **{"optim.lr": 0.05})
    assert json.loads((study_dir / "study.json").read_text())["trials"] == [first, second]
    rows = {json.loads((study_dir / "trials" / key / "result.json").read_text())["tags"]["row"] for key in (first, second)}
    assert rows == {"Supervised only", "Supervised only [optim.lr=0.05]"}
    # each run rebuilds the folder's tables and report (they stayed as the last `medseg report` left them: the
    # workflow probe), and prints the table
    table = (study_dir / "table_dice.md").read_text()
    assert all(f"| {row} " in table for row in rows) and (study_dir / "report.md").is_file()
    assert "| Supervised only [optim.lr=0.05] " in capsys.readouterr().out
    settings = (study_dir / "settings.json").read_bytes()
    capsys.readouterr()
    assert main(base) == 0 and "already finished" in capsys.readouterr().err
    assert (study_dir / "settings.json").read_bytes() == settings  # still the command that trained the latest trial
    assert json.loads((study_dir / "study.json").read_text())["trials"] == [second, first]


def test_a_folder_of_another_study_is_refused(tmp_path, phantom_root, capsys):
    """--name pointing at a study script's (or a search's) folder would replace its record and tables."""
    study_dir = tmp_path / "results" / "ablation"
    study_dir.mkdir(parents=True)
    record = json.dumps({"name": "ablation", "trials": ["x"], "search": False})
    (study_dir / "study.json").write_text(record)
    (study_dir / "settings.json").write_text(json.dumps({"command": "python studies/ablation_tailness.py"}))
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(tmp_path / "results"),
                 "--name", "ablation"]) == 2
    err = capsys.readouterr().err
    assert f"error: {study_dir}: holds another study (study.json, made by python studies/ablation_tailness.py)" in err
    assert (study_dir / "study.json").read_text() == record and not (study_dir / "trials").exists()



def test_a_running_folder_is_refused_before_the_data_preflight(tmp_path, phantom_root, capsys):
    """The review: medseg train read every data file and wrote preflight.json before its lock refused it."""
    import fcntl

    study_dir = tmp_path / "results" / "train-supervised-smoke"
    study_dir.mkdir(parents=True)
    with open(study_dir / ".lock", "a+") as held:
        held.write("pid 1 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(tmp_path / "results")]) == 2
    assert f"error: {study_dir}: study train-supervised-smoke is running there already (pid 1 on elsewhere)" in capsys.readouterr().err
    assert sorted(p.name for p in study_dir.iterdir()) == [".lock"]


def test_in_process_checks_the_data_before_training(tmp_path, phantom_root, capsys):
    """The data preflight of the Ray path runs first: a manifest whose class names do not fit is reported before any
    trial folder is written (it used to train every step and fail at the test evaluation)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["class_names"] = ["A", "B"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root),
                 "--results-dir", str(results), "--set", "data.num_classes=4"]) == 2
    assert "a dataset of 3 classes (background included; its manifest.json)" in capsys.readouterr().err
    # without the --set the manifest's count is taken (a note), and the labels above it are refused before training
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root),
                 "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("note: data.num_classes = 3, the class count") and "error: " in err and "--num-classes 3' lists" in err
    assert err.count("note: data.num_classes") == 1, err  # it printed twice (the data walkthrough)
    assert not (results / "train-supervised-smoke" / "trials").exists() or not any((results / "train-supervised-smoke" / "trials").iterdir())


def test_an_error_while_training_in_process_is_recorded_and_exits_1(tmp_path, phantom_root, capsys, monkeypatch):
    """A non-finite loss ends the trial as errored, as in a study: error.json with its step, exit 1 (not 2: it trained)."""
    from tests.conftest import poison_supervised_loss

    poison_supervised_loss(monkeypatch, from_step=2)
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results)]) == 1
    trial_dir = results / "train-supervised-smoke" / "trials" / expected_key(phantom_root, "supervised")
    error = json.loads((trial_dir / "error.json").read_text())
    assert error["kind"] == "application" and error["details"]["step"] == 2 and error["details"]["terms"] == ["ce"]
    assert f"trial {trial_dir.name} did not finish: " in capsys.readouterr().err and not (trial_dir / "result.json").exists()


def test_a_run_on_another_dataset_or_a_second_config_of_one_name_stays_apart(tmp_path, phantom_root, capsys):
    """The folder's table never mixes datasets, and two configs that would get one row label get two rows."""
    import shutil

    results = tmp_path / "results"
    first = tmp_path / "a" / "cfg.json"
    second = tmp_path / "b" / "cfg.json"
    for path, lr in ((first, 0.05), (second, 0.02)):
        path.parent.mkdir()
        path.write_text(json.dumps({"objective": "supervised", "optim": {"lr": lr}}))
    run = ["train", "--profile", "smoke", "--in-process", "--results-dir", str(results), "--name", "cfgs"]
    assert main(run + ["--config", str(first)]) == 0 and main(run + ["--config", str(second)]) == 0
    study_dir = results / "cfgs"
    rows = sorted(json.loads((study_dir / "trials" / key / "result.json").read_text())["tags"]["row"]
                  for key in json.loads((study_dir / "study.json").read_text())["trials"])
    assert rows[0] == "Supervised only (cfg.json)" and rows[1].startswith("Supervised only (cfg.json) #") and len(rows) == 2
    other = tmp_path / "other"
    shutil.copytree(phantom_root, other)
    capsys.readouterr()
    assert main(run + ["--config", str(first), "--data-root", str(other)]) == 2
    assert f"its trials train on {phantom_root}, this run on {other}; give --name" in capsys.readouterr().err


def test_unknown_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "fixmatch", "--profile", "smoke"])
    assert exit_info.value.code == 2 and "invalid choice: 'fixmatch'" in capsys.readouterr().err


def test_config_file_is_laid_over_the_profile(tmp_path, phantom_root):
    """A partial file keeps the profile's other values: only its keys change the trial."""
    from medseg_platform.train_cli import build_study

    (tmp_path / "partial.json").write_text(json.dumps({"objective": "mean_teacher", "optim": {"lr": 0.03}, "seed": 4}))
    args = argparse.Namespace(method=None, config=str(tmp_path / "partial.json"), overrides=["eval.val_every=2"], profile="smoke",
                              labelled=None, seed=None, data_root=None, results_dir=str(tmp_path), name=None, address=None,
                              no_dashboard=True, gpus_per_trial=0.0)
    study, overrides = build_study(args)
    (trial,) = study.trial_params()
    config = trial["config"]
    assert overrides == {"eval.val_every": 2} and study.name == "train-mean_teacher-smoke"
    assert (config["objective"], config["optim"]["lr"], config["seed"], config["eval"]["val_every"]) == ("mean_teacher", 0.03, 4, 2)
    assert config["optim"]["max_steps"] == SMOKE.trial.optim.max_steps and tuple(config["data"]["patch_size"]) == (32, 32)
    assert config["data"]["root"] == phantom_root and config["data"]["labelled"] == SMOKE.labelled[0]


def test_results_of_another_version_of_the_dataset_are_refused_not_mixed(tmp_path, phantom_root, capsys):
    """Keys hash the dataset's path: a dataset converted again into the same folder with other data found its old
    finished trials (and cached pretraining stages) and tabled them beside new ones. Each result and stage records the
    dataset's identity (its manifest's checksums), and a changed one stops the run before anything trains."""
    import shutil

    import h5py

    from medseg_platform.io import sha256_file, write_json_atomic
    from medseg_platform.preflight import dataset_identity

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    results = tmp_path / "results"
    argv = ["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root), "--results-dir", str(results)]
    assert main(argv) == 0
    (trial,) = (results / "train-supervised-smoke" / "trials").iterdir()
    identity = json.loads((trial / "result.json").read_text())["data_identity"]
    assert identity == dataset_identity(root) and identity == dataset_identity(phantom_root)  # content, not path
    capsys.readouterr()
    assert main(argv) == 0 and "already finished" in capsys.readouterr().err

    stage = results / "pretrain-cache" / "isd-stage"  # a stage trained on this dataset before it changed
    write_json_atomic(stage / "data.json", {"root": str(root.resolve()), "data_identity": identity})
    manifest = json.loads((root / "manifest.json").read_text())
    test_case = (root / "test.list").read_text().split()[0]
    with h5py.File(root / "data" / f"{test_case}.h5", "r+") as fh:  # converted again: other content, and its checksum
        fh["label"][0, 0, 0] = 1 - fh["label"][0, 0, 0]
    manifest["sha256"][f"data/{test_case}.h5"] = sha256_file(root / "data" / f"{test_case}.h5")
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the data preflight's line
    assert err.startswith(f"error: {root.resolve()}: 2 finished trial(s) or cached pretraining stage(s) of this results folder "
                          "were trained on another version of this dataset"), err


def test_a_kill_of_an_in_process_trial_says_how_to_resume_and_exits_130(tmp_path, phantom_root):
    """The README audit: README says a stop of `medseg train --in-process` exits 130 and says what is unfinished; SIGTERM
    exited 143 without a word."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.conftest import reaped

    with reaped(subprocess.Popen([sys.executable, "-m", "analysis", "train", "supervised", "--profile", "smoke", "--in-process",
                                  "--results-dir", str(tmp_path / "r"), "--set", "optim.max_steps=100000"],  # MEDSEG_CACHE: phantom_root's
                                 cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) as proc:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "r").glob("*/trials/*/attempts.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None and list((tmp_path / "r").glob("*/trials/*/attempts.json")), "the trial did not start"
        time.sleep(1.0)  # into the training steps
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    # not killed by SIGINT (-2) at exit: medseg_platform.cli.forget_handled_interrupts
    assert proc.returncode == 130, (proc.returncode, err[-1500:])
    assert err.strip().splitlines()[-1].endswith(": stopped by a signal; rerun the same command to resume it (from its last "
                                                 "checkpoint, if it reached one)")


def test_a_config_file_row_is_labelled_by_its_method():
    """An ARCO-SAG search's best_config.json was tabled as "arco (best_config.json)" (the workflow probe): MONA and
    the ARCOs share the objective, their sampler names the method."""
    from medseg_platform.train_cli import config_method_label

    for method in ("mona", "arco_sg", "arco_sag", "action", "mean_teacher"):
        assert config_method_label(SMOKE.trial.replace(**method_overrides(method, SMOKE)).to_dict()) == METHOD_LABELS[method]
    assert config_method_label({"objective": "my_method"}) == "my_method"  # registered without a label
    assert config_method_label({"objective": "arco"}) == "ARCO-SG"  # ARCO's default sampler (the review)
    assert config_method_label({"objective": "arco", "objective_params": {"sampler": "nope"}}) == "arco"  # refused later


def test_a_config_file_trains_into_its_method_s_folder(tmp_path, phantom_root):
    """`medseg train --config best_config.json` of an ARCO-SAG search went to train-arco-<profile> (the objective), where
    `medseg train arco_sag` goes to train-arco_sag-<profile> (the walkthrough): the folder names the method."""
    import json

    from analysis.console import build_parser
    from medseg_platform.train_cli import build_study

    for method in ("arco_sag", "mona", "action"):
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps({"config": SMOKE.trial.replace(**method_overrides(method, SMOKE)).to_dict()}))
        args = build_parser().parse_args(["train", "--config", str(path), "--results-dir", str(tmp_path / "results"),
                                          "--data-root", str(phantom_root)])
        assert build_study(args)[0].name == f"train-{method}-smoke"


def test_a_set_row_is_labelled_by_what_it_changes_written_one_way(tmp_path, phantom_root):
    """`--set optim.lr=0.01` (the smoke value) labelled the plain trial "MONA [optim.lr=0.01]", and `optim.lr=0.050`
    renamed the row of `optim.lr=0.05` (the workflow probe): the label names only values that differ from the
    method's, as Python prints them, and such rows sort after the plain one."""
    from analysis.console import build_parser
    from medseg_platform.train_cli import build_study

    def row(*sets: str) -> tuple[str, int]:
        args = build_parser().parse_args(["train", "mona", "--profile", "smoke", "--results-dir", str(tmp_path),
                                          *[p for item in sets for p in ("--set", item)]])
        tags = build_study(args)[0].variants[0].tags
        return tags["row"], tags["order"]

    assert row() == ("MONA", 0) and row("optim.lr=0.01") == ("MONA", 0)
    assert row("optim.lr=0.050") == row("optim.lr=0.05") == ("MONA [optim.lr=0.05]", 1)
    assert row("optim.lr=0.01", "objective_params.temperature=0.2") == ("MONA [objective_params.temperature=0.2]", 1)
    # a value the dataset's manifest gives (3 classes where the profile says 4) is no change either (the review)
    import shutil

    three = tmp_path / "three-classes"
    shutil.copytree(phantom_root, three)
    manifest = json.loads((three / "manifest.json").read_text())
    manifest["class_names"] = manifest["class_names"][:2]
    manifest.setdefault("source", {})["num_classes"] = 3
    (three / "manifest.json").write_text(json.dumps(manifest))

    def row_on(root, *sets: str) -> str:
        args = build_parser().parse_args(["train", "mona", "--profile", "smoke", "--results-dir", str(tmp_path), "--data-root",
                                          str(root), *[p for item in sets for p in ("--set", item)]])
        return build_study(args)[0].variants[0].tags["row"]

    assert row_on(three) == row_on(three, "data.num_classes=3") == "MONA"
    assert row_on(three, "data.num_classes=4") == "MONA [data.num_classes=4]"


def test_a_report_that_fails_after_training_keeps_the_exit_status_and_says_so(tmp_path, phantom_root, capsys, monkeypatch):
    """The review: a failing report after a finished trial ended `medseg train` with a traceback (exit 1) or exit 2,
    which a script reads as a failed training."""
    import analysis.report

    def broken(study_dir, log=print):
        raise RuntimeError("matplotlib could not draw\nmore")

    monkeypatch.setattr(analysis.report, "write_report", broken)
    results = tmp_path / "results"
    assert main(["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results)]) == 0
    study_dir = results / "train-supervised-smoke"
    err = capsys.readouterr().err
    assert ("the trial finished and its results are in its folder, but the folder's tables and report could not be rebuilt "
            f"(RuntimeError: matplotlib could not draw); fix that and run: medseg report {study_dir}") in err
    assert list(study_dir.glob("trials/*/result.json"))


def test_smoke_test_is_the_smoke_profile_as_in_the_studies():
    """The data walkthrough: `medseg train ... --smoke-test`, the studies' flag, was 'unrecognized arguments'."""
    from analysis.console import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "supervised", "--smoke-test"])
    assert args.smoke_test and args.profile is None  # build_study makes it the smoke profile
    assert parser.parse_args(["train", "supervised"]).profile is None  # the default: quick, or the config file's


def test_smoke_test_with_another_profile_is_refused(tmp_path, capsys):
    """The CLI review: `--profile paper --smoke-test` trained the smoke profile and the reverse the paper one, whichever
    came last; the study scripts refuse the pair."""
    from analysis.console import main

    for flags in (["--profile", "paper", "--smoke-test"], ["--smoke-test", "--profile", "paper"]):
        assert main(["train", "supervised", *flags, "--results-dir", str(tmp_path / "r")]) == 2
        assert capsys.readouterr().err == "error: --smoke-test runs the smoke profile; drop --profile paper (or --smoke-test)\n"
    assert not (tmp_path / "r").exists()


def test_medseg_train_warns_of_a_released_cut_inside_a_frame_as_a_study_does(tmp_path, capsys):
    """The splits review: a study with data.labelled_strategy=released_slices warns that the 1-patient cut ends inside
    patient099's ES frame (which slices it labels depends on the list's order); medseg train, a one-row study, did not."""
    from medseg_platform.train_cli import build_study
    from tests.data.test_splits import SSL4MIS_SLICES

    root = tmp_path / "acdc"
    root.mkdir()
    (root / "train_slices.list").write_text("\n".join(SSL4MIS_SLICES) + "\n")  # a frame's slices in index order
    for name in ("val.list", "test.list"):
        (root / name).write_text("patient101_frame01\n")
    args = argparse.Namespace(method="supervised", config=None, overrides=["data.labelled_strategy=released_slices"],
                              profile="smoke", labelled="1", seed=None, data_root=str(root), results_dir=str(tmp_path / "r"),
                              name=None, address=None, no_dashboard=True, gpus_per_trial=0.0)
    build_study(args)
    assert "warning: the released 23-slice cut of 1 patient ends inside patient099_frame02" in capsys.readouterr().err
    args.labelled = "3"  # the 3-patient cut ends on a patient: no warning
    build_study(args)
    assert "warning" not in capsys.readouterr().err


def test_a_second_spelling_of_a_fraction_with_the_same_patients_and_seed_is_refused(tmp_path, phantom_root, capsys):
    """The splits review: '25%' after '1' on the smoke phantom's 4 training patients trained the same patient again,
    and the folder's table averaged the two copies as two seeds of one cell ("2 seeds per cell ... Seed 1")."""
    results = tmp_path / "results"
    base = ["train", "supervised", "--profile", "smoke", "--in-process", "--results-dir", str(results), "--seed", "1"]
    assert main(base + ["--labelled", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--labelled", "25%"]) == 2
    err = capsys.readouterr().err
    assert "error: --labelled 25%: selects the same 1 of the 4 training patients as the folder's trial supervised-l1-s1-" in err
    assert "(--labelled 1, the same seed): its result stands for this run" in err
    assert main(base[:-1] + ["2", "--labelled", "25%"]) == 0  # another seed of the same patients: a second seed indeed
