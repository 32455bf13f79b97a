"""Fault tolerance of studies (issue 6): NaN trials, killed trial workers, a killed driver, corrupt result
files, and the progress line."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from medseg_platform.engine import NonFiniteLossError
from medseg_platform.errors import ConfigError
from analysis.study_cli import run_study_main
from medseg_platform.profiles import PROFILES
from medseg_platform.results import read_attempts, read_trial, scan_study
from medseg_platform.progress import ProgressCallback
from medseg_platform.step_costs import trial_plan
from medseg_platform.study import Study, Variant
from medseg_platform.study.trainable import application_error
from tests.conftest import reaped

REPO = Path(__file__).resolve().parents[1]


def base_config(root: Path, **overrides):
    return PROFILES["smoke"].trial.replace(**{"data.root": str(root), "data.labelled_batch": 2, "data.unlabelled_batch": 2,
                                              "data.labelled": "1", **overrides})


def read_table(study_dir: Path) -> list[dict]:
    with open(study_dir / "table.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ progress line


def fake_trial(trial_id, status, key=None, **result):
    return SimpleNamespace(trial_id=trial_id, status=status, config={"trial": {"key": key or f"key-{trial_id}"}},
                           last_result=result, num_failures=0, max_failures=2)


def same_plans(*keys):
    """Equal supervised trials: the cost-weighted ETA reduces to mean duration x trials left / parallelism."""
    return [trial_plan(PROFILES["smoke"].trial.to_dict(), key) for key in keys]


def test_progress_line_counts_statuses_and_estimates_the_rest(capsys):
    now = [100.0]
    callback = ProgressCallback(same_plans(*(f"key-{x}" for x in "abcdef")), clock=lambda: now[0])
    a, b, c = fake_trial("a", "PENDING"), fake_trial("b", "PENDING"), fake_trial("c", "PENDING")
    trials = [a, b, c]  # Tune has created 3 of the 6 trials; the others count as pending

    callback.on_trial_start(0, trials, a)  # Tune sets RUNNING after the hook: the event says "running"
    a.status = "RUNNING"
    callback.on_trial_start(0, trials, b)
    b.status = "RUNNING"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "[0/6] started key-b (0 finished, 2 running, 4 pending, 0 errored; 0 s elapsed, ETA ? (no step rate yet))"

    now[0] = 160.0
    a.last_result = {"done": True, "test_dice": 0.5}  # its final report (an ASHA stop has no test Dice)
    callback.on_trial_complete(0, trials, a)  # still RUNNING in Tune when the hook runs
    a.status = "TERMINATED"
    line = capsys.readouterr().err.strip()
    # 60 s per trial, 5 left (1 running + 4 pending), at most 2 at once: 150 s = 2.5 min
    assert line == "[1/6] finished key-a (1 finished, 1 running, 4 pending, 0 errored; 60 s elapsed, ETA 2.5 min)"

    b.num_failures = 1
    b.status = "PENDING"  # Tune re-queues a trial before calling on_trial_recover
    callback.on_trial_recover(0, trials, b)
    line = capsys.readouterr().err.strip()
    assert line.startswith("[1/6] retry 1/2 of key-b (1 finished, 0 running, 5 pending, 0 errored;")
    assert line.endswith("its worker failed, resuming from its last checkpoint")

    callback.on_trial_start(0, trials, c)
    c.status = "RUNNING"
    now[0] = 170.0
    c.last_result = {"done": True, "errored": True, "error": "step 1: loss is NaN/inf in term(s) ce"}
    callback.on_trial_complete(0, trials, c)  # an application error ends the trial normally, flagged errored
    c.status = "TERMINATED"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("[2/6] ERRORED key-c (1 finished, 0 running, 4 pending, 1 errored;")
    assert lines[-1].endswith("ETA 2.0 min): step 1: loss is NaN/inf in term(s) ce")  # errored trials do not enter the mean
    assert callback.counts(trials) == {"finished": 1, "stopped early": 0, "running": 0, "pending": 4, "errored": 1}

    b.status = "ERROR"
    b.num_failures = 3
    callback.on_trial_error(0, trials, b)
    assert capsys.readouterr().err.startswith("[3/6] ERRORED after 2 retries key-b (1 finished, 0 running, 3 pending, 2 errored;")


def test_progress_eta_ignores_trials_whose_result_existed_and_names_search_trials_by_id(capsys):
    now = [0.0]
    callback = ProgressCallback(same_plans("key-t1", "k"), clock=lambda: now[0])
    old, new = fake_trial("t1", "PENDING"), SimpleNamespace(trial_id="t2", status="PENDING", config={"trial": {"key": "k"}, "search": {"optim.lr": 0.1}},
                                                            last_result={}, num_failures=0, max_failures=2)
    callback.on_trial_start(0, [old, new], old)
    now[0] = 2.0
    old.last_result = {"done": True, "skipped": True}
    callback.on_trial_complete(0, [old, new], old)
    assert "finished (result existed) key-t1" in capsys.readouterr().err and callback.finished_work == []
    callback.on_trial_start(0, [old, new], new)
    assert "started sample t2 (" in capsys.readouterr().err  # a searched trial's key is only known inside the trial
    # a sample scored from a finished trial's checkpoint says so, and its seconds do not price training (the search
    # walkthrough: "finished sample" alone, for a --protocol released search that trained nothing)
    now[0] = 3.0
    new.last_result = {"done": True, "test_dice": 0.4, "rescored": True}
    callback.on_trial_complete(0, [old, new], new)
    assert "finished (scored from a finished trial's checkpoint, not trained) sample t2" in capsys.readouterr().err
    assert callback.finished_work == []


def test_an_infrastructure_failure_of_a_multi_worker_trial_names_each_failed_rank_and_its_error():
    """error.json of a multi-worker trial said only "WorkerGroupError: Training failed due to worker errors:" (Ray's first
    line), naming neither the rank nor the error (the DDP review); the rank's own exception sits in worker_failures,
    inside the RayTaskError Ray wraps a worker's exception in."""
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from medseg_platform.study.trainable import failure_text

    try:
        raise RuntimeError("injected failure on this rank\nsecond line")
    except RuntimeError as inner:
        wrapped = RayTaskError("train", "Traceback ...", inner)
    group = WorkerGroupError("[Rank 1 Error Snippet]: ...", {1: wrapped, 0: ValueError("rank zero too")})
    expected = "WorkerGroupError: rank 0: ValueError: rank zero too; rank 1: RuntimeError: injected failure on this rank"
    assert failure_text(group) == expected
    try:  # the driver sees it behind Ray's task error of the Tune trial, as the runner's record_lost_workers gets it
        raise RayTaskError("trial", "Traceback ...", group)
    except RayTaskError as outer:
        assert failure_text(outer) == expected
    assert failure_text(RuntimeError("\nThe actor died unexpectedly\nmore")) == "RuntimeError: The actor died unexpectedly"


def test_application_errors_are_found_behind_ray_wrappers():
    from ray.train import WorkerGroupError

    nan = NonFiniteLossError("step 3: loss is NaN/inf in term(s) ce", step=3, terms=("ce",))
    assert application_error(WorkerGroupError("rank 1 failed", {1: nan})) is nan  # a multi-worker trial's NaN
    try:
        try:
            raise ConfigError("bad")
        except ConfigError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert isinstance(application_error(outer), ConfigError)
    assert application_error(RuntimeError("worker died")) is None
    # a full disk is not retried (each retry failed the same way; a probe): a rerun after freeing space resumes
    try:
        try:
            raise OSError(28, "No space left on device", "/results/trials/k/checkpoint.pt")
        except OSError as inner:
            raise RuntimeError("checkpoint") from inner
    except RuntimeError as outer:
        found = application_error(outer)
    assert str(found) == ("no space left on the device (/results/trials/k/checkpoint.pt): free space, then rerun the same "
                          "command to resume the trial from its last checkpoint")
    assert application_error(OSError(13, "Permission denied")) is None  # other OS errors stay infrastructure failures

    import pickle

    again = pickle.loads(pickle.dumps(nan))  # Ray pickles errors across processes: step and terms survive
    assert (again.step, again.terms, str(again)) == (3, ("ce",), str(nan))


def test_a_checkpoint_written_onto_a_full_disk_is_named_as_one(tmp_path, monkeypatch):
    """The fault review: torch.save to a path on a full disk raised a bare RuntimeError ("unexpected pos"), retried as a
    crash; written through a Python file, the ENOSPC OSError stays its context. Partial files are removed."""
    import io

    import torch

    from medseg_platform.engine import checkpoint

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(28, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    with pytest.raises(Exception) as info:
        checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"w": torch.zeros(100_000)})
    assert str(application_error(info.value)).startswith("no space left on the device")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ NaN trials


def nan_build(args, profile, base):
    base = base.replace(**{"data.labelled_batch": 2, "data.unlabelled_batch": 2})
    return Study("nan", base, Path(args.results_dir), variants=[
        Variant({"row": "Sup", "order": 0}, {"objective": "supervised"}),
        # an honest NaN: SGD with lr 1e30 overflows the weights in its first steps (validation accepts any lr > 0)
        Variant({"row": "Sup lr 1e30", "order": 1}, {"objective": "supervised", "optim.lr": 1e30}),
    ])


def test_nan_trial_errors_without_retry_and_the_study_goes_on(tiny_root, tmp_path, ray_address, capfd):
    results = tmp_path / "results"
    code = run_study_main("nan", "nan", nan_build, argv=["--smoke-test", "--data-root", str(tiny_root), "--results-dir", str(results),
                                                         "--seeds", "1", "--no-dashboard", "--max-retries", "2"])
    out, err = capfd.readouterr()
    assert code == 1  # a trial has no result ...
    study_dir = results / "nan-smoke"
    records, problems = scan_study(study_dir)
    assert [r.result["config"]["optim"]["lr"] for r in records] == [0.01]  # ... but the normal trial finished
    errored = [p for p in (study_dir / "trials").iterdir() if (p / "error.json").is_file()]
    assert len(errored) == 1 and not (errored[0] / "result.json").exists()
    error = json.loads((errored[0] / "error.json").read_text())
    assert error["kind"] == "application" and error["details"]["step"] >= 0 and "ce" in error["details"]["terms"]
    assert f"step {error['details']['step']}: loss is NaN/inf" in error["error"]
    assert read_attempts(errored[0])["attempts"] == 1  # deterministic: no retry spent on it
    assert "ERRORED" in err and "retry" not in err  # the progress line
    assert (study_dir / "table.csv").is_file() and {r["row"] for r in read_table(study_dir)} == {"Sup"}
    assert f"errored trial {errored[0].name}: step" in out and any(errored[0].name in p for p in problems)  # the summary lists it

    # rerunning the command tries the errored trial again (e.g. after fixing its cause), and only it
    finished = records[0].path / "result.json"
    before = finished.stat().st_mtime_ns
    argv = ["--smoke-test", "--data-root", str(tiny_root), "--results-dir", str(results), "--seeds", "1", "--no-dashboard"]
    assert run_study_main("nan", "nan", nan_build, argv=argv) == 1
    again = json.loads((errored[0] / "error.json").read_text())
    assert read_attempts(errored[0])["attempts"] == 2 and again["run"] != error["run"]
    assert finished.stat().st_mtime_ns == before


# ------------------------------------------------------------------------------------------ a killed trial worker


def test_killed_trial_worker_is_retried_from_its_last_checkpoint(tiny_root, tmp_path, ray_address, capfd):
    cfg = base_config(tiny_root, **{"optim.max_steps": 150, "eval.val_every": 10, "eval.log_every": 10})
    study = Study("kill", cfg, tmp_path / "results", variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], seeds=[1],
                  dashboard=False, max_retries=2)
    trial_dir = study.study_dir / "trials" / study.trial_params()[0]["key"]
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            attempts = read_attempts(trial_dir)
            if attempts["attempts"] == 1 and (trial_dir / "checkpoint" / "checkpoint.pt").is_file():
                pid = attempts["history"][0]["pid"]
                os.kill(pid, signal.SIGKILL)  # the trial's Ray worker process, started by this study
                killed["pid"] = pid
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    study.run()
    killer.join(timeout=5)
    assert killed, "the trial finished before its worker could be killed"
    record = read_trial(trial_dir)
    assert record is not None and record.result["attempts"] == 2
    assert 0 < record.result["resumed_from_step"] < 150 and record.result["resumed_from_step"] % 10 == 0
    history = read_attempts(trial_dir)["history"]
    assert history[0]["pid"] == killed["pid"] and history[1]["pid"] != killed["pid"]
    err = capfd.readouterr().err
    assert "retry 1/2 of " + trial_dir.name in err


# ------------------------------------------------------------------------------------------ corrupt results


def test_corrupt_results_are_reported_and_rerun_never_dropped(tiny_root, tmp_path, ray_address, capfd):
    from analysis.table_files import write_tables

    study = Study("corrupt", base_config(tiny_root), tmp_path / "results", seeds=[1], dashboard=False,
                  variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], grid={"data.labelled": ["1", "2"]})
    run = study.run()
    keys = sorted(run.trial_keys)
    trials = run.study_dir / "trials"
    first = {k: read_trial(trials / k) for k in keys}
    truncated, short = trials / keys[0], trials / keys[1]
    text = (truncated / "result.json").read_text()
    (truncated / "result.json").write_text(text[: len(text) // 2])  # truncated JSON; its final checkpoint stays
    rows = (short / "per_case.csv").read_text().splitlines()
    (short / "per_case.csv").write_text("\n".join(rows[:-3]) + "\n")  # one test case's rows missing
    import shutil

    shutil.rmtree(short / "checkpoint")  # no checkpoint left: this one trains from the start
    capfd.readouterr()

    study.run()
    err = capfd.readouterr().err
    assert f"warning: corrupt result {truncated / 'result.json'}: not valid JSON" in err
    assert f"warning: corrupt result {short / 'per_case.csv'}:" in err
    records, problems = scan_study(run.study_dir)
    assert problems == [] and sorted(r.path.name for r in records) == keys
    again = {r.path.name: r for r in records}
    assert again[truncated.name].result["resumed_from_step"] == study.base.optim.max_steps  # re-evaluated from its final checkpoint
    assert again[short.name].result["resumed_from_step"] == 0  # trained again
    assert all(again[k].result["attempts"] == 2 for k in keys)
    # the rerun's own Tune experiment (never restored: its name holds its run's id) is removed once it ends
    experiments = sorted(p.name for p in (run.study_dir / "ray").iterdir())
    assert not [name for name in experiments if "-rerun-" in name] and any(name.startswith("corrupt-") for name in experiments)
    for k in keys:  # the same numbers as the first time (deterministic training and evaluation)
        assert repr(again[k].per_case) == repr(first[k].per_case)  # repr: an undefined (NaN) HD95 equals itself
    write_tables(records, run.study_dir)
    table = read_table(run.study_dir)
    dice = [r for r in table if r["metric"] == "dice"]
    assert len(dice) == 2 * 4 and len({r["column"] for r in dice}) == 2  # both label fractions, 3 classes + Avg each
    assert all(r["n_seeds"] == "1" for r in dice)


# ------------------------------------------------------------------------------------------ a killed driver

STUDY_SCRIPT = '''
from pathlib import Path
from analysis.study_cli import run_study_main
from medseg_platform.study import Study, Variant


def build(args, profile, base):
    base = base.replace(**{"data.labelled_batch": 2, "data.unlabelled_batch": 2, "optim.max_steps": 40, "eval.val_every": 10})
    return Study("killed", base, Path(args.results_dir), variants=[Variant({"row": "Sup"}, {"objective": "supervised"})])


raise SystemExit(run_study_main("a study whose driver is killed", "killed", build))
'''


def test_sigkill_of_the_driver_resumes_without_rerunning_losing_or_duplicating(tiny_root, tmp_path, ray_address):
    script = tmp_path / "killed_study.py"
    script.write_text(STUDY_SCRIPT)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    seeds = ["1", "2", "3", "4"]
    cmd = [sys.executable, str(script), "--smoke-test", "--data-root", str(tiny_root), "--seeds", *seeds, "--max-concurrent", "1",
           "--results-dir", str(results), "--address", ray_address]
    trials_dir = results / "killed-smoke" / "trials"
    with reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)) as proc:
        deadline = time.monotonic() + 240
        while not list(trials_dir.glob("*/result.json")):
            assert proc.poll() is None, f"study exited early with {proc.returncode}: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind in the driver
        proc.wait(timeout=30)
    finished_first = {p.parent.name: p.read_bytes() for p in trials_dir.glob("*/result.json")}
    assert 1 <= len(finished_first) < len(seeds)

    # a SIGTERM to the resumed run stops it like a Ctrl-C (it used to abort in Ray's handler; a Ctrl-C of a resumed run
    # was swallowed: the trials it left were started again in a fresh experiment and the study ran to the end)
    with reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)) as proc:
        deadline = time.monotonic() + 240
        while len(list(trials_dir.glob("*/result.json"))) <= len(finished_first):
            assert proc.poll() is None, f"study exited early with {proc.returncode}: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "no further trial finished in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-3000:]
    assert "stopped by a signal:" in out and "rerun the same command to resume them" in out and "running them again" not in out
    assert "Tuner.restore" not in out and "Failed to fetch metrics" not in out  # Tune's advice, which misleads here
    assert len(list(trials_dir.glob("*/result.json"))) < len(seeds)

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    # no finished trial was run again: byte-identical result files, one attempt each
    assert {k: (trials_dir / k / "result.json").read_bytes() for k in finished_first} == finished_first
    assert all(read_attempts(trials_dir / k)["attempts"] == 1 for k in finished_first)
    records, problems = scan_study(results / "killed-smoke")
    assert problems == [] and sorted(r.result["seed"] for r in records) == [1, 2, 3, 4]  # none lost
    table = read_table(results / "killed-smoke")
    keys = [(r["row"], r["column"], r["class"], r["metric"]) for r in table]
    assert len(keys) == len(set(keys)) == 1 * 1 * 4 * 4  # rows x fractions x (3 classes + Avg) x metrics: no duplicate
    assert all(r["n_seeds"] == "4" for r in table if r["metric"] == "dice")


def test_a_sigterm_to_the_commands_process_group_stops_a_local_study_cleanly(tiny_root, tmp_path):
    """The studies review: `timeout`, a job scheduler or `kill -TERM -PGID` signals the command's whole process group,
    where the local Ray's GCS and raylet were too: they died, and the driver's clean stop waited 60 s for the gone GCS,
    then ended in Ray's "Failed to connect to GCS" without its message or report. Ray's processes now start in a
    session of their own; the driver alone takes the signal, stops like a Ctrl-C and stops them."""
    script = tmp_path / "group_study.py"
    script.write_text(STUDY_SCRIPT)
    results = tmp_path / "results"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(script), "--smoke-test", "--data-root", str(tiny_root), "--seeds", "1", "2", "3",
           "--max-concurrent", "1", "--results-dir", str(results), "--no-dashboard"]
    trials_dir = results / "killed-smoke" / "trials"
    with reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 start_new_session=True)) as proc:
        deadline = time.monotonic() + 240
        while not any(trials_dir.glob("*/config.json")):  # a trial runs: Ray and its workers are up
            assert proc.poll() is None, f"study exited early with {proc.returncode}: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "no trial started in time"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-3000:]
    assert time.monotonic() - signalled < 40, out[-3000:]  # not Ray's 60 s for a gone GCS
    assert "stopped by a signal:" in out and "Failed to connect to GCS" not in out, out[-3000:]
    assert (results / "killed-smoke" / "report.md").is_file()


def test_tune_failing_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """A full disk under Tune's own files ended the driver in Ray's EOFError on an empty error.pkl (a probe)."""
    import collections
    import errno

    from medseg_platform.errors import MedsegError
    from medseg_platform.study import runner

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))  # 1 MiB free
    with pytest.raises(MedsegError, match=r"Ray Tune stopped on a full disk \(1 MiB free; EOFError: Ran out of input\); the "
                                          r"finished trials are safe: free space and rerun the same command to resume"):
        runner.raise_if_disk_full(tmp_path, EOFError("Ran out of input"))
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10 << 30, 1 << 30, 9 << 30))  # room: another failure
    runner.raise_if_disk_full(tmp_path, EOFError("Ran out of input"))  # returns: the caller re-raises Tune's error
    with pytest.raises(MedsegError, match="full disk"):
        runner.raise_if_disk_full(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
