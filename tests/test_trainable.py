"""The Tune function trainable without Ray (``ray.tune``'s report/checkpoint calls replaced): an objective's
:class:`~medseg_platform.errors.MedsegError` raised at run time ends the trial as an application error, never
retried; anything else is an infrastructure failure that Tune retries (docs/ray.md)."""

from __future__ import annotations

import json

import pytest

import medseg_platform.study.ray_runtime as ray_runtime
from medseg_platform.errors import ConfigError, DataError
from medseg_platform.profiles import PROFILES
from medseg_platform.results import ERROR_FILE, RESULT_FILE, trial_folder, trial_key
from medseg_platform.study.trainable import run_trial_in_tune


@pytest.fixture
def reports(monkeypatch):
    """``ray.tune.report`` collected in a list, no Tune checkpoint to restore, no Ray runtime for the placement."""
    from ray import tune

    sent: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: sent.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray_runtime, "trial_placement", lambda: {"hostname": "test"})
    return sent


def trial_params(root, objective: str, **objective_params) -> dict:
    cfg = PROFILES["smoke"].trial.replace(**{"data.root": str(root), "data.labelled": "1", "data.labelled_batch": 2,
                                             "data.unlabelled_batch": 2, "objective": objective,
                                             "objective_params": objective_params})
    config = cfg.to_dict()
    return {"trial": {"config": config, "tags": {"row": objective}, "key": trial_key(config)}}


def run(params: dict, study_dir) -> dict:
    run_trial_in_tune(params, str(study_dir), run_id="run-1")
    folder = trial_folder(study_dir, params["trial"]["key"])
    return json.loads((folder / ERROR_FILE).read_text(encoding="utf-8"))


def test_a_config_error_in_a_trial_ends_it_as_an_application_error_before_it_trains(tiny_root, tmp_path, reports):
    # MONA's loss needs a pool that holds one unlabelled batch (2): refused by the config's checks, before any stage
    # trains (it used to pass them and fail at the first fine-tuning step, after the pretraining)
    params = trial_params(tiny_root, "mona", nn_pool_capacity=1, nn_topk=1)
    error = run(params, tmp_path / "study")  # returns normally: Tune sees a finished trial and spends no retry
    folder = trial_folder(tmp_path / "study", params["trial"]["key"])
    assert error["kind"] == "application" and error["run"] == "run-1"
    assert error["error"].startswith("objective_params.nn_pool_capacity 1 (objective mona): smaller than the unlabelled batch 2")
    assert not (folder / RESULT_FILE).exists() and not (folder / "checkpoint").exists()
    assert reports[-1]["errored"] is True and reports[-1]["done"] is True and reports[-1]["error"] == error["error"]


@pytest.mark.parametrize("raised, kind", [(DataError("Objective.check_batch: no strong view (pass one)"), "application"),
                                          (ConfigError("Objective.steps: 0 (set one)"), "application"),
                                          (RuntimeError("CUDA error: an illegal memory access"), "infrastructure")])
def test_every_medseg_error_of_an_objective_is_an_application_error_and_nothing_else_is(tiny_root, tmp_path, reports, monkeypatch,
                                                                                        raised, kind):
    from methods.supervised import SupervisedObjective

    def fail(self, batch, step, max_steps):
        raise raised

    monkeypatch.setattr(SupervisedObjective, "loss", fail)
    params = trial_params(tiny_root, "supervised")
    if kind == "application":
        error = run(params, tmp_path / "study")
        assert reports[-1]["errored"] is True
    else:  # re-raised so that Tune retries it from the last checkpoint, and recorded for the report
        with pytest.raises(RuntimeError, match="illegal memory access"):
            run_trial_in_tune(params, str(tmp_path / "study"), run_id="run-1")
        error = json.loads((trial_folder(tmp_path / "study", params["trial"]["key"]) / ERROR_FILE).read_text(encoding="utf-8"))
        assert reports == []
    assert error["kind"] == kind and error["attempts"] == 1 and str(raised) in error["error"]


@pytest.mark.parametrize("gpus, expected", [(0.0, "cpu"), (0.5, "cuda"), (1.0, "cuda")])
def test_a_trial_trains_on_the_gpu_only_when_ray_gave_it_one(tiny_root, tmp_path, reports, monkeypatch, gpus, expected):
    """Ray 2.60 does not hide a machine's GPUs from a trial that asked for none: every trial without --gpus-per-trial
    trained on GPU 0, beside what Ray counted as free (the GPU-path audit)."""
    import torch

    import medseg_platform.study.trainable as trainable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []

    def capture(*args, device=None, **kwargs):
        seen.append(torch.device(device).type)
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainable, "train_and_record", capture)
    with pytest.raises(RuntimeError, match="stop here"):
        run_trial_in_tune(trial_params(tiny_root, "supervised"), str(tmp_path / "study"), gpus_per_worker=gpus, run_id="r")
    assert seen == [expected]


def test_a_cpu_trial_on_a_gpu_machine_does_not_start_cuda_for_its_checkpoints(monkeypatch):
    """Reading the CUDA RNG states initialises CUDA: a CPU trial that sees the machine's GPUs (as Ray shows them) opened a
    CUDA context on GPU 0 at every checkpoint (the review of the GPU fixes)."""
    import torch

    from medseg_platform.engine import checkpoint

    def started_cuda(*args):
        raise AssertionError("CUDA was started")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", started_cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", started_cuda)
    assert checkpoint._cuda_rng_states() == []
    checkpoint._set_cuda_rng_states([torch.zeros(4, dtype=torch.uint8)])  # an older checkpoint's states: not restored


def test_a_multi_worker_trials_result_is_looked_up_again_before_it_counts_as_missing(tmp_path, monkeypatch):
    """The cluster audit: rank 0 writes result.json on another node; a network filesystem may still answer "missing" to
    the Tune function, which had looked the file up before the trial (an AttributeError, retried as an infrastructure
    failure)."""
    import medseg_platform.study.trainable as trainable

    answers = [None, None, "the record"]
    monkeypatch.setattr(trainable, "read_trial", lambda trial_dir: answers.pop(0))
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    assert trainable._read_written_trial(tmp_path, wait_s=30.0) == "the record" and answers == []
    monkeypatch.setattr(trainable, "read_trial", lambda trial_dir: None)
    with pytest.raises(RuntimeError, match="the multi-worker trial ended without its result.json"):
        trainable._read_written_trial(tmp_path, wait_s=0.0)


def test_tunes_checkpoint_is_copied_in_with_the_checkpoint_file_renamed_last(tmp_path, monkeypatch):
    """The security audit: a kill during ``shutil.copytree`` into the trial's checkpoint folder left a truncated
    checkpoint.pt, which failed every resume after it."""
    import os

    import medseg_platform.study.trainable as trainable

    src = tmp_path / "tune-copy"
    (src / "extra").mkdir(parents=True)
    for name in ("checkpoint.pt", "a.json", "extra/b.bin"):
        (src / name).write_bytes(name.encode())
    moved = []
    replace = os.replace
    monkeypatch.setattr(trainable.os, "replace", lambda a, b: (moved.append(os.path.basename(b)), replace(a, b)))
    dest = tmp_path / "trial" / "checkpoint"
    trainable.copy_checkpoint_in(src, dest)
    assert moved[-1] == "checkpoint.pt" and sorted(moved) == ["a.json", "b.bin", "checkpoint.pt"]
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == {
        "checkpoint.pt": b"checkpoint.pt", "a.json": b"a.json", "extra/b.bin": b"extra/b.bin"}
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["checkpoint"]  # no staging folder left
