"""Driver of ``tests/test_cluster.py``: a two-node Ray cluster on loopback, a small study on it, shutdown.

usage: ``python tests/loopback_cluster.py DATA_ROOT RESULTS_DIR INFO_JSON``

It runs in its own process because the test session may already hold a Ray (``ray.init`` of the
``ray_address`` fixture) and a process can be the driver of one Ray only. The test sets the environment:
``RAY_TMPDIR`` (every Ray file of this cluster lives under the test's temp folder, nothing in /tmp/ray),
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every node and socket on 127.0.0.1), ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` (a token file in the temp folder, never ``~/.ray``).

Steps: start a head node (1 CPU, dashboard on 127.0.0.1) and a worker node (1 CPU); wait until the
dashboard's state API answers; write INFO_JSON
(``address``, ``dashboard_url``, ``driver_pid``) atomically; run a 4-trial study (supervised and mean teacher
x 2 label fractions, 1 CPU per trial, so concurrent trials must use both nodes) with ``address`` = the
cluster; finally ``Cluster.shutdown()`` stops every process this script started. Exit code 0 = the study
ran every trial.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def wait_for_state_api(url: str, timeout: float = 90.0) -> None:
    """Block until the dashboard's state API answers (it returns 500 for a few seconds after start-up),
    so that the test sees the trials however fast they run."""
    import time
    import urllib.error
    import urllib.request

    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{url}/api/v0/actors", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard at {url} did not answer in {timeout:.0f} s")
        time.sleep(0.3)


def main(data_root: str, results_dir: str, info_path: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from medseg_platform.io import write_json_atomic
    from medseg_platform.profiles import PROFILES
    from medseg_platform.results import scan_study
    from medseg_platform.study import Study, Variant

    with socket.socket() as probe:  # a free port: a dashboard of another Ray on this machine holds 8265 (a CI run failed so)
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                                            "dashboard_port": dashboard_port, "object_store_memory": 128 << 20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=128 << 20)
        cluster.wait_for_nodes()
        url = f"http://{cluster.webui_url}"
        wait_for_state_api(url)
        write_json_atomic(Path(info_path), {"address": cluster.address, "dashboard_url": url, "driver_pid": os.getpid()})
        base = PROFILES["smoke"].trial.replace(**{"data.root": data_root, "data.labelled_batch": 2, "data.unlabelled_batch": 2})
        variants = [Variant({"row": "Sup"}, {"objective": "supervised"}), Variant({"row": "MT"}, {"objective": "mean_teacher"})]
        study = Study("cluster", base, Path(results_dir), variants=variants, grid={"data.labelled": ["1", "2"]}, seeds=[1],
                      cpus_per_trial=1.0, address=cluster.address, dashboard=False)
        run = study.run()
        records, problems = scan_study(run.study_dir)
        print(f"{len(records)} trial(s) finished, problems: {problems}", flush=True)
        if len(records) != len(run.trial_keys) or problems:
            return 1
        # a trial of two one-CPU workers on the two one-CPU nodes: the worker beside the Tune function's token CPU used
        # to ask for more than its node had left, and the trial waited forever (the cluster review)
        ddp = Study("cluster-ddp", base, Path(results_dir), variants=variants[:1], grid={"data.labelled": ["1"]}, seeds=[1],
                    cpus_per_trial=1.0, num_workers=2, address=cluster.address, dashboard=False)
        run = ddp.run()
        records, problems = scan_study(run.study_dir)
        print(f"{len(records)} two-worker trial(s) finished, problems: {problems}", flush=True)
        return 0 if len(records) == len(run.trial_keys) and not problems else 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
