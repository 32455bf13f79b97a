"""The dashboard bind flag, the start-up message about token auth, and the Optuna journal storage of a search."""

from __future__ import annotations

import re
import types

import pytest

import medseg_platform.study.runner as runner
import medseg_platform.study.ray_runtime as ray_runtime
from medseg_platform.study.ray_runtime import init_ray
from medseg_platform.dashboard import check_dashboard_host, dashboard_message, token_hint
from medseg_platform.errors import ConfigError
from analysis.study_cli import run_study_main
from medseg_platform.profiles import PROFILES
from medseg_platform.study import Study, Variant


def _study(root, results, **kwargs) -> Study:
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(root), "data.labelled_batch": 2, "data.unlabelled_batch": 2})
    return Study("opts", base, results, variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], seeds=[1], **kwargs)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.5", "::1", "localhost", "LOCALHOST",
                                  # the cluster review: warned about as exposed, or refused as no host name
                                  "::ffff:127.0.0.1", "localhost."])
def test_loopback_hosts_pass_silently(host):
    assert check_dashboard_host(host) is None


@pytest.mark.parametrize("host, where", [("0.0.0.0", "every network interface"), ("::", "every network interface"),
                                         # other spellings of them named the raw text (the security audit)
                                         ("0000::", "every network interface"), ("::ffff:0.0.0.0", "every network interface"),
                                         ("10.1.2.3", "10.1.2.3"), ("head-node.example.org", "head-node.example.org")])
def test_other_hosts_warn_about_job_submission_and_suggest_a_tunnel(host, where):
    warning = check_dashboard_host(host)
    assert warning.startswith("WARNING") and where in warning
    assert "run code" in warning and "ssh -L 8265:127.0.0.1:8265" in warning


@pytest.mark.parametrize("host", ["", "not a host", "http://127.0.0.1", "999.1.1.1", "1.2.3", "-bad", "a" * 64, "127.0.0.1:8265"])
def test_garbage_hosts_are_a_one_line_error(host):
    with pytest.raises(ConfigError, match="--dashboard-host") as info:
        check_dashboard_host(host)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("env, expected", [
    ({}, "~/.ray/auth_token"),
    ({"RAY_AUTH_TOKEN_PATH": "/secrets/ray-token"}, "/secrets/ray-token ($RAY_AUTH_TOKEN_PATH)"),
    ({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_TOKEN_PATH": "/p"}, "$RAY_AUTH_TOKEN;"),  # Ray's own order: the variable first
    ({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, "DISABLED"),
])
def test_token_hint_names_where_the_token_is(env, expected):
    hint = token_hint(env)
    assert expected in hint
    if "DISABLED" not in hint:
        assert "Authorization: Bearer <token>" in hint


@pytest.mark.parametrize("from_env", [False, True])
def test_an_address_where_no_cluster_answers_is_a_one_line_config_error(monkeypatch, from_env):
    """Ray 2.60 raises ConnectionError after about 25 s of retries; the command printed its traceback (fake ``ray``)."""
    import ray

    def refuse(**kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kw['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray_runtime, "check_address_answers", lambda *a: None)  # the port answers TCP (e.g. a token mismatch)
    if from_env:
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError) as info:
        init_ray(None if from_env else "10.0.0.9:6379", 2, False)
    source, drop = ("$RAY_ADDRESS", "unset RAY_ADDRESS") if from_env else ("--address", "drop the flag")
    assert str(info.value).startswith(f"{source} 10.0.0.9:6379: no Ray cluster answers there, or it refused this driver "
                                      f"(Failed to connect to Ray cluster at 10.0.0.9:6379); start one with `ray start --head`")
    assert "RAY_AUTH_MODE=token" in str(info.value) and str(info.value).endswith(f"or {drop} to run a local Ray")


def test_an_address_whose_port_takes_no_connection_fails_in_seconds_not_minutes(monkeypatch):
    """ray.init retried a refused port for about 14 minutes (20 tries of about 40 s in Ray 2.60) before its error."""
    import socket
    import time

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be reached"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^--address 127.0.0.1:{port}: no Ray cluster answers there \(TCP connection: "):
        init_ray(f"127.0.0.1:{port}", 2, False)
    assert time.perf_counter() - start < ray_runtime.ADDRESS_PROBE_S + 1
    monkeypatch.setattr(ray_runtime, "ADDRESS_PROBE_S", 1.0)
    with socket.socket() as listening:  # a port that takes the connection but never answers as a GCS (the cluster review)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with pytest.raises(ConfigError, match=r"something answers there, but not a Ray head's GCS \(no gRPC reply"):
            ray_runtime.check_address_answers(f"127.0.0.1:{listening.getsockname()[1]}")
    for left_to_ray in ("auto", "ray://head:10001"):  # not probed: Ray's own message
        ray_runtime.check_address_answers(left_to_ray)
    # refused before the study folder is written (they failed in ray.init after it, and a dry run passed them)
    for address, message in (("127.0.0.1", "not a Ray address (no port)"), ("http://127.0.0.1:8265", "not a Ray address (a URL)"),
                             (" ", "not a Ray address (empty)"),
                             # an IP address alone: its last group is no port (the third diff review: "[:]:1"); an IPv6
                             # address with a port but no brackets reads as an address alone
                             ("::1", "not a Ray address (no port), e.g. [::1]:6379"), ("10.0.0.9", "(no port), e.g. 10.0.0.9:6379"),
                             ("2001:db8::1:6379", "(no port), e.g. [2001:db8::1:6379]:6379")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            ray_runtime.check_address_answers(address)
    for port in (0, 99999):  # the cluster review: 99999 was probed as 34463 and called a refused cluster
        with pytest.raises(ConfigError, match=rf"^--address 127.0.0.1:{port}: not a Ray address: the port must be 1-65535"):
            ray_runtime.check_address_answers(f"127.0.0.1:{port}")


def test_a_kill_while_joining_a_cluster_takes_the_ctrl_c_path(monkeypatch):
    """Ray's driver turns SIGTERM into sys.exit(15); joining a cluster exited 15 without a word (a local start did not)."""
    import ray

    def killed(**kw):
        raise SystemExit(15)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", killed)
    monkeypatch.setattr(ray_runtime, "check_address_answers", lambda *a: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(KeyboardInterrupt):
        init_ray("10.0.0.9:6379", 2, False)


def test_an_address_without_a_port_is_a_one_line_config_error(monkeypatch):
    """Refused by the address check before ray.init (whose ValueError, faked here, came only after the study folder was
    written: the cluster review)."""
    import ray

    def reject(**kw):
        raise ValueError(f"Invalid address format: {kw['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", reject)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"^--address 10.0.0.9: not a Ray address \(no port\), e.g. 10.0.0.9:6379; give the head's GCS address HOST:PORT"):
        init_ray("10.0.0.9", 2, False)


def test_local_ray_binds_the_dashboard_where_asked_and_prints_url_and_auth(monkeypatch, capsys):
    """init_ray with a fake ``ray`` (no Ray starts): the host reaches ray.init, the message names URL and token."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/tmp/some-token")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or types.SimpleNamespace(dashboard_url="127.0.0.1:8266"))
    assert init_ray(None, 2, True) is True
    assert calls[-1]["dashboard_host"] == "127.0.0.1" and calls[-1]["include_dashboard"] is True
    err = capsys.readouterr().err
    assert err.strip() == dashboard_message("127.0.0.1:8266")
    assert "http://127.0.0.1:8266" in err and "/tmp/some-token" in err and "Bearer" in err
    init_ray(None, 2, True, "0.0.0.0")
    assert calls[-1]["dashboard_host"] == "0.0.0.0"


def test_an_address_beside_a_running_ray_is_not_silently_ignored(monkeypatch, capsys):
    """The API review: Study(address=...) after the session's own ray.init ran on the session's Ray without a word."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be called"))
    assert init_ray("10.0.0.9:6379", 2, False) is False
    assert "warning: this process already runs Ray (ray.init before the study): the study runs on it, not on 10.0.0.9:6379" \
        in capsys.readouterr().err
    assert init_ray(None, 2, False) is False and capsys.readouterr().err == ""


def test_a_local_ray_leaves_its_token_readable_by_its_owner_only(monkeypatch, tmp_path, capsys):
    """The security review: Ray 2.60 writes ~/.ray/auth_token under the umask (0644 under 022), so every local user could
    read the token, the only barrier to the dashboard's job submission (fake ``ray``: it writes the file as Ray does)."""
    import os
    import stat

    import ray

    token = tmp_path / "auth_token"

    def start(**kw):
        token.write_text("secret")
        os.chmod(token, 0o644)
        return types.SimpleNamespace(dashboard_url="127.0.0.1:8266")

    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", start)
    assert init_ray(None, 2, True) is True
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "secret"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token file is read: nothing is changed
    assert init_ray(None, 2, True) is True and stat.S_IMODE(token.stat().st_mode) == 0o644


def test_a_local_ray_that_cannot_start_is_a_one_line_error_naming_the_folder(monkeypatch, tmp_path):
    """A long TMPDIR (cluster job folders) overflowed Ray's 107-byte socket paths, and an unwritable temp folder or HOME
    failed inside ray.init: Ray's tracebacks after the preflight (a probe of user environments)."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or types.SimpleNamespace(dashboard_url=None))
    long_dir = tmp_path / ("x" * 60)
    monkeypatch.setenv("RAY_TMPDIR", str(long_dir))
    with pytest.raises(ConfigError, match=r"Ray's temporary folder .*xxxx/ray is too long for its socket paths .*RAY_TMPDIR=/tmp"):
        init_ray(None, 2, False)
    import tempfile

    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="rt") as a_file:  # short, and not a folder: cannot hold Ray's
        monkeypatch.setenv("RAY_TMPDIR", a_file.name)
        with pytest.raises(ConfigError, match=rf"{a_file.name}/ray: cannot write there .*set RAY_TMPDIR to a writable folder"):
            init_ray(None, 2, False)
    assert calls == []  # Ray was not started either time
    monkeypatch.setenv("RAY_TMPDIR", "/tmp")

    def refuse(**kw):
        raise PermissionError(13, "Permission denied", "/home/user/.ray/auth_token")
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match=r"a local Ray could not start: Permission denied \(/home/user/.ray/auth_token\);"):
        init_ray(None, 2, False)
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert ray_runtime.ray_temp_dir() == "/tmp/ray"  # Ray's rule: RAY_TMPDIR, else TMPDIR on Linux


def test_dashboard_host_flag_reaches_ray_with_a_warning_and_bad_values_fail_before_ray(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = []

    def fake_init_ray(address, num_cpus, dashboard, dashboard_host="127.0.0.1"):
        seen.append(dashboard_host)
        raise ConfigError("stop here (test)")

    monkeypatch.setattr(runner, "init_ray", fake_init_ray)
    argv = ["--smoke-test", "--data-root", str(tiny_root), "--results-dir", str(tmp_path / "r")]

    def build(args, profile, base):
        return _study(tiny_root, tmp_path / "r")

    assert run_study_main("opts", "opts", build, argv=argv + ["--dashboard-host", "0.0.0.0"]) == 2
    assert seen == ["0.0.0.0"]
    assert "WARNING: the Ray dashboard will listen on every network interface" in capsys.readouterr().err

    for flags, message in ((["--dashboard-host", "not a host"], "error: --dashboard-host 'not a host': not an IP address or host name"),
                           (["--dashboard-host", "10.0.0.1", "--no-dashboard"], "error: --dashboard-host sets the dashboard of the local Ray"),
                           (["--dashboard-host", "10.0.0.1", "--address", "127.0.0.1:6379"], "error: --dashboard-host sets the dashboard"),
                           (["--optuna-storage", str(tmp_path / "j.log")], "error: --optuna-storage records an Optuna search; this study is a grid"),
                           # --address "$HEAD" with HEAD unset used to run a local Ray without a word
                           (["--address", ""], "error: --address '': empty; give HOST:PORT of the head node's GCS or 'auto'"),
                           # a well-formed address that is not this machine's: Ray retried 50 ports for a minute, then a traceback
                           (["--dashboard-host", "192.0.2.123"], "error: --dashboard-host 192.0.2.123: this machine cannot listen there")):
        assert run_study_main("opts", "opts", build, argv=argv + flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err
    assert seen == ["0.0.0.0"]  # none of the invalid ones got to Ray


def test_optuna_search_is_recorded_in_a_journal_file(tiny_root, tmp_path, ray_address):
    """A 2-sample TPE search with ``optuna_storage``: the journal holds one study (named after the Tune
    experiment) whose finished trials carry the sampled lr and the reported metric of each trial's result."""
    import optuna
    from ray import tune

    from medseg_platform.results import scan_study
    from medseg_platform.study.search_journal import STUDY_FOLDER_ATTR, optuna_journal

    journal = tmp_path / "optuna" / "journal.log"
    study = _study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=2,
                   dashboard=False, optuna_storage=journal)
    run = study.run()
    records, problems = scan_study(run.study_dir)
    assert problems == [] and len(records) == 2
    storage = optuna_journal(journal)
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1 and names[0].startswith("opts-")
    optuna_study = optuna.load_study(study_name=names[0], storage=storage)
    assert optuna_study.user_attrs == {STUDY_FOLDER_ATTR: str(run.study_dir)}  # the folder that created it
    trials = optuna_study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    recorded = sorted((t.params["search/optim.lr"], t.value) for t in trials)
    expected = sorted((r.result["config"]["optim"]["lr"], r.result["best_val_dice"]) for r in records)
    assert [lr for lr, _ in recorded] == pytest.approx([lr for lr, _ in expected], rel=1e-12)
    assert [v for _, v in recorded] == pytest.approx([v for _, v in expected], rel=1e-12)
    # the journal this search wrote is accepted again; leaving the flag out (or another file) would start the search
    # over in a new Tune experiment: refused before Ray starts, naming the flag to resume with
    from medseg_platform.study.runner import check_before_ray
    from medseg_platform.study.search_journal import is_optuna_journal

    assert is_optuna_journal(journal)
    for storage in (None, tmp_path / "other.log"):
        rerun = _study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=2,
                       dashboard=False, optuna_storage=storage)
        with pytest.raises(ConfigError, match=f"this search was started with --optuna-storage {journal}; rerun with the same"):
            check_before_ray(rerun)
    # the search review: the journal moved away, the restored searcher replayed an empty one (a KeyError traceback)
    # and wrote into the new file, so every later rerun failed too; refused before Ray, and nothing is written
    journal.rename(journal.with_suffix(".bak"))
    rerun = _study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=2,
                   dashboard=False, optuna_storage=journal)
    with pytest.raises(ConfigError, match=f"--optuna-storage {journal}: missing, and this search's Optuna study is in it"):
        check_before_ray(rerun)
    assert not journal.exists()


def test_an_errored_sample_is_an_optuna_failure_without_the_nan_warning(caplog):
    """An application error ends the trial with an ``errored`` report whose metric is NaN; Ray's OptunaSearch told
    Optuna that NaN, which logged "The value nan is not acceptable" for every such sample. TPESearch records the
    same outcome (FAIL, no value) silently, and a normal completion still carries its value."""
    import logging

    import optuna
    from ray import tune

    from medseg_platform.study.tpe import TPESearch

    search = TPESearch(space={"lr": tune.uniform(0.0, 1.0)}, metric="val_dice", mode="max", seed=1)
    search.suggest("errored")
    search.suggest("finished")
    with caplog.at_level(logging.WARNING):
        search.on_trial_complete("errored", {"val_dice": float("nan"), "errored": True, "error": "step 1: loss is NaN"})
        search.on_trial_complete("finished", {"val_dice": 0.5})
    trials = search._ot_study.trials  # noqa: SLF001 (Ray keeps the Optuna study there)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[0].value is None and trials[1].value == 0.5
    assert not [r for r in caplog.records if "nan" in r.getMessage().lower()]


def test_a_resumed_sample_the_searcher_had_ended_tells_its_value_quietly(caplog):
    """A sample whose worker was killed ends in Optuna as FAIL; a rerun can resume it (the experiment was stopped before
    Tune saved the error). Ray's searcher then logged each of its reports with the whole result and dropped its value
    (the runner review); its value is now added as a finished Optuna trial of the same parameters."""
    import logging

    import optuna
    from ray import tune

    from medseg_platform.study.tpe import TPESearch

    search = TPESearch(space={"lr": tune.uniform(0.0, 1.0)}, metric="val_dice", mode="max", seed=1)
    search.suggest("killed")
    search.on_trial_complete("killed", None, error=True)
    with caplog.at_level(logging.WARNING):
        search.on_trial_result("killed", {"val_dice": 0.3, "training_iteration": 2})
        search.on_trial_complete("killed", {"val_dice": 0.6})
    trials = search._ot_study.trials  # noqa: SLF001
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].value == 0.6 and trials[1].params == trials[0].params
    assert not [r for r in caplog.records if "Received additional" in r.getMessage()]
    search.on_trial_complete("killed", {"val_dice": float("nan")})  # nothing to tell: no new trial
    assert len(search._ot_study.trials) == 2  # noqa: SLF001


def test_an_optuna_storage_that_is_no_journal_or_lies_below_a_file_is_refused(tiny_root, tmp_path):
    from ray import tune

    from medseg_platform.study.runner import check_ray_options

    (tmp_path / "notes.txt").write_text("{not a journal\n")
    (tmp_path / "afile").write_text("x")
    for path, message in ((tmp_path / "notes.txt", "exists and is not an Optuna journal file"),
                          (tmp_path / "afile" / "j.log", f"{tmp_path / 'afile'} is a file, not a folder")):
        study = _study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=2,
                       dashboard=False, optuna_storage=path)
        with pytest.raises(ConfigError, match=message):
            check_ray_options(study)
    (tmp_path / "empty.log").write_text("")
    study = _study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=2,
                   dashboard=False, optuna_storage=tmp_path / "empty.log")
    check_ray_options(study)  # an empty file is a journal Optuna starts


def test_a_kill_outside_tunes_run_takes_the_ctrl_c_path(monkeypatch):
    """ray.init makes SIGTERM a silent sys.exit(15): a kill while Ray started (or while the report was written) ended
    the study command with exit code 15 and no message. Now it is a KeyboardInterrupt (the command's Ctrl-C path)."""
    import signal

    import ray

    from medseg_platform.study.ray_runtime import init_ray, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before  # put back after the command

    def killed_while_starting(**kwargs):
        raise SystemExit(15)  # what Ray's handler does when SIGTERM arrives inside ray.init

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", killed_while_starting)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        init_ray(None, 2, dashboard=False)


_INIT_THEN_LIST_CHILDREN = """
import os, subprocess, sys, tempfile
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from medseg_platform.study.ray_runtime import _init_as_interruptible
print("starting", flush=True)
try:
    _init_as_interruptible(ray, num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="ri", dir="/tmp"))
    print("started fully", flush=True)
    ray.shutdown()
except KeyboardInterrupt:
    print("interrupted", flush=True)
import time; time.sleep(2)
kids = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "comm="], capture_output=True, text=True).stdout.split()
print("children:", [k for k in kids if k != "ps"], flush=True)
"""


def test_ctrl_c_while_a_local_ray_starts_leaves_no_ray_process_behind(tmp_path):
    """The notebook probe: Ctrl-C during ray.init left its GCS, raylet and dashboard running as children of the process
    (ray.shutdown no longer reached them), and the next run started a second cluster beside them."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.conftest import reaped

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with reaped(subprocess.Popen([sys.executable, "-c", _INIT_THEN_LIST_CHILDREN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, cwd=Path(__file__).resolve().parents[1], env=env)) as proc:
        assert proc.stdout.readline().strip() == "starting"
        time.sleep(0.5)  # inside ray.init (it takes seconds to start the node)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    if "started fully" in out:
        pytest.skip("Ray started before the signal arrived")
    assert "interrupted" in out and "children: []" in out, out


def test_a_journal_holding_this_search_from_another_results_folder_is_refused(tiny_root, tmp_path):
    """The same search run into another results folder (or into one deleted since) with the same journal joined the
    Optuna study of that name, and TPE proposed from its trials instead of the search's seeded first samples, silently
    (the search review). The folder that started it resumes it as before."""
    import json

    import optuna
    from ray import tune

    from medseg_platform.results import STUDY_FILE
    from medseg_platform.study.runner import check_before_ray
    from medseg_platform.study.search_journal import optuna_journal

    journal = tmp_path / "optuna.log"
    space = {"optim.lr": tune.loguniform(1e-3, 1e-1)}
    first = _study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=2, dashboard=False, optuna_storage=journal)
    check_before_ray(first)  # an empty journal path: nothing to join
    trials = first.trial_params()
    name = f"{first.name}-{first.spec_hash(trials)}"
    optuna_study = optuna.create_study(study_name=name, storage=optuna_journal(journal), direction="maximize")
    optuna_study.tell(optuna_study.ask({"search/optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}), 0.5)
    for results in (tmp_path / "results-b", tmp_path / "results-a"):  # another folder; the first one, its study.json gone
        again = _study(tiny_root, results, search_space=space, num_samples=2, dashboard=False, optuna_storage=journal)
        with pytest.raises(ConfigError, match=rf"--optuna-storage {journal}: already holds the Optuna study {name} \(1 trial\(s\)\) "
                                              "of this search run into another results folder"):
            check_before_ray(again)
    # the folder that started the search (its study.json records it with this journal) resumes it
    first.study_dir.mkdir(parents=True)
    (first.study_dir / STUDY_FILE).write_text(json.dumps(first.description(trials)), encoding="utf-8")
    check_before_ray(_study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=2, dashboard=False,
                            optuna_storage=journal))
    # ... also after another search in that folder rewrote its study.json, where its Tune experiment is (the diff review)
    from medseg_platform.results import tune_storage

    (tune_storage(first.study_dir) / name).mkdir(parents=True)
    other = _study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=3, dashboard=False, optuna_storage=journal)
    (first.study_dir / STUDY_FILE).write_text(json.dumps(other.description(other.trial_params())), encoding="utf-8")
    check_before_ray(_study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=2, dashboard=False,
                            optuna_storage=journal))
    # a folder whose study.json (of code that recorded no journal path) holds another search is not this search's (the
    # second diff review: such a study.json let the search join the other folder's Optuna study)
    foreign = _study(tiny_root, tmp_path / "results-d", search_space=space, num_samples=7, dashboard=False, optuna_storage=journal)
    foreign.study_dir.mkdir(parents=True)
    older = {k: v for k, v in foreign.description(foreign.trial_params()).items() if k != "optuna_storage"}
    (foreign.study_dir / STUDY_FILE).write_text(json.dumps(older), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"already holds the Optuna study {name} "):
        check_before_ray(_study(tiny_root, tmp_path / "results-d", search_space=space, num_samples=2, dashboard=False,
                                optuna_storage=journal))

    # another search (other samples: another experiment name) in a new folder may share the journal
    check_before_ray(_study(tiny_root, tmp_path / "results-c", search_space=space, num_samples=3, dashboard=False,
                            optuna_storage=journal))
    # the concurrency review: a folder whose run stopped before its Tune experiment started kept a study.json of this
    # search and journal, and joined the Optuna study another folder then created. The study names its creator now.
    from medseg_platform.study.search_journal import STUDY_FOLDER_ATTR

    optuna_study.set_user_attr(STUDY_FOLDER_ATTR, str(first.study_dir))
    stopped = _study(tiny_root, tmp_path / "results-e", search_space=space, num_samples=2, dashboard=False, optuna_storage=journal)
    stopped.study_dir.mkdir(parents=True)
    (stopped.study_dir / STUDY_FILE).write_text(json.dumps(stopped.description(trials)), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"already holds the Optuna study {name} \(1 trial\(s\)\) of this search, started in "
                                          rf"the study folder {first.study_dir}, not in {stopped.study_dir}; "):
        check_before_ray(stopped)
    check_before_ray(_study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=2, dashboard=False,
                            optuna_storage=journal))  # its creator still resumes it
    # the third diff review: a run killed before its first sample left the study, naming its folder, with no trials;
    # another folder joined it (the count was checked before the creator)
    empty = tmp_path / "empty.log"
    creator = _study(tiny_root, tmp_path / "results-g", search_space=space, num_samples=2, dashboard=False, optuna_storage=empty)
    experiment = f"{creator.name}-{creator.spec_hash(creator.trial_params())}"  # the journal is part of the search's hash
    optuna.create_study(study_name=experiment, storage=optuna_journal(empty)).set_user_attr(STUDY_FOLDER_ATTR, str(creator.study_dir))
    with pytest.raises(ConfigError, match=rf"already holds the Optuna study {experiment} \(0 trial\(s\)\) of this search, started "):
        check_before_ray(_study(tiny_root, tmp_path / "results-f", search_space=space, num_samples=2, dashboard=False,
                                optuna_storage=empty))
    check_before_ray(creator)  # its creator, with neither its Tune experiment nor a study.json: still its own


def test_the_search_records_the_study_folder_that_created_its_optuna_study(tmp_path):
    """TPESearch names the creating study folder in the Optuna study it creates, and a later run of another folder (the
    study loaded from the journal) does not overwrite it."""
    import optuna

    from medseg_platform.study.search_journal import STUDY_FOLDER_ATTR, optuna_journal
    from medseg_platform.study.tpe import TPESearch
    from ray import tune

    journal = tmp_path / "optuna.log"
    optuna.create_study(study_name="older", storage=optuna_journal(journal))  # as code before the attribute created it
    for name, folder in (("s-1", "/results/a/study"), ("s-1", "/results/b/study"), ("older", "/results/c/study")):
        search = TPESearch(metric="val_dice", mode="max", seed=1, study_name=name, storage=optuna_journal(journal),
                           study_folder=folder)
        search.set_search_properties("val_dice", "max", {"optim.lr": tune.loguniform(1e-3, 1e-1)})
    assert optuna.load_study(study_name="s-1", storage=optuna_journal(journal)).user_attrs == {STUDY_FOLDER_ATTR: "/results/a/study"}
    assert optuna.load_study(study_name="older", storage=optuna_journal(journal)).user_attrs == {}  # it only loaded it


def test_the_same_search_into_two_folders_at_once_is_refused_before_it_writes(tiny_root, tmp_path):
    """The concurrency review: two commands of one search with one journal, into two results folders a few seconds
    apart, both passed the journal check before either had written its Optuna study, and both wrote into it (4 trials in
    a 2-sample search). While one runs, the other is refused under its folder's lock, before its study.json; another
    search may share the journal meanwhile, as Optuna's journal allows."""
    from ray import tune

    from medseg_platform.study.runner import run_study
    from medseg_platform.study.search_journal import search_journal_lock

    journal = tmp_path / "optuna.log"
    space = {"optim.lr": tune.loguniform(1e-3, 1e-1)}
    running = _study(tiny_root, tmp_path / "results-a", search_space=space, num_samples=2, dashboard=False, optuna_storage=journal)
    other = _study(tiny_root, tmp_path / "results-c", search_space=space, num_samples=3, dashboard=False, optuna_storage=journal)
    other.name = "x" * 230  # the journal's and a long experiment's names: longer than a file name may be (the diff review)
    with search_journal_lock(running, running.trial_params()), search_journal_lock(other, other.trial_params()):
        again = _study(tiny_root, tmp_path / "results-b", search_space=space, num_samples=2, dashboard=False, optuna_storage=journal)
        with pytest.raises(ConfigError) as info:
            run_study(again)
        assert re.fullmatch(rf"--optuna-storage {journal}: the search {running.name}-\w+ is writing its Optuna study there \(pid "
                            rf"\d+ on .+, since .+, --results-dir {running.results_dir}\); wait for it to end and rerun this "
                            "one with that --results-dir to resume it, or give a new --optuna-storage file or --name",
                            str(info.value)), info.value
        assert not again.study_dir.exists() and not journal.exists()  # refused before its preflight and folder lock
    with search_journal_lock(again, again.trial_params()):  # free again once the first ended
        pass


def test_a_ray_head_s_gcs_passes_the_address_probe_and_an_http_server_does_not(ray_address):
    """The probe speaks HTTP/2 to the port: a Ray head's GCS (gRPC) answers with its SETTINGS frame; an HTTP/1 server
    (the dashboard's port given by mistake) made ray.init retry for about 14 minutes (the cluster review)."""
    import http.server
    import threading

    ray_runtime.check_address_answers(ray_address)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match="something answers there, but not a Ray head's GCS"):
            ray_runtime.check_address_answers(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_a_grpc_server_without_a_gcs_s_methods_fails_the_address_probe(ray_address):
    """A Ray Client's port (10001) given without ray:// speaks gRPC and passed the HTTP/2 probe; ray.init then retried it
    for minutes (the review of known gaps). The probe calls a GCS method: "unimplemented" there is not a Ray head; the
    session's Ray head (token authentication: the unauthenticated call is refused, not unimplemented) passes."""
    from concurrent import futures

    import grpc

    assert ray_runtime._serves_ray_gcs(ray_address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # no services: every method is unimplemented
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(ConfigError, match=rf"a gRPC server answers there, but not a Ray head's GCS .* give that one as "
                                              rf"ray://127.0.0.1:{port}\)"):
            ray_runtime.check_address_answers(f"127.0.0.1:{port}")
    finally:
        server.stop(0)
