"""A two-node Ray cluster on one machine (loopback only), driven by ``tests/loopback_cluster.py``.

One run checks the issue's cluster and dashboard bullets together (a cluster start costs ~6 s on 2 cores):

* a small study run against the cluster's address places trials on BOTH nodes (``placement`` in result.json);
* while it runs, the dashboard's REST API (token auth) lists the study's trial actors and its driver job,
  and answers 401 without the token, 403 with a wrong one;
* every listening socket of the cluster's processes is on 127.0.0.1;
* then a trial of two one-CPU workers runs on the two one-CPU nodes;
* afterwards no process the test started is left, and the temp folder is removed.

The cluster runs in a subprocess: this pytest process may already be the driver of the session's Ray.
The token lives in a temp file (``RAY_AUTH_TOKEN_PATH``), never in ``~/.ray``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from medseg_platform.results import scan_study

DRIVER = Path(__file__).resolve().parent / "loopback_cluster.py"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process (from /proc/<pid>/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, ..., starttime (index 19); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _descendants(root: int) -> set[tuple[int, str]]:
    """Every descendant of ``root`` as (pid, start time): with pid_max as low as 32768 and Ray starting many
    processes, a bare pid can be reused by an unrelated process before the test looks again."""
    parents = _parents()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    identities = set()
    for pid in found:
        fields = _stat_fields(pid)
        if fields is not None:
            identities.add((pid, fields[19]))
    return identities


def _running(identity: tuple[int, str]) -> bool:
    """That very process (same pid and start time) is alive and not a zombie (an exited process that nobody
    reaped holds no resources)."""
    fields = _stat_fields(identity[0])
    return fields is not None and fields[19] == identity[1] and fields[0] != "Z"


def _wait_gone(processes: set[tuple[int, str]], timeout: float) -> list[str]:
    """Wait until none of ``processes`` runs; return 'pid cmdline' of those still running at the timeout."""
    deadline = time.monotonic() + timeout
    while (alive := sorted(p for p in processes if _running(p))) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = []
    for pid, _ in alive:
        try:
            described.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:200]}")
        except OSError:
            pass
    return described


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state held by ``pids`` (from /proc, no tools)."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in owner:  # 0A = LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            # the kernel prints the address as 32-bit words in host (little-endian) order
            raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
            found.append((owner[cols[9]], str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _get(url: str, token: str | None) -> tuple[int, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except urllib.error.URLError:  # not listening (yet, or any more)
        return 0, None


def test_study_spreads_over_two_loopback_nodes_and_dashboard_api_shows_it(tiny_root, tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    token_file = temp / "token"
    token_file.write_text(token)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_TMPDIR=str(temp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    info_file, log_file = tmp_path / "info.json", tmp_path / "driver.log"
    started: set[tuple[int, str]] = set()  # every process the driver started (Ray's head, worker node, trial workers)
    sockets: list[tuple[int, str, int]] = []
    actors, during = [], {}
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, str(DRIVER), str(tiny_root), str(tmp_path / "results"), str(info_file)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while not info_file.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()[-3000:]
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        url = info["dashboard_url"]
        assert url.startswith("http://127.0.0.1:")
        # poll the state API until the study's trial actors are alive (trials take a few seconds each)
        while not actors:
            assert proc.poll() is None and time.monotonic() < deadline, "no trial actor seen\n" + log_file.read_text()[-3000:]
            started |= _descendants(proc.pid)
            status, body = _get(f"{url}/api/v0/actors", token)  # 500 until the dashboard's state module is up
            if status == 200:
                actors = [a for a in body["data"]["result"]["result"] if a["class_name"] == "ImplicitFunc" and a["state"] == "ALIVE"]
            if not actors:
                time.sleep(0.3)
        sockets = _listening({pid for pid, _ in started} | {proc.pid})
        during["jobs"] = _get(f"{url}/api/jobs/", token)
        during["nodes"] = _get(f"{url}/nodes?view=summary", token)
        during["no_token"] = _get(f"{url}/api/v0/actors", None)[0]
        during["wrong_token"] = _get(f"{url}/api/jobs/", "0" * 64)[0]
        started |= _descendants(proc.pid)
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        left = _wait_gone(started, timeout=60)  # Ray's workers exit on their own once their raylet is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for identity in started:  # only after a failure: stop what the driver left behind, by PID
            if _running(identity):
                os.kill(identity[0], signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    log = log_file.read_text()
    assert returncode == 0, log[-3000:]
    assert left == [], f"processes left running after Cluster.shutdown(): {left}"
    assert not temp.exists()

    # the dashboard's REST API, with the token, showed the study while it ran
    jobs_status, jobs = during["jobs"]
    assert jobs_status == 200
    driver_jobs = [j for j in jobs if j["type"] == "DRIVER" and j["driver_info"]["pid"] == str(info["driver_pid"])]
    assert len(driver_jobs) == 1 and driver_jobs[0]["status"] == "RUNNING"
    assert {a["job_id"] for a in actors} == {driver_jobs[0]["job_id"]}  # the trial actors belong to the study's job
    assert during["no_token"] == 401 and during["wrong_token"] == 403
    nodes_status, nodes = during["nodes"]
    assert nodes_status == 200
    node_ids = {n["raylet"]["nodeId"] for n in nodes["data"]["summary"] if n["raylet"]["state"] == "ALIVE"}
    assert len(node_ids) == 2
    assert {n["raylet"]["nodeManagerAddress"] for n in nodes["data"]["summary"]} == {"127.0.0.1"}

    # every port the cluster listened on was loopback (GCS, raylets, object managers, dashboard, agents, workers)
    assert len(sockets) >= 8 and {port for _, _, port in sockets} >= {int(url.rsplit(":", 1)[1]), int(info["address"].rsplit(":", 1)[1])}
    assert [s for s in sockets if not _is_loopback(s[1])] == []

    # the study ran every trial, on both nodes
    records, problems = scan_study(tmp_path / "results" / "cluster")
    assert problems == [] and len(records) == 4
    placements = [r.result["placement"] for r in records]
    assert {p["node_id"] for p in placements} == node_ids
    assert {p["node_ip"] for p in placements} == {"127.0.0.1"}
    # then a trial of two one-CPU workers, one on each node beside the Tune function's token CPU
    (ddp,), problems = scan_study(tmp_path / "results" / "cluster-ddp")
    assert problems == [] and ddp.result["world_size"] == 2
