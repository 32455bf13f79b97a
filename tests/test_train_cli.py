"""``medseg train``: one configuration as one trial (:mod:`medseg_platform.train_cli`), in-process and through Ray."""

import argparse
import json

import pytest

from analysis.console import main
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import method_overrides
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
    assert result["tags"]["row"] == "Supervised only" and result["attempts"] == 1
    assert json.loads((study_dir / "study.json").read_text())["trials"] == [key]
    assert json.loads((study_dir / "settings.json").read_text())["overrides"] == {"optim.lr": 0.05}
    assert capsys.readouterr().out.startswith(f"trial {key}: best val Dice ")

    before = (trial_dir / "result.json").read_bytes()
    assert main(argv) == 0  # finished: not trained again
    assert "already finished" in capsys.readouterr().err and (trial_dir / "result.json").read_bytes() == before
    # the trial's own config.json reproduces the same trial (same key): nothing to train
    assert main(["train", "--config", str(trial_dir / "config.json"), "--profile", "smoke", "--in-process",
                 "--results-dir", str(results)]) == 0
    assert f"trial {key}: already finished" in capsys.readouterr().err
    assert (trial_dir / "result.json").read_bytes() == before


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
    ([], "give a method (supervised, mean_teacher, mona, arco_sg, arco_sag, action) or --config FILE.json"),
    (["mona", "--config", "c.json"], "give a method (supervised, mean_teacher, mona, arco_sg, arco_sag, action) or --config FILE.json, not both"),
    (["--config", "missing.json"], "--config {tmp}/missing.json: cannot read it"),
    (["--config", "bad.json"], "--config {tmp}/bad.json: not valid JSON"),
    (["--config", "unknown.json"], "config.optim: unknown key(s) ['lrr']"),
    (["supervised", "--set", "seed=2"], "--set seed: set by the flag --seed; use that instead"),
    (["supervised", "--set", "data.labelled=3"], "--set data.labelled: set by the flag --labelled; use that instead"),
    (["supervised", "--set", "optim.lr=x"], "--set optim.lr=x: expected a number"),
    (["supervised", "--set", "optim.lrr=1"], "--set optim.lrr: unknown key; close matches: optim.lr"),
    (["supervised", "--set", "objective_params.temperature=0.2"],
     "--set objective_params.temperature: row 'Supervised only' (objective supervised) has no parameter 'temperature' "
     "(its parameters: sup_weight)\n"),
])
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, phantom_root, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"optim": {"lrr": 1}}))
    results = tmp_path / "results"
    assert main(["train", *extra, "--profile", "smoke", "--in-process", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path.resolve())) and err.count("\n") == 1, err
    assert not results.exists()


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
