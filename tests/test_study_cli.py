"""The flags every study script shares for everyday use: ``--dry-run`` (:mod:`medseg_platform.plan`), ``--set`` and
``--rows`` (:mod:`medseg_platform.overrides`). Bad input is one ``error:`` line, exit 2, before anything is trained."""

import argparse
import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from medseg_platform.engine import stage_key
from medseg_platform.errors import ConfigError
from medseg_platform.plan import CACHED, FINISHED, TO_RESCORE, TO_RUN, TO_SCORE, WORKER_GROUP_S, UnitSeconds, format_plan, plan_study
from analysis.study_cli import run_study_main
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import method_overrides
from medseg_platform.step_costs import EVALUATION_COST, STEP_COST
from medseg_platform.results import pretrain_cache_dir, read_csv, trial_key, write_trial_results
from tests.test_studies import load_script

SMOKE = PROFILES["smoke"]
TAILNESS_ROWS = ("'Supervised only', 'Mean teacher', 'MONA', 'MONA/ARCO w/o L_contrast', 'ARCO-SG', 'ARCO-SAG', 'ACTION', "
                 "'ACTION w/o L_anco'")


def study_main(name: str, results: Path, *extra: str) -> int:
    module = load_script(name)
    argv = ["--smoke-test", "--results-dir", str(results), "--no-dashboard", *extra]
    return module.main(argv) if hasattr(module, "main") else run_study_main(module.__doc__, name, module.build, argv=argv)


def expected_key(root: str, method: str, *, without_contrast: bool = False, **dotted) -> str:
    """The trial key of a tailness smoke row at 1 patient, seed 1, with ``dotted`` overrides (built by hand here)."""
    overrides = {"data.root": root, "optim.amp": "off", **method_overrides(method, SMOKE, without_contrast=without_contrast)}
    cfg = SMOKE.trial.replace(**{**overrides, **dotted, "data.labelled": "1", "seed": 1, "workers": 1})
    return trial_key(cfg.to_dict())


@pytest.mark.parametrize("name, extra, message", [
    ("ablation_tailness", ["--rows", "Nope", "MONA"], f"--rows 'Nope': no such row in study ablation_tailness-smoke; valid rows: {TAILNESS_ROWS}"),
    # the workflow probe: no close match was offered (--set's keys get one), and a row named twice passed
    ("ablation_tailness", ["--rows", "Mona", "ARCO-SGG"], "--rows 'Mona', 'ARCO-SGG': no such row in study ablation_tailness-smoke "
                                                         "(did you mean 'MONA', 'ARCO-SG'?); valid rows: "),
    # the studies walkthrough: the closest spelling (τ = 0.1's row) was offered for the released row that holds τ = 0.5
    ("ablation_temperature", ["--rows", "ARCO-SG, tau = 0.5"], "--rows 'ARCO-SG, tau = 0.5': no such row in study "
                                                              "ablation_temperature-smoke (did you mean 'ARCO-SG, released: "
                                                              "τ = 0.5, ISD τ_t = 0.1, τ_s = 0.1'?); valid rows: "),
    ("ablation_tailness", ["--rows", "MONA", "MONA"], "--rows: each row once, got 'MONA' more than once"),
    ("ablation_tailness", ["--set", "optim.lrr=0.1"], "--set optim.lrr: unknown key; close matches: optim.lr,"),
    ("ablation_tailness", ["--set", "lr=0.1"], "--set lr: unknown key; close matches: optim.lr"),
    ("ablation_tailness", ["--rows", "MONA", "--set", "objective_params.tempreature=0.2"],
     "--set objective_params.tempreature: unknown key; close matches: objective_params.temperature (objective mona's "
     "parameters: sup_weight, contrast_weight,"),  # the rows' one objective: its own parameters, not every method's
    # rows of two objectives: their parameters, not every method's (the extension review: "bogus" named ISD's window)
    ("ablation_tailness", ["--rows", "Supervised only", "Mean teacher", "--set", "objective_params.bogus=1"],
     "--set objective_params.bogus: unknown key; no close match; keys are data.NAME, model.NAME, optim.NAME, eval.NAME, "
     "objective_params.NAME, objective, threads (see medseg_platform/config.py) (the parameters of objectives "
     "mean_teacher, supervised: sup_weight, ema_momentum,"),
    ("ablation_tailness", ["--rows", "Supervised only", "Mean teacher", "--set", "objective_params.consistency=1"],
     "--set objective_params.consistency: unknown key; close matches: objective_params.consistency_weight (the "
     "parameters of objectives mean_teacher, supervised:"),
    ("ablation_tailness", ["--set", "optim.lr=fast"], "--set optim.lr=fast: expected a number"),
    # a value of the right type that the config's own checks refuse names the flag too (the workflow probe)
    ("ablation_tailness", ["--set", "optim.lr=-1"], "--set optim.lr -1.0: must be a finite number > 0"),
    ("ablation_tailness", ["--set", "optim.optimizer=adamm"], "--set optim.optimizer 'adamm': choose 'sgd' or 'adamw'"),
    ("ablation_tailness", ["--set", "eval.val_every=2.5"], "--set eval.val_every=2.5: expected a whole number"),
    ("ablation_tailness", ["--set", "data.patch_size=48"], "--set data.patch_size=48: expected 2 comma-separated values"),
    ("ablation_tailness", ["--set", "data.image_resize=nearest"],
     "--set data.image_resize: 2 rows set it themselves: 'ACTION' (to 'cubic'); 'ACTION w/o L_anco' (to 'cubic'); drop "
     "the --set or leave those rows out with --rows"),
    ("ablation_tailness", ["--rows", "ACTION", "MONA", "--set", "data.image_resize=nearest"],
     "--set data.image_resize: row 'ACTION' sets it itself (to 'cubic'); drop the --set or leave the row out with --rows"),
    # every row a refusal is about, named at once (the studies review: the first alone took one more try per row)
    ("ablation_tailness", ["--set", "objective_params.temperature=0.2"],
     "--set objective_params.temperature: 2 rows cannot take it: 'Supervised only' (objective supervised) has no parameter "
     "'temperature' (its parameters: sup_weight); 'Mean teacher' (objective mean_teacher) has no parameter 'temperature' "
     "(its parameters: sup_weight, ema_momentum, consistency_weight, rampup_steps, teacher_bn_mode, input_noise_std); "
     "leave those rows out with --rows"),
    ("ablation_temperature", ["--set", "objective_params.temperature=0.3"],
     "--set objective_params.temperature: 4 rows set it themselves: 'ARCO-SG, released: τ = 0.5, ISD τ_t = 0.1, τ_s = "
     "0.1' (to 0.5); 'ARCO-SG, τ = 0.1' (to 0.1); 'ACTION, τ = 0.1' (to 0.1); 'ACTION, τ = 0.5' (to 0.5); drop the --set "
     "or leave those rows out with --rows"),
    # a setting the NS baseline cannot take (no strata under the uniform sampler): the row named, and --rows offered
    ("ablation_sampling", ["--set", "objective_params.sampler_grouping=spatial"],
     "--set objective_params.sampler_grouping: row 'NS (MONA), 16 anchors x 32 negatives': "),
    ("ablation_sampling", ["--set", "objective_params.nn_pool_capacity=0"],  # wrong for every row: --rows would not help
     "--set objective_params.nn_pool_capacity: row 'NS (MONA), 16 anchors x 32 negatives': "),
    ("ablation_sampling", ["--set", "objective_params.sampler=uniform"],  # its axis: --rows would leave no row
     "--set objective_params.sampler: every row of study ablation_sampling-smoke sets it itself (to 'uniform', 'stratified', "
     "'stratified_antithetic'): it is what the rows vary; drop the --set"),
    ("ablation_tailness", ["--set", "seed=2"], "--set seed: set by the flag --seeds; use that instead"),
    ("ablation_tailness", ["--set", "data.labelled=3"], "--set data.labelled: set by the flag --labelled; use that instead"),
    ("hparam_search", ["--labelled", "1", "3"], "--labelled 1 3: a search tunes at one label fraction; give one"),
    # the walkthrough: a search's --rows listed its one row and no way to search another method
    ("hparam_search", ["--rows", "MONA"], "--rows 'MONA': no such row in study hparam_search-arco_sag-smoke; valid rows: "
                                          "'ARCO-SAG (search samples)' (a search has one row, the method it samples: pick "
                                          "another with --method)"),
    ("ablation_tailness", ["--set", "optim=1"], "--set optim: name one field of it, e.g. --set optim.optimizer=..."),
    ("ablation_tailness", ["--set", "optim.lr"], "--set 'optim.lr': expected KEY=VALUE"),
    ("ablation_tailness", ["--set", "optim.lr=0.1", "--set", "optim.lr=0.2"], "--set optim.lr: given twice ('0.1' and '0.2')"),
    ("ablation_tailness", ["--set", "pretrain.0.lr=0.1"], "--set pretrain.0.lr: pretraining stages cannot be set from the command line"),
    ("ablation_tailness", ["--set", "objective_params.tau_teacher=0.1"],  # before "row 'Supervised only' has no parameter"
     "--set objective_params.tau_teacher: a parameter of the pretraining stages (isd_pretrain), not of any row's "
     "fine-tuning objective; stages cannot be set from the command line"),
    ("ablation_temperature", ["--set", "isd.tau_teacher=0.5"],  # its close match alone was a key refused in turn
     "--set isd.tau_teacher: unknown key; close matches: objective_params.tau_teacher; tau_teacher is a parameter of the "
     "ISD pretraining stages, which --set cannot reach (edit the study script, e.g. with "
     "medseg_platform.variants.with_stage_params, as studies/ablation_temperature.py does)"),
    ("ablation_tailness", ["--protocol", "released", "--set", "eval.empty_policy=nan"],
     "--set eval.empty_policy: --protocol released sets it to 'released'; drop the --set or use --protocol corrected"),
    ("hparam_search", ["--set", "objective_params.contrast_weight=0.1"],
     "--set objective_params.contrast_weight: study hparam_search-arco_sag-smoke searches it"),
])
def test_bad_rows_and_set_are_one_line_errors_before_anything_runs(tmp_path, phantom_env, capsys, name, extra, message):
    results = tmp_path / "results"
    assert study_main(name, results, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1, err
    assert not results.exists()  # no study folder: nothing validated into Ray, nothing trained
    if "sampler_grouping" in message:
        assert err.rstrip().endswith("; leave that row out with --rows")
    elif "nn_pool_capacity" in message:
        assert "--rows" not in err


def test_leaving_out_every_row_a_set_refusal_names_is_enough(tmp_path, phantom_env, capsys):
    """The studies review: the refusal named one of the four rows that set the temperature; following its advice met the
    next. With the rows it names left out, the same --set passes (a dry run: nothing trains)."""
    results = tmp_path / "results"
    sets = ["--set", "objective_params.temperature=0.3", "--dry-run"]
    assert study_main("ablation_temperature", results, *sets) == 2
    named = re.findall(r"'([^']+)' \(to ", capsys.readouterr().err)
    assert len(named) == 4
    others = ["ARCO-SG, ISD τ_t = 0.01", "ARCO-SG, ISD τ_s = 0.07"]  # the smoke study's other two rows
    assert not set(others) & set(named)
    assert study_main("ablation_temperature", results, "--rows", *others, *sets) == 0


@pytest.mark.parametrize("extra, message", [
    (["--max-concurrent", "0"], "argument --max-concurrent: must be >= 1, got 0"),
    (["--max-concurrent", "-1"], "argument --max-concurrent: must be >= 1, got -1"),
    (["--cpus-per-trial", "0"], "argument --cpus-per-trial: must be a finite number > 0, got 0"),
    (["--cpus-per-trial", "nan"], "argument --cpus-per-trial: must be a finite number > 0, got nan"),
    (["--cpus-per-trial", "inf"], "argument --cpus-per-trial: must be a finite number > 0, got inf"),
    (["--gpus-per-trial", "-1"], "argument --gpus-per-trial: must be a finite number >= 0, got -1"),
    (["--num-workers", "0"], "argument --num-workers: must be >= 1, got 0"),
    (["--max-retries", "-1"], "argument --max-retries: must be >= 0, got -1"),
    (["--seeds", "-1"], "argument --seeds: must be >= 0, got -1"),
    (["--seeds", "1", "x"], "argument --seeds: expected a whole number, got 'x'"),
    (["--seeds", "1", "2", "1"], "argument --seeds: each seed once, got 1 2 1"),
    (["--labelled", "1", "01"], "argument --labelled: each label fraction once, got 1 1"),  # one fraction, two spellings
    (["--labelled", "three"], "argument --labelled: label fraction 'three': expected a patient count like '3' or a percent like '5%'"),
    (["--profile", "paper"], "--smoke-test runs the smoke profile; drop --profile paper (or --smoke-test)"),
])
def test_bad_flag_values_are_argparse_errors_naming_the_flag(tmp_path, phantom_env, capsys, extra, message):
    """Values that used to pass silently (``--cpus-per-trial 0`` fell back to the profile's 1, ``--max-concurrent 0``
    started Ray) or gave a message that named no flag are rejected while parsing: usage, one error line, exit 2."""
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        study_main("ablation_tailness", results, "--dry-run", *extra)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: " + message)
    assert not results.exists()


@pytest.mark.parametrize("case", ["gpus", "results file", "results below a file", "dashboard host", "optuna storage", "test root",
                                  "data root file", "num_classes", "empty data root", "empty test root",
                                  "empty optuna storage"])
def test_a_dry_run_rejects_what_the_run_rejects(tmp_path, phantom_env, capsys, monkeypatch, case):
    """``--dry-run`` makes every check that the run makes before Ray starts (``check_before_ray``), so a clean dry run
    means the command's settings are accepted."""
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    results, extra = tmp_path / "results", []
    if case == "gpus":
        import ray
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a command line's process: the session's Ray is not its
        extra, message = ["--gpus-per-trial", "1"], "--gpus-per-trial > 0 but this machine has no CUDA GPU"
    elif case == "results file":
        results = afile
        message = f"--results-dir (Study.results_dir) {afile / 'ablation_tailness-smoke'}: is inside {afile}, a file, not a folder"
    elif case == "results below a file":
        results = afile / "deeper"
        message = f"--results-dir (Study.results_dir) {results / 'ablation_tailness-smoke'}: is inside {afile}, a file, not a folder"
    elif case == "dashboard host":
        extra, message = ["--dashboard-host", "0.0.0.0"], "--dashboard-host sets the dashboard of the local Ray"  # with --no-dashboard
    elif case == "optuna storage":
        extra, message = ["--optuna-storage", str(tmp_path / "o.log")], "--optuna-storage records an Optuna search; this study is a grid"
    elif case == "test root":
        extra, message = ["--test-root", str(tmp_path / "nowhere")], f"--test-root: {tmp_path / 'nowhere'}: dataset root does not exist"
    elif case in ("empty data root", "empty test root", "empty optuna storage"):  # an unset shell variable (the CLI and search reviews)
        flag = {"empty data root": "--data-root", "empty test root": "--test-root"}.get(case, "--optuna-storage")
        extra, message = [flag, ""], f"{flag}: empty path"
    elif case == "num_classes":  # the manifest's 3 class names; a supervised-only row alone used to pass
        extra = ["--set", "data.num_classes=5", "--rows", "Supervised only"]
        message = (f"{phantom_env}: a dataset of 4 classes (background included; its manifest.json), but the trials are set up "
                   "for data.num_classes = 5; train on it with --set data.num_classes=4")
    else:
        extra, message = ["--data-root", str(afile)], f"{afile}: is a file, not a dataset root folder (create one with"
    assert study_main("ablation_tailness", results, "--dry-run", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1, err
    assert afile.read_text() == "not a folder" and not (tmp_path / "results").exists()


@pytest.mark.parametrize("flags", [("--cpus-per-trial", "64"), ("--num-workers", "64"), ("--gpus-per-trial", "1")],
                         ids=["cpus", "workers", "gpus"])
def test_resource_flags_this_machine_cannot_meet_are_refused_before_the_phantom_is_generated(tmp_path, capsys, monkeypatch, flags):
    """The preflight review: on a fresh cache a study generated the embedded phantom (20 s) and only then refused
    --gpus-per-trial on a machine without a GPU, or more CPUs per trial than it has."""
    import ray
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a command line's process: the session's Ray is not its
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert study_main("ablation_tailness", tmp_path / "results", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + {"--cpus-per-trial": "--cpus-per-trial 64", "--num-workers": "--num-workers 64",
                                       "--gpus-per-trial": "--gpus-per-trial > 0 but this machine has no CUDA GPU"}[flags[0]]), err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()


def test_rows_are_checked_as_the_command_keeps_and_sets_them(tmp_path, phantom_env, capsys):
    """The CLI review: every row was validated before --rows and --set applied, so a value valid for the kept rows was
    refused for a row left out, and a --set the error asked for was not seen. A --name equal to the script's name was
    taken for the default (the profile appended)."""
    assert study_main("ablation_tailness", tmp_path / "r", "--dry-run", "--rows", "Supervised only",
                      "--set", "data.unlabelled_batch=0") == 0
    assert study_main("ablation_tailness", tmp_path / "r", "--dry-run", "--rows", "MONA", "--set", "data.unlabelled_batch=6",
                      "--set", "objective_params.nn_pool_capacity=12") == 0
    capsys.readouterr()
    assert study_main("ablation_tailness", tmp_path / "r", "--dry-run", "--rows", "MONA", "--name", "ablation_tailness") == 0
    assert f"results would go to {tmp_path / 'r' / 'ablation_tailness'}\n" in capsys.readouterr().out
    # a --set value wrong for the kept rows names the --set (it named the row, as if the row were wrong)
    assert study_main("ablation_tailness", tmp_path / "r", "--dry-run", "--rows", "MONA", "ARCO-SG",
                      "--set", "objective_params.temperature=-1") == 2
    assert capsys.readouterr().err.startswith("error: --set objective_params.temperature: row 'MONA': objective 'mona': "
                                              "MonaConfig.temperature: must be in (0, inf), got -1.0")
    assert not (tmp_path / "r").exists()


def test_a_dry_run_warns_of_a_results_folder_the_run_cannot_write(phantom_env, capsys):
    """A read-only --results-dir passed the dry run silently, and the run then refused it (the workflow probe). The dry
    run writes nothing, so it prices the study and warns (/proc: no folder can be made there, even by root)."""
    assert study_main("ablation_tailness", Path("/proc/medseg-dry-run"), "--dry-run", "--rows", "Supervised only") == 0
    err = capsys.readouterr().err
    assert ("warning: the run would stop before training: --results-dir (Study.results_dir) "
            "/proc/medseg-dry-run/ablation_tailness-smoke: cannot") in err, err
    assert not Path("/proc/medseg-dry-run").exists()


def test_an_address_where_no_cluster_answers_is_refused_before_anything_is_written(tmp_path, phantom_env, capsys, monkeypatch):
    """The studies review: the address was probed only when Ray started, after study.json, trials/ and preflight.json
    were written (a folder another study script could then take over), and a dry run passed it."""
    import socket

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the session's shared Ray (a notebook's is kept, not probed)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    results = tmp_path / "results"
    assert study_main("ablation_tailness", results, "--rows", "Supervised only", "--address", address) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --address {address}: no Ray cluster answers there (TCP connection: ") and err.count("\n") == 1
    assert not results.exists()
    assert study_main("ablation_tailness", results, "--dry-run", "--rows", "Supervised only", "--address", address) == 0
    assert f"warning: the run would stop before training: --address {address}: no Ray cluster answers" in capsys.readouterr().err
    assert not results.exists()


def test_rows_and_set_select_and_change_exactly_those_trials_in_a_dry_run(tmp_path, phantom_env, capsys):
    results = tmp_path / "results"
    code = study_main("ablation_tailness", results, "--rows", "MONA", "ACTION w/o L_anco", "--set", "optim.lr=0.02",
                      "--set", "objective_params.temperature=0.2", "--dry-run")
    out = capsys.readouterr().out
    assert code == 0
    changed = {"optim.lr": 0.02, "objective_params.temperature": 0.2}
    mona = expected_key(phantom_env, "mona", **changed)
    action = expected_key(phantom_env, "action", without_contrast=True, **changed)
    lines = [line.split() for line in out.splitlines() if "-l1-s1-" in line]
    # row, labelled, seed, key, status (2 words), cost, time (2 words)
    assert [(" ".join(line[:-8]), line[-6], line[-5:-3]) for line in lines] == [("MONA", mona, ["to", "run"]),
                                                                                 ("ACTION w/o L_anco", action, ["to", "run"])]
    assert mona != expected_key(phantom_env, "mona")  # the overrides changed the configuration
    assert "Totals: 2 trial(s): 0 finished, 2 to run;" in out
    assert "supervised step(s) of this study's first trial to run, on this machine" in out
    assert not results.exists()  # a dry run writes nothing


def test_set_to_the_value_a_row_already_trains_with_keeps_its_trial_key(tmp_path, phantom_env, capsys):
    """MONA and ACTION train at temperature 0.5: --set it to 0.5 (spelled 5e-1) must find the same trials, not new ones."""
    code = study_main("ablation_tailness", tmp_path / "results", "--rows", "MONA", "ACTION", "--set",
                      "objective_params.temperature=5e-1", "--dry-run")
    out = capsys.readouterr().out
    assert code == 0
    keys = [line.split()[-6] for line in out.splitlines() if "-l1-s1-" in line]
    assert keys == [expected_key(phantom_env, "mona"), expected_key(phantom_env, "action")]


def _finished_trial(trial_dir: Path, config: dict) -> None:
    """A complete result (read_trial accepts it) without training."""
    outcome = SimpleNamespace(labelled=SimpleNamespace(to_dict=lambda: {"patients": ["p1"]}), curves=[], val_curve=[],
                              test_rows=[{"case": "c1", "class": 1, "dice": 0.5, "jaccard": 0.3, "hd95": 1.0, "asd": 1.0}],
                              best_step=3, best_val_dice=0.5, timing={}, resumed_from_step=0)
    write_trial_results(trial_dir, config=config, tags={}, outcome=outcome, seed=int(config.get("seed", 1)))


def test_dry_run_statuses_costs_and_wall_time(tmp_path, phantom_env, monkeypatch):
    from medseg_platform.config import TrialConfig
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.splits import select_labelled

    module = load_script("ablation_tailness")
    base = SMOKE.trial.replace(**{"data.root": phantom_env})
    study = module.build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, base)
    study.name, study.results_dir, study.seeds = "tail", tmp_path, (1,)
    trials = {t["tags"]["row"]: t for t in study.trial_params()}
    _finished_trial(study.study_dir / "trials" / trials["Supervised only"]["key"], trials["Supervised only"]["config"])
    mona = TrialConfig.from_dict(trials["MONA"]["config"])  # its one ISD stage is shared by the MONA/ARCO rows: cache it
    subset = select_labelled(AcdcLayout(phantom_env).train_slices, "1", "published", 1)
    stage = pretrain_cache_dir(study.study_dir) / stage_key(mona, 0, subset)
    stage.mkdir(parents=True)
    (stage / "final.pt").write_bytes(b"")

    plan = plan_study(study, unit=UnitSeconds(0.01, "a test constant"), cpus=2)
    evaluations = 3 * EVALUATION_COST  # 6 steps validated every 3 -> 2 validations + the test
    steps, stage_steps = SMOKE.trial.optim.max_steps, SMOKE.methods.pretrain_steps
    expected = {"Supervised only": (FINISHED, 0.0),
                "Mean teacher": (TO_RUN, steps * STEP_COST["mean_teacher"] + evaluations),
                "MONA": (CACHED, steps * STEP_COST["mona"] + evaluations),
                "MONA/ARCO w/o L_contrast": (CACHED, steps * STEP_COST["mona w/o contrast"] + evaluations),
                "ARCO-SG": (CACHED, steps * STEP_COST["arco"] + evaluations),
                "ARCO-SAG": (CACHED, steps * STEP_COST["arco"] + evaluations),
                # ACTION's two stages are charged once, to the trial that starts first
                "ACTION": (TO_RUN, steps * STEP_COST["action"] + evaluations + 2 * stage_steps * STEP_COST["isd_pretrain"]),
                "ACTION w/o L_anco": (TO_RUN, steps * STEP_COST["action w/o anco"] + evaluations)}
    assert [(t.row, t.status) for t in plan.trials] == [(row, status) for row, (status, _) in expected.items()]
    assert [t.units for t in plan.trials] == pytest.approx([units for _, units in expected.values()])
    # by hand: 30.0 + 50.4 + 44.4 + 52.8 + 52.8 + 84.6 + 33.6 = 348.6 units; 2 slots: max(348.6 / 2, 84.6) x 0.01 s
    assert plan.total_units == pytest.approx(348.6) and plan.wall_s == pytest.approx(1.743)
    text = format_plan(plan)
    assert "Totals: 8 trial(s): 1 finished, 7 to run (4 on cached pretraining); 348.6 cost units of training left (fine-tuning and uncached pretraining)" in text
    assert "Estimated wall time: 2 s with 2 trial(s) at once (2 CPUs of this machine / 1 per trial)" in text
    assert text.rstrip().endswith("1 unit = 10.0 ms, a test constant")
    study.max_concurrent = 1
    assert plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2).wall_s == pytest.approx(3.486)
    # multi-worker trials: each of the 7 runs also pays its Ray Train worker group (the dry run said 2 s; a run took 95)
    study.max_concurrent, study.num_workers = None, 2
    workers = plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2)
    runs = [r for t in workers.trials for r in t.runs]  # every trial again: the worker count is part of the keys
    assert workers.slots == 1 and workers.wall_s == pytest.approx(0.01 * sum(runs) + len(runs) * WORKER_GROUP_S)
    assert f"each run with {WORKER_GROUP_S:.0f} s of Ray Train worker-group start and teardown" in format_plan(workers)
    scoring = dataclasses.replace(workers.trials[0], status=TO_SCORE, runs=(7.0,))  # scored on --test-root: no worker group
    assert dataclasses.replace(workers, trials=(scoring,)).wall_s == pytest.approx(0.07)
    # the unit measured alone: x1.4 for trials sharing the cores, and more where more trial threads than cores run (the
    # runner review: --cpus-per-trial 0.5 on 2 cores said 4 trials at once at full speed)
    import medseg_platform.plan as plan_module

    study.num_workers = 1
    monkeypatch.setattr(plan_module, "measure_unit_seconds", lambda *a, **k: UnitSeconds(0.01, "measured"))
    shared = plan_study(study, cpus=2)
    assert shared.slots == 2 and shared.unit.seconds == pytest.approx(0.01 * plan_module.SHARED_CORES_SLOWDOWN)
    study.cpus_per_trial = 0.5
    crowded = plan_study(study, cpus=2)
    assert crowded.slots == 4 and crowded.unit.seconds == pytest.approx(0.01 * plan_module.SHARED_CORES_SLOWDOWN * 2)
    assert "x2 for 4 trial threads on 2 cores" in crowded.unit.source
    assert crowded.wall_s == pytest.approx(shared.wall_s)  # the same work on the same 2 cores
    # a trial of 8 threads was timed alone on both cores: two at once share those two, 2x, not 16 threads / 2 cores = 8x
    # (the workflow review: a dry run said 3.9 min for a run of 39 s)
    study.cpus_per_trial, base = 1.0, study.base
    study.base = base.replace(threads=8)
    threaded = plan_study(study, cpus=2)
    assert threaded.slots == 2 and threaded.unit.seconds == pytest.approx(0.01 * plan_module.SHARED_CORES_SLOWDOWN * 2)
    assert "x2 for 16 trial threads on 2 cores (2 trial process(es) at once, each timed alone on 2 core(s))" in threaded.unit.source
    # every rank of a multi-worker trial runs a whole step: 4 one-thread ranks on 2 cores, 2x (the diff review)
    study.base, study.num_workers, study.cpus_per_trial = base, 2, 0.5
    ranks = plan_study(study, cpus=2)
    assert ranks.slots == 2 and ranks.unit.seconds == pytest.approx(0.01 * plan_module.SHARED_CORES_SLOWDOWN * 2)
    assert "x2 for 4 trial threads on 2 cores (4 trial process(es) at once" in ranks.unit.source
    study.num_workers, study.cpus_per_trial = 1, 1.0
    # a rerun restores the experiment, which keeps the --max-concurrent it started with: so does the dry run
    from medseg_platform.results import tune_storage
    from medseg_platform.study.runner import LIMITS_SUFFIX

    study.cpus_per_trial = 1.0
    name = f"{study.name}-{study.spec_hash(study.trial_params())}"
    (tune_storage(study.study_dir) / name).mkdir(parents=True)
    (tune_storage(study.study_dir) / f"{name}{LIMITS_SUFFIX}").write_text(json.dumps({"max_concurrent": 1, "max_retries": 2}))
    kept = plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2)
    assert kept.slots == 1 and kept.slots_source.startswith("--max-concurrent 1") and study.max_concurrent is None
    # ... unless it resumes none of its trials: those it considers done but without a result run in a fresh experiment,
    # under this command's limits (the progress review: "2 at once" said where 1 ran, and the reverse)
    def tune_state(statuses):
        state = [[json.dumps({"trial_id": f"t{i}", "status": status, "config": {}}), json.dumps({"last_result": {}})]
                 for i, status in enumerate(statuses)]
        (tune_storage(study.study_dir) / name / "experiment_state-2026.json").write_text(json.dumps({"trial_data": state}))

    grid = len(study.trial_params())
    tune_state(["TERMINATED"] * grid)
    assert plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2).slots == 2
    tune_state(["TERMINATED"] * (grid - 1) + ["PENDING"])  # one to resume
    assert plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2).slots == 1
    tune_state(["TERMINATED"] * (grid - 1))  # one its grid has not created yet: the restored experiment runs it
    assert plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2).slots == 1
    # scored from a finished trial: in the driver, one after another before Ray starts, then the rest in parallel
    rescoring = dataclasses.replace(plan.trials[1], status=TO_RESCORE, runs=(7.0,))
    rest = dataclasses.replace(plan, trials=plan.trials[2:])
    assert dataclasses.replace(plan, trials=(rescoring, rescoring, *rest.trials)).wall_s == pytest.approx(0.14 + rest.wall_s)
    # scorings are not training (the progress review: the totals called them "cost units of training left")
    only_scoring = format_plan(dataclasses.replace(plan, trials=(rescoring, rescoring)))
    assert "; 14.0 of scoring (test passes of finished trials' weights)" in only_scoring and "training left" not in only_scoring
    assert "with 1 trial(s) at once" in format_plan(dataclasses.replace(plan, trials=plan.trials[1:2]))  # not 2 for 1
    finished_only = format_plan(dataclasses.replace(plan, trials=plan.trials[:1]))  # it said "0 s ... plus 15 s of start-up"
    assert "Estimated wall time: nothing to train (a run only rebuilds the tables, plots and report)" in finished_only
    nothing = format_plan(dataclasses.replace(plan, trials=plan.trials[:1], unit=UnitSeconds(0.0, "not measured: nothing to run")))
    assert "1 unit =" not in nothing and nothing.rstrip().endswith("each trial's set-up is not counted)")  # "1 unit = 0.0 ms"
    assert "No step-cost prior" not in text and plan.unpriced == ()
    assert "CPU training" not in text  # a paper-sized study on this machine's CPUs says what it is sized for
    slow = dataclasses.replace(plan, unit=UnitSeconds(1000.0, "x"))  # 1000 s a unit: about 50 h
    assert "That is more than 24 h of CPU training: a study of this size is meant for GPUs" in format_plan(slow)
    assert "CPU training" not in format_plan(dataclasses.replace(slow, on_gpus=True))
    # the paper-path probe: GPU trials priced on a CPU-only driver read as a GPU estimate (2758 h)
    assert "but the unit was timed on this machine's CPU" in format_plan(dataclasses.replace(slow, on_gpus=True))
    assert "timed on this machine's CPU" not in format_plan(dataclasses.replace(slow, on_gpus=True, unit=UnitSeconds(1000.0, "x", "cuda")))
    assert "timed on this machine's CPU" not in text
    monkeypatch.delitem(STEP_COST, "mean_teacher")  # as for an objective registered without a measured prior
    unpriced = plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2)
    assert unpriced.unpriced == ("mean_teacher",)
    assert "No step-cost prior for objective(s) mean_teacher: each step priced at 1 unit(s)" in format_plan(unpriced)
    assert plan.left_out == 0 and "are not part of this command" not in text
    study.num_workers = 1  # (with 2 workers, the finished 1-worker trial is another configuration: it would count too)
    other = dict(trials["Supervised only"]["config"], seed=7)  # a finished trial of another run's --seeds
    _finished_trial(study.study_dir / "trials" / trial_key(other), other)
    extra = plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2)
    assert extra.left_out == 1 and "1 finished trial(s) in " in format_plan(extra)
    assert "are not part of this command (other rows, seeds, label fractions or settings): its tables will leave them out" in format_plan(extra)
    assert extra.other_roots == () and "another data root" not in format_plan(extra)
    moved = dict(trials["Supervised only"]["config"], data={**trials["Supervised only"]["config"]["data"], "root": "/old/phantom"})
    _finished_trial(study.study_dir / "trials" / trial_key(moved), moved)  # the same trial before MEDSEG_CACHE moved
    again = plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2)
    assert again.left_out == 2 and again.other_roots == ("/old/phantom",)
    assert "Some trained on another data root (/old/phantom): a trial's key includes its data root" in format_plan(again)
    assert not (study.study_dir / "study.json").exists()


def test_a_dry_run_prices_an_interrupted_trial_from_its_checkpoint(tmp_path, phantom_env):
    """A trial interrupted at step 3 of 6 was priced as a whole trial, "to run" (the workflow probe): it resumes from
    its checkpoint, so only the steps and validations after it are charged."""
    import torch

    from medseg_platform.plan import TO_RESUME
    from medseg_platform.results import checkpoint_path

    module = load_script("ablation_tailness")
    base = SMOKE.trial.replace(**{"data.root": phantom_env})
    study = module.build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, base)
    study.name, study.results_dir, study.seeds = "tail", tmp_path, (1,)
    trials = {t["tags"]["row"]: t for t in study.trial_params()}
    path = checkpoint_path(study.study_dir / "trials" / trials["Mean teacher"]["key"])
    path.parent.mkdir(parents=True)
    torch.save({"step": 3, "val_curve": [{"step": 3, "val_dice": 0.1}], "objective": {"w": torch.zeros(2)}}, path)
    plan = plan_study(study, unit=UnitSeconds(0.01, "a test constant"), cpus=2)
    mt = next(t for t in plan.trials if t.row == "Mean teacher")
    # 3 of 6 steps left at 1.8 units, one validation left (at step 6) and the test
    assert (mt.status, mt.status_text) == (TO_RESUME, "to resume at step 3/6")
    assert mt.units == pytest.approx(3 * STEP_COST["mean_teacher"] + 2 * EVALUATION_COST)
    text = format_plan(plan)
    assert "to resume at step 3/6" in text and " to run (1 resuming" in text
    path.write_bytes(b"not a checkpoint")  # unreadable: priced as a fresh trial (the run says what is wrong)
    assert next(t for t in plan_study(study, unit=UnitSeconds(0.01, "x"), cpus=2).trials if t.row == "Mean teacher").status == TO_RUN


def test_search_dry_run_counts_the_samples_and_prints_no_search_summary(tmp_path, phantom_env, capsys):
    assert study_main("hparam_search", tmp_path / "results", "--num-samples", "3", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "ARCO-SAG (search samples) x3 " in out and "Search: 3 samples of one configuration" in out
    assert "1 trial(s) of 3 samples each, results would go to" in out and "Totals: 1 trial(s) of 3 samples each: " in out
    assert "best configuration" not in out and not (tmp_path / "results").exists()
    # samples a stop left mid-way are named with their steps (the search walkthrough: "0 to run", nothing about them)
    import json

    import torch

    from medseg_platform.results import checkpoint_path

    # (an ASHA stop keeps its last validation's checkpoint and writes nothing else: the search history says it ended)
    history = tmp_path / "results" / "hparam_search-arco_sag-smoke" / "search_history.csv"
    history.parent.mkdir(parents=True)
    history.write_text("order,trial_id,trial_key,status\n1,cccc,arco-l1-s1-0123456789-cccc,stopped early\n")
    for name, step, done in (("arco-l1-s1-0123456789-aaaa", 4, False), ("arco-l1-s1-0123456789-bbbb", 7, True),
                             ("arco-l1-s1-0123456789-cccc", 5, False)):
        folder = tmp_path / "results" / "hparam_search-arco_sag-smoke" / "trials" / name
        checkpoint_path(folder).parent.mkdir(parents=True)
        torch.save({"step": step, "val_curve": []}, checkpoint_path(folder))
        (folder / "config.json").write_text(json.dumps({"config": {"optim": {"max_steps": 9}}}))
        if done:
            (folder / "result.json").write_text("{}")
    assert study_main("hparam_search", tmp_path / "results", "--num-samples", "3", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "Search: 3 samples of one configuration, 1 stopped mid-way resume from their checkpoints (at step 4/9; " in out
    assert "Totals: 1 trial(s) of 3 samples each: 0 finished, 1 to run" in out


def test_set_is_recorded_in_settings_and_report(tmp_path, phantom_env, ray_address):
    results = tmp_path / "results"
    code = study_main("ablation_tailness", results, "--address", ray_address, "--rows", "Supervised only", "--set", "optim.lr=0.02")
    assert code == 0
    study_dir = results / "ablation_tailness-smoke"
    assert json.loads((study_dir / "settings.json").read_text())["overrides"] == {"optim.lr": 0.02}
    keys = json.loads((study_dir / "study.json").read_text())["trials"]
    assert keys == [expected_key(phantom_env, "supervised", **{"optim.lr": 0.02})]
    assert json.loads((study_dir / "study.json").read_text())["script"] == "ablation_tailness"  # from the run's start
    result = json.loads((study_dir / "trials" / keys[0] / "result.json").read_text())
    assert result["config"]["optim"]["lr"] == 0.02 and result["tags"]["row"] == "Supervised only"
    assert "- **Overrides** (`--set`, every trial): `optim.lr=0.02`\n" in (study_dir / "report.md").read_text()
    # the tables say it too: a table copied out of the report read as the profile's recipe
    sentence = "Every trial ran with --set optim.lr=0.02 (the profile's recipe changed)."
    assert sentence in (study_dir / "table_dice.md").read_text(encoding="utf-8")
    assert sentence.replace("--", "-{}-") in (study_dir / "table_hd95.tex").read_text(encoding="utf-8")  # TeX's two hyphens


def test_labelled_chooses_the_label_fractions_of_every_study(tmp_path):
    """The studies' fractions were fixed per profile (1 / 3 / 7 patients at paper): a dataset with fewer training
    patients had no way to run them."""
    args = argparse.Namespace(results_dir=str(tmp_path), labelled=["2", "5%"])
    for name in ("ablation_tailness", "ablation_sampling", "ablation_temperature", "ablation_losses"):
        study = load_script(name).build(args, SMOKE, SMOKE.trial)
        assert study.grid["data.labelled"] == ["2", "5%"], name
    study = load_script("label_fractions").build(args, SMOKE, SMOKE.trial)
    fractions = {v.overrides["data.labelled"] for v in study.variants}
    assert fractions == {"2", "5%", "100%"}  # and the full-supervision row
    assert ("Supervised only", "5%", "2") in {(c["a"], c["column"], c.get("b_column")) for c in study.claims}
    # 100% is the full-supervision row's column: its supervised-only trial merged into that row and the claim about
    # supervised-only at 100% read "not run" (the studies review)
    with pytest.raises(ConfigError, match=r"^--labelled 100.0%: this study trains full supervision as its own row "):
        load_script("label_fractions").build(argparse.Namespace(results_dir=str(tmp_path), labelled=["1", "100.0%"]), SMOKE, SMOKE.trial)
    default = load_script("ablation_tailness").build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, SMOKE.trial)
    assert default.grid["data.labelled"] == list(SMOKE.labelled)  # without the flag: the profile's


@pytest.mark.parametrize("name, default", [
    ("ablation_tailness", "1 patient at --profile smoke and quick, 1 / 3 / 7 patients at paper"),
    ("ablation_sampling", "1 patient at --profile smoke and quick, 1 / 3 / 7 patients at paper"),
    ("label_fractions", "1 patient at --profile smoke, 1 / 3 / 7 patients at quick and paper"),
    ("ablation_temperature", "1 patient)"),
    ("ablation_losses", "1 patient)"),
    ("hparam_search", "1 patient; a search tunes at one fraction"),
])
def test_each_studys_labelled_help_states_its_own_default(name, default, capsys):
    """Every study's --labelled help read "e.g. 1 / 3 / 7 patients at --profile paper", also label_fractions' (1 / 3 / 7
    at quick too) and the ARCO ablations' (1 at every profile)."""
    module = load_script(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"]) if hasattr(module, "main") else run_study_main(module.__doc__, name, module.build, argv=["--help"])
    assert exit_info.value.code == 0
    assert f"(default: {default}" in " ".join(capsys.readouterr().out.split())


def test_rows_keep_only_the_claims_between_kept_rows(tmp_path):
    from medseg_platform.overrides import select_rows

    module = load_script("ablation_tailness")
    study = module.build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, SMOKE.trial)
    select_rows(study, ["MONA/ARCO w/o L_contrast", "MONA"])
    assert [v.tags["row"] for v in study.variants] == ["MONA", "MONA/ARCO w/o L_contrast"]  # the study's order
    assert [(c["a"], c["b"]) for c in study.claims] == [("MONA", "MONA/ARCO w/o L_contrast")]
    assert study.claims_left_out == 10 and study.description([])["claims_left_out"] == 10
    # rows between which no declared claim falls: the report says so, not that the study declares none (the walkthrough)
    from analysis.claims import claims_section

    study = module.build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, SMOKE.trial)
    select_rows(study, ["MONA"])
    info = study.description([])
    assert info["claims"] == [] and info["claims_left_out"] == 11
    section = " ".join(claims_section(info, {"script": "ablation_tailness"}, []))
    assert "None of the study's 11 declared claims is between two rows this run kept (--rows)" in section
    assert "declares no claim" in " ".join(claims_section({"claims": []}, {"script": "ablation_tailness"}, []))


def _resolved_configs(name: str, results: Path, monkeypatch, *extra: str) -> dict[str, dict]:
    """Row -> resolved trial config of a smoke study as the command line builds it (a dry run, planning skipped)."""
    import medseg_platform.plan as plan

    module, built = load_script(name), []

    def build(args, profile, base):
        built.append(module.build(args, profile, base))
        return built[-1]

    monkeypatch.setattr(plan, "plan_study", lambda study, **kwargs: study)
    monkeypatch.setattr(plan, "format_plan", lambda planned: "")
    argv = ["--smoke-test", "--results-dir", str(results), "--no-dashboard", "--dry-run", *extra]
    assert run_study_main(module.__doc__, name, build, argv=argv) == 0
    return {t["tags"]["row"]: t["config"] for t in built[-1].trial_params()}


def _leaves(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "objective_params":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value, sort_keys=True)
    return out


@pytest.mark.parametrize("name", ["ablation_tailness", "label_fractions"])
def test_released_protocol_changes_only_the_protocol_keys_of_every_trial(tmp_path, phantom_env, monkeypatch, name):
    corrected = _resolved_configs(name, tmp_path / "results", monkeypatch)
    released = _resolved_configs(name, tmp_path / "results", monkeypatch, "--protocol", "released")
    assert sorted(corrected) == sorted(released) and len(corrected) >= 2
    for row in corrected:
        before, after = _leaves(corrected[row]), _leaves(released[row])
        changed = {key: json.loads(after[key]) for key in before if before[key] != after[key]}
        # the phantom has no released slice counts: the labelled set (whole patients) and all training stay as they were
        assert changed == {"eval.selection": "final", "eval.empty_policy": "released", "eval.distance_units": "voxel"}, row
        assert json.loads(before["eval.selection"]) == "best_val" and json.loads(before["eval.distance_units"]) == "mm"


def test_a_row_that_leaves_the_protocol_is_an_error(tmp_path):
    from medseg_platform.study import Study, Variant
    from medseg_platform.protocol import check_protocol

    keys = {"eval.empty_policy": "released"}
    study = Study("s", SMOKE.trial, tmp_path, variants=[Variant({"row": "A"}, {"eval.empty_policy": "released"}),
                                                         Variant({"row": "B"}, {"eval": {"empty_policy": "nan"}})])
    with pytest.raises(ConfigError, match=r"--protocol released: row 'B' sets eval.empty_policy to 'nan', the protocol "
                                          r"to 'released' \(leave the row out with --rows or use --protocol corrected\)"):
        check_protocol(study, "released", keys)
    study.variants = study.variants[:1]
    check_protocol(study, "released", keys)  # the same value is no conflict
    study.grid = {"eval.empty_policy": ["nan", "released"]}
    with pytest.raises(ConfigError, match="study s varies eval.empty_policy"):
        check_protocol(study, "released", keys)


def test_released_protocol_smoke_run_differs_only_in_evaluation(tmp_path, phantom_env, ray_address, capsys):
    """End to end on the smoke phantom (one row): the same training, evaluated as the protocol says; and the released
    protocol in the corrected run's folder scores that run's trial instead of training it."""
    trials = {}
    for protocol in ("corrected", "released"):
        results = tmp_path / protocol
        assert study_main("ablation_tailness", results, "--address", ray_address, "--rows", "Supervised only",
                          "--protocol", protocol) == 0
        study_dir = results / "ablation_tailness-smoke"
        assert json.loads((study_dir / "settings.json").read_text())["protocol"] == protocol
        assert f"- **Protocol**: {protocol} (`--protocol {protocol}`" in (study_dir / "report.md").read_text()
        (key,) = json.loads((study_dir / "study.json").read_text())["trials"]
        trials[protocol] = study_dir / "trials" / key
    result = {p: json.loads((trials[p] / "result.json").read_text()) for p in trials}
    before, after = _leaves(result["corrected"]["config"]), _leaves(result["released"]["config"])
    assert {k for k in before if before[k] != after[k]} == {"eval.selection", "eval.empty_policy", "eval.distance_units"}
    losses = {p: [row["loss"] for row in read_csv(trials[p] / "curves.csv")] for p in trials}
    assert losses["corrected"] == losses["released"] and len(losses["released"]) >= 2  # the same training
    assert result["released"]["best_step"] == SMOKE.trial.optim.max_steps  # the final iteration's weights
    mean = result["released"]["test"]["mean"]  # the released empty-mask convention leaves no value undefined
    assert [mean[f"{m}_undefined"] for m in ("dice", "jaccard", "hd95", "asd")] == [0, 0, 0, 0]

    # --protocol released in the corrected run's folder trains nothing: the trial is scored from its corrected
    # sibling's checkpoint (medseg_platform.rescore), with the files the released run of its own wrote
    study_dir, corrected_key = tmp_path / "corrected" / "ablation_tailness-smoke", trials["corrected"].name
    capsys.readouterr()
    assert study_main("ablation_tailness", tmp_path / "corrected", "--rows", "Supervised only", "--protocol", "released",
                      "--dry-run") == 0
    dry = capsys.readouterr().out
    assert "1 to score from a finished trial" in dry and "1 finished trial(s) in " in dry
    assert "for 1 scoring(s) from finished trials' checkpoints, one after another (nothing to train)" in dry
    # no --address: a run that trains nothing starts no Ray
    assert study_main("ablation_tailness", tmp_path / "corrected", "--rows", "Supervised only", "--protocol", "released") == 0
    out, err = capsys.readouterr()
    assert re.search(r"wall time [0-9.]+ s for the trials \(nothing left to train\), [0-9.]+ s for the command; results in ", out)
    (key,) = json.loads((study_dir / "study.json").read_text())["trials"]
    assert f"[{key}] scored from finished trial {corrected_key} (differs in eval.selection, eval.empty_policy, " \
           "eval.distance_units)" in err and "study ablation_tailness-smoke: 1 trial(s), 1 already finished" in err
    scored, trained = study_dir / "trials" / key, trials["released"]
    for name in ("per_case.csv", "val_curve.csv", "labelled.json", "config.json"):
        assert (scored / name).read_bytes() == (trained / name).read_bytes(), name
    curves = [[{k: v for k, v in row.items() if k != "steps_per_s"} for row in read_csv(folder / "curves.csv")]
              for folder in (scored, trained)]  # the scored trial's curves are its sibling's: the same but for the timing
    assert curves[0] == curves[1] and len(curves[0]) >= 2
    import numpy as np

    with np.load(scored / "qualitative.npz") as a, np.load(trained / "qualitative.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[f], b[f]) for f in a.files)
    result, reference = (json.loads((folder / "result.json").read_text()) for folder in (scored, trained))
    assert {k: v for k, v in result["scored_from"].items() if k != "environment"} == {
        "trial_key": corrected_key, "study": "ablation_tailness-smoke",
        "fields": {"eval.selection": ["best_val", "final"], "eval.empty_policy": ["nan", "released"],
                   "eval.distance_units": ["mm", "voxel"]}}
    for field in ("best_step", "best_val_dice", "test", "labelled", "conv_kernels", "steps_per_epoch"):
        assert result.get(field) == reference.get(field), field
    # its checkpoint holds the weights it tested: medseg predict and --test-root read them
    from medseg_platform.config import TrialConfig
    from medseg_platform.engine import load_selected_model

    import torch

    model = load_selected_model(TrialConfig.from_dict(result["config"]), scored, torch.device("cpu"), best_step=result["best_step"])
    reference_model = load_selected_model(TrialConfig.from_dict(reference["config"]), trained, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference_model.state_dict().values()))
    report = (study_dir / "report.md").read_text()
    assert "- **Protocol**: released (`--protocol released`" in report
    assert "- **Trials**: 1 of 1 finished, 0 errored, 0 corrupt (see Problems); 1 of the finished scored from the checkpoint " \
           "of a finished trial that trained alike" in report
    assert "- **Wall time**: the last run of the study command had nothing to train; it scored 1 trial(s) from" in report


def test_the_dry_run_warns_of_a_corrupt_result_as_the_run_does(tmp_path, phantom_env):
    """The walkthrough: the dry run listed a trial whose result.json was corrupt without a word (the run warns first)."""
    module = load_script("ablation_tailness")
    base = SMOKE.trial.replace(**{"data.root": phantom_env})
    study = module.build(argparse.Namespace(results_dir=str(tmp_path)), SMOKE, base)
    study.name, study.results_dir, study.seeds = "tail", tmp_path, (1,)
    trials = {t["tags"]["row"]: t for t in study.trial_params()}
    folder = study.study_dir / "trials" / trials["Mean teacher"]["key"]
    _finished_trial(folder, trials["Mean teacher"]["config"])
    (folder / "result.json").write_text((folder / "result.json").read_text()[:40])  # cut short
    plan = plan_study(study, unit=UnitSeconds(0.01, "a test constant"), cpus=2)
    (warning,) = plan.warnings
    assert warning.startswith("warning: corrupt result ") and str(folder / "result.json") in warning
    assert warning.endswith("the trial will be run again") and warning in format_plan(plan)
    assert {t.row: t.status for t in plan.trials}["Mean teacher"] != FINISHED


def test_profile_smoke_is_the_smoke_test(tmp_path, phantom_env, capsys, monkeypatch):
    """`medseg train --profile smoke` exists, the folders are named `-smoke`, but a study script refused `--profile smoke`
    (the HPO probe): it now runs what --smoke-test runs. The dry runs' step time is a constant: a measured one changed
    the estimates' column widths and the count of steps timed between the three runs (the flaky-test review)."""
    from medseg_platform import plan

    monkeypatch.setattr(plan, "measure_unit_seconds", lambda *args, **kwargs: plan.UnitSeconds(0.01, "a test constant"))
    module = load_script("ablation_tailness")
    outputs = []
    for flags in (["--smoke-test"], ["--profile", "smoke"], ["--smoke-test", "--profile", "smoke"]):
        results = tmp_path / "-".join(flags)
        code = run_study_main(module.__doc__, "ablation_tailness", module.build,
                              argv=[*flags, "--results-dir", str(results), "--no-dashboard", "--dry-run"])
        outputs.append(re.sub(r"\d+(\.\d+)? (ms|s|min|h)\b", "T", capsys.readouterr().out.replace(str(results), "RESULTS")))  # timings vary
        assert code == 0
    assert outputs[0] == outputs[1] == outputs[2] and "ablation_tailness-smoke" in outputs[0]


def test_the_class_count_a_dataset_records_is_taken_without_a_set(tmp_path, capsys):
    """The data-flow probe had to pass --set data.num_classes=3 after an error, on a dataset whose manifest records 3."""
    from medseg_platform.data.layout import write_manifest
    from analysis.console import main as medseg
    from tests.conftest import make_tiny_dataset

    root = make_tiny_dataset(tmp_path / "five")
    write_manifest(root, {"converter": "a test"}, {}, ("A", "B", "C", "D"))  # 4 foreground classes: 5 in all
    assert study_main("ablation_tailness", tmp_path / "results", "--dry-run", "--data-root", str(root), "--rows", "Supervised only") == 0
    assert (f"note: data.num_classes = 5, the class count {root}'s manifest records (background included; the profile's is 4)"
            in capsys.readouterr().err)
    assert medseg(["train", "supervised", "--profile", "smoke", "--in-process", "--data-root", str(root), "--results-dir",
                       str(tmp_path / "r"), "--set", "optim.max_steps=2", "--set", "eval.val_every=2"]) == 0
    (result,) = (tmp_path / "r").glob("train-supervised-smoke/trials/*/result.json")
    assert json.loads(result.read_text())["config"]["data"]["num_classes"] == 5


def test_a_dry_run_of_an_fp16_study_on_a_driver_without_cuda_times_full_precision(phantom_env, monkeypatch):
    """A dry run from a CPU-only head node of `--gpus-per-trial 1 --amp fp16` failed with fp16's "needs a CUDA device"
    (the GPU-path audit): the timing falls back to the CPU, and so to full precision."""
    import torch

    from medseg_platform.plan import measure_unit_seconds

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = SMOKE.trial.replace(**{"data.root": phantom_env, "optim.amp": "fp16"}).to_dict()
    unit = measure_unit_seconds(config, "cuda", steps=2, budget_s=0.5)
    assert unit.seconds > 0 and "(cpu," in unit.source and "full precision: fp16 needs CUDA)" in unit.source


def test_label_fractions_are_ordered_by_the_patients_they_select_and_each_selection_given_once(tiny_root, capsys):
    """The paper-path probe: label_fractions paired its "improves with more patients" claims in the order typed, and
    '1' and '5%' on a small dataset both trained (the copies averaged as seeds). The spelling is kept: it is in the
    trials' keys, so a folder trained with '5%' is found again (the review)."""
    from medseg_platform.errors import ConfigError
    from medseg_platform.study_flags import fractions_in_patient_order, selected_patients

    assert fractions_in_patient_order(["3", "1"], tiny_root, 4) == ("1", "3")
    assert fractions_in_patient_order(["50%", "1"], tiny_root, 4) == ("1", "50%")
    assert "note: label fraction 50% -> 2 of 4 training patients (50.0%; round(4 x 50/100))" in capsys.readouterr().err
    assert fractions_in_patient_order(["5%", "1"], tiny_root, 4) == ("5%", "1")  # a tie: refused by the study (below)
    with pytest.raises(ConfigError, match=r"--labelled, dataset .*: label fraction '7': 7 patients requested but the training split has only 4"):
        fractions_in_patient_order(["7"], tiny_root, 4)
    claims = load_script("label_fractions").claims(fractions_in_patient_order(["3", "1"], tiny_root, 4))
    assert [(c["b_column"], c["column"]) for c in claims if c.get("b_column")] == [("1", "3")]  # fewer -> more patients
    base = SMOKE.trial.replace(**{"data.root": str(tiny_root)})
    assert [selected_patients(f, base) for f in ("3", "75%")] == [3, 3] and selected_patients("75%") is None
    tailness = load_script("ablation_tailness")
    at_three = [c for c in tailness.claims(("1", "75%"), base) if c["column"] == "3"]
    assert len(at_three) == 1 and not [c for c in tailness.claims(("1", "75%")) if c["column"] == "3"]


def test_a_study_script_does_not_take_over_another_scripts_folder(tmp_path, phantom_env, capsys):
    """The reports probe: ``ablation_temperature.py --name ablation_tailness-smoke`` exited 0 and replaced the tailness
    study's record, tables and report with its own; ``medseg train`` into that folder was refused already."""
    folder = tmp_path / "results" / "ablation_tailness-smoke"
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({"name": folder.name, "trials": [], "seeds": [1]}))
    (folder / "settings.json").write_text(json.dumps({"script": "ablation_tailness", "command": "python studies/ablation_tailness.py --smoke-test"}))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert study_main("ablation_temperature", tmp_path / "results", "--name", folder.name, "--dry-run") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder}: holds a study of ablation_tailness (settings.json, made by python studies/ablation_tailness.py); "
        "ablation_temperature would replace its record, tables and report. Give --name a new folder name")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert study_main("ablation_tailness", tmp_path / "results", "--dry-run", "--rows", "Supervised only") == 0  # its own script
    # a folder written before settings.json named its script: the recorded command's (the review)
    (folder / "settings.json").write_text(json.dumps({"command": "python studies/ablation_tailness.py --smoke-test"}))
    assert study_main("ablation_temperature", tmp_path / "results", "--name", folder.name, "--dry-run") == 2
    assert "holds a study of ablation_tailness (settings.json, made by python studies/ablation_tailness.py)" in capsys.readouterr().err
    assert study_main("ablation_tailness", tmp_path / "results", "--dry-run", "--rows", "Supervised only") == 0
    # a run killed before its settings.json (or refused by Ray): study.json names the script from the run's start (the
    # studies review: another study script trained into such a folder)
    (folder / "settings.json").unlink()
    (folder / "study.json").write_text(json.dumps({"name": folder.name, "trials": [], "seeds": [1], "script": "ablation_tailness"}))
    assert study_main("ablation_temperature", tmp_path / "results", "--name", folder.name, "--dry-run") == 2
    assert ("holds a study of ablation_tailness (study.json); ablation_temperature would replace its record"
            in capsys.readouterr().err)
    assert study_main("ablation_tailness", tmp_path / "results", "--dry-run", "--rows", "Supervised only") == 0
    (folder / "study.json").write_text(json.dumps({"name": folder.name, "trials": [], "seeds": [1], "accumulates": "medseg train"}))
    assert study_main("ablation_tailness", tmp_path / "results", "--dry-run") == 2
    assert "holds the trials of medseg train (study.json); ablation_tailness would replace its record" in capsys.readouterr().err


def test_two_label_fractions_selecting_the_same_patients_are_one_error_before_anything_runs(tmp_path, phantom_env, capsys):
    """The paper-path probe: '1' and '5%' on the 4-patient smoke phantom both trained, and the copies were averaged as
    two seeds of one column."""
    results = tmp_path / "results"
    assert study_main("label_fractions", results, "--labelled", "1", "5%") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "note: label fraction 5% -> 1 of 4 training patients (25.0%; published ACDC mapping 5% = 3/70 patients)",
        "error: study label_fractions-smoke, row 'Supervised only': label fractions '1' and '5%' select the same 1 of the 4 "
        "training patients; give each fraction once"]
    assert not results.exists()


def test_the_stage_hint_is_only_for_parameters_no_fine_tuning_objective_has():
    """The review: `--set ema_momentum=0.9` was told that ema_momentum is a pretraining stage's parameter, which --set
    cannot reach, while objective_params.ema_momentum is every fine-tuning objective's."""
    from medseg_platform.overrides import check_key

    with pytest.raises(ConfigError) as info:
        check_key("ema_momentum", objective="mona")
    assert "close matches: objective_params.ema_momentum" in str(info.value) and "pretraining stages" not in str(info.value)
    with pytest.raises(ConfigError, match="window is a parameter of the ISD pretraining stages"):
        check_key("model.window", objective="mona")


def test_rows_with_greek_letters_can_be_typed_spelt_out():
    """The studies probe: `--rows "ARCO-SG, tau = 0.1"` was refused; only a typed τ selected the row."""
    from medseg_platform.overrides import select_rows
    from medseg_platform.study import Variant

    rows = ["ARCO-SG, τ = 0.1", "ARCO-SG, τ = 0.5", "ACTION, τ = 0.1"]
    study = SimpleNamespace(name="ablation_temperature-smoke", variants=[Variant({"row": r}, {}) for r in rows],
                            claims=[{"a": rows[0], "b": rows[1]}, {"a": rows[0], "b": rows[2]}])
    select_rows(study, ["ARCO-SG, tau = 0.1", "ARCO-SG, τ = 0.5"])
    assert [v.tags["row"] for v in study.variants] == rows[:2] and study.claims == [{"a": rows[0], "b": rows[1]}]
    with pytest.raises(ConfigError, match=r"no such row .*\(Greek letters may be spelt out: tau for τ\)"):
        select_rows(study, ["ARCO-SG, tau = 0.2"])
