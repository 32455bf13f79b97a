"""Scoring a trial from a finished sibling's checkpoint when the two differ only in how they are scored
(:mod:`medseg_platform.rescore`); the end-to-end check against a trained reference is
``tests/test_study_cli.py::test_released_protocol_smoke_run_differs_only_in_evaluation``."""

import json
import shutil

import numpy as np
import pytest
import torch

from analysis.console import main
from medseg_platform.data import layout
from medseg_platform.environment import trial_environment
from medseg_platform.rescore import score_from_sources, scoring_sources
from medseg_platform.results import checkpoint_path, read_csv, trial_key
from tests.conftest import make_tiny_dataset

TRAIN = ["--profile", "smoke", "--in-process", "--set", "optim.lr=0.1", "--set", "optim.max_steps=20", "--set", "eval.val_every=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny dataset and a study folder holding one finished supervised trial (best on val, empty policy "nan", mm)."""
    base = tmp_path_factory.mktemp("rescore")
    root = make_tiny_dataset(base / "tiny")
    results = base / "results"
    assert main(["train", "supervised", *TRAIN, "--data-root", str(root), "--results-dir", str(results)]) == 0
    study_dir = results / "train-supervised-smoke"
    (trial,) = (study_dir / "trials").iterdir()
    return root, results, study_dir, trial


def _config(trial, **dotted) -> dict:
    """The finished trial's config with ``dotted`` fields changed."""
    config = json.loads((trial / "result.json").read_text())["config"]
    config = json.loads(json.dumps(config))
    for key, value in dotted.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _pending(config: dict) -> dict:
    return {"key": trial_key(config), "config": config, "tags": {}}


def test_another_distance_unit_is_scored_from_the_finished_trial(finished, capsys):
    root, results, study_dir, source = finished
    capsys.readouterr()
    assert main(["train", "supervised", *TRAIN, "--set", "eval.distance_units=voxel", "--data-root", str(root),
                 "--results-dir", str(results)]) == 0
    err = capsys.readouterr().err
    scored = study_dir / "trials" / trial_key(_config(source, **{"eval.distance_units": "voxel"}))
    assert f"[{scored.name}] scored from finished trial {source.name} (differs in eval.distance_units)" in err
    result, reference = (json.loads((p / "result.json").read_text()) for p in (scored, source))
    assert result["scored_from"] == {"trial_key": source.name, "study": study_dir.name,
                                     "fields": {"eval.distance_units": ["mm", "voxel"]},
                                     "environment": trial_environment(torch.device("cpu"))}  # what computed its test rows
    assert (result["best_step"], result["best_val_dice"]) == (reference["best_step"], reference["best_val_dice"])
    assert (scored / "val_curve.csv").read_bytes() == (source / "val_curve.csv").read_bytes()
    ours, theirs = read_csv(scored / "per_case.csv"), read_csv(source / "per_case.csv")
    assert [(r["case"], r["class"], r["dice"], r["jaccard"]) for r in ours] == [(r["case"], r["class"], r["dice"], r["jaccard"])
                                                                                for r in theirs]
    # the same surfaces measured in voxels instead of mm (spacing 1.5 x 1.25 in-plane, 5 between slices): other numbers
    defined = [(a["hd95"], b["hd95"]) for a, b in zip(ours, theirs) if np.isfinite(a["hd95"])]
    assert defined and any(a != b for a, b in defined)
    # an evaluation, not a training: its timing has a test and no training phase (its total was once compared with the
    # reference's, but a 20-step smoke training takes as long as a test pass, and a CI run failed on 0.52 s vs 0.48 s)
    assert set(result["timing"]) == {"test_s", "total_s"} and reference["timing"]["train_s"] > 0
    # nor does its copied checkpoint carry the source's training time, which a later training of it resumed at its last
    # step would add to its own (the timing diff review)
    from medseg_platform.engine.checkpoint import load_checkpoint
    from medseg_platform.results import checkpoint_path

    assert load_checkpoint(checkpoint_path(scored))["timing"] == {} and load_checkpoint(checkpoint_path(source))["timing"]
    # a second run finds it finished
    assert main(["train", "supervised", *TRAIN, "--set", "eval.distance_units=voxel", "--data-root", str(root),
                 "--results-dir", str(results)]) == 0
    assert "already finished" in capsys.readouterr().err
    # a copy of the study under another name: its trial is scored from the first study's
    assert main(["train", "supervised", *TRAIN, "--name", "copy", "--data-root", str(root), "--results-dir", str(results)]) == 0
    assert f"[{source.name}] scored from finished trial {source.name} of study {study_dir.name} (the same configuration)" in \
        capsys.readouterr().err
    copy = json.loads((results / "copy" / "trials" / source.name / "result.json").read_text())
    assert copy["test"] == reference["test"] and copy["scored_from"]["study"] == study_dir.name


def test_a_trial_that_trains_differently_or_tests_unheld_weights_is_not_scored(finished, tmp_path):
    root, _, study_dir, source = finished
    assert scoring_sources(study_dir, [_pending(_config(source, **{"eval.distance_units": "voxel"}))])  # the control
    # every class in every val slice of this dataset: the two empty-mask policies give the same val Dice
    assert scoring_sources(study_dir, [_pending(_config(source, **{"eval.empty_policy": "released"}))])
    assert not scoring_sources(study_dir, [_pending(_config(source, **{"optim.lr": 0.05}))])  # another training
    assert not scoring_sources(study_dir, [_pending(_config(source, **{"eval.val_every": 10}))])  # another selection
    # a finished trial that tested its final weights holds no best-on-val state for a trial that selects on val
    final_dir = tmp_path / "study"
    final_config = _config(source, **{"eval.selection": "final"})
    assert scoring_sources(study_dir, [_pending(final_config)])  # final weights: every finished state holds them
    (final_dir / "trials").mkdir(parents=True)
    assert score_from_sources(study_dir, [_pending(final_config)], lambda _: None) == {trial_key(final_config)}
    shutil.move(str(study_dir / "trials" / trial_key(final_config)), final_dir / "trials")
    assert not scoring_sources(final_dir, [_pending(_config(source, **{"eval.distance_units": "voxel"}))])
    assert scoring_sources(final_dir, [_pending(_config(source, **{"eval.selection": "final", "eval.distance_units": "voxel"}))])


def test_a_trial_of_an_earlier_key_revision_is_no_source(finished, monkeypatch):
    """The extension review: a bumped KEY_REVISIONS entry, which docs/methods.md says trains the objective's rows again
    under new keys, had the new-key trials scored from the old checkpoints ("the same configuration")."""
    import medseg_platform.results as results_module

    _, _, study_dir, source = finished
    same = _pending(_config(source))
    assert same["key"] == source.name and scoring_sources(study_dir, [_pending(_config(source, **{"eval.distance_units": "voxel"}))])
    monkeypatch.setitem(results_module.KEY_REVISIONS, "supervised", 7)  # what the code now trains under a new key
    bumped = _pending(_config(source))
    assert bumped["key"] != source.name
    assert not scoring_sources(study_dir, [bumped])
    assert not results_module.keyed_by_this_code(source.name, _config(source))
    assert results_module.keyed_by_this_code(bumped["key"], _config(source))
    assert results_module.keyed_by_this_code(f"{bumped['key']}-abc123", _config(source))  # a search sample's folder


def test_a_scoring_that_fails_while_writing_leaves_no_copied_checkpoint_behind(finished, tmp_path, monkeypatch):
    """evalrev: a full disk at result.json left the source's checkpoint copied into the pending trial, which the trial,
    trained instead, resumed from at its last step with no `scored_from`; a checkpoint of its own attempt is kept."""
    from medseg_platform import results

    _, _, study_dir, source = finished
    pending = _pending(_config(source, **{"eval.empty_policy": "released"}))
    folder = study_dir / "trials" / pending["key"]
    own = checkpoint_path(folder)
    own.parent.mkdir(parents=True)
    own.write_bytes(b"the trial's own earlier attempt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results, "write_trial_results", full_disk)
    lines = []
    assert score_from_sources(study_dir, [pending], lines.append) == set()
    assert "not scored from" in lines[-1] and "No space left on device" in lines[-1]
    assert own.read_bytes() == b"the trial's own earlier attempt"
    assert sorted(p.name for p in own.parent.iterdir()) == [own.name]
    assert not (folder / "qualitative.npz").exists() and not (folder / "result.json").exists()


def test_another_empty_policy_needs_every_class_in_every_validated_case(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny")
    case = layout.AcdcLayout(root).val_cases[0]
    volume = layout.AcdcLayout(root).read_volume(case)
    label = volume.label.copy()
    label[label == 3] = 2  # class 3 absent from this val case: the released policy would score its Dice otherwise
    layout.write_case(root, case, volume.image, label, spacing=volume.spacing, with_slices=False)
    results = tmp_path / "results"
    assert main(["train", "supervised", *TRAIN, "--data-root", str(root), "--results-dir", str(results)]) == 0
    study_dir = results / "train-supervised-smoke"
    (source,) = (study_dir / "trials").iterdir()
    assert not scoring_sources(study_dir, [_pending(_config(source, **{"eval.empty_policy": "released"}))])
    voxel = _pending(_config(source, **{"eval.distance_units": "voxel"}))
    assert scoring_sources(study_dir, [voxel])  # the same policy: the same val Dice whatever the labels hold
    # a checkpoint that cannot be read: logged, nothing written, and the trial is left to be trained
    kept = checkpoint_path(source).read_bytes()
    checkpoint_path(source).write_bytes(kept[: len(kept) // 2])
    lines = []
    assert score_from_sources(study_dir, [voxel], lines.append) == set()
    assert lines[-1].startswith(f"[{voxel['key']}] not scored from {source.name} (MedsegError: ")
    assert lines[-1].endswith("it will be trained") and not (study_dir / "trials" / voxel["key"]).exists()


def test_a_trial_trained_on_another_version_of_the_dataset_is_no_source(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny")
    results = tmp_path / "results"
    assert main(["train", "supervised", *TRAIN, "--data-root", str(root), "--results-dir", str(results)]) == 0
    study_dir = results / "train-supervised-smoke"
    (source,) = (study_dir / "trials").iterdir()
    voxel = _pending(_config(source, **{"eval.distance_units": "voxel"}))
    assert scoring_sources(study_dir, [voxel])
    make_tiny_dataset(root, seed=7, depth=4)  # the same folder written again with other data
    assert not scoring_sources(study_dir, [voxel])  # its weights are not scored on the new data


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "mona", "arco_sg", "action"])
def test_the_final_weights_are_the_students_entries_of_every_objectives_state(method):
    """``eval.selection="final"`` is scored from the ``student.*`` entries of the checkpoint's objective state: for every
    method that is exactly the network the engine validates and tests (``Objective.eval_model``)."""
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import method_overrides, with_epoch_length
    from methods.registry import build_model, build_objective

    profile = PROFILES["smoke"]
    overrides = method_overrides(method, profile)
    params, _ = with_epoch_length(dict(overrides["objective_params"]), 10)
    torch.manual_seed(0)
    objective = build_objective(overrides["objective"], build_model("unet", num_classes=4, channels=profile.trial.model.channels), params)
    for p in objective.eval_model().parameters():  # weights that differ from any copy (teacher) made at construction
        p.data.add_(torch.randn_like(p))
    state = objective.state_dict()
    student = {name[len("student."):]: value for name, value in state.items() if name.startswith("student.")}
    expected = objective.eval_model().state_dict()
    assert list(student) == list(expected) and all(torch.equal(student[k], expected[k]) for k in expected)
