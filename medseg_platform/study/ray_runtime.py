"""Ray itself: joining a cluster or starting a local Ray (with its dashboard), the GPU check before it starts, and
where a trial ran (docs/ray.md)."""

from __future__ import annotations

import contextlib
import os
import sys

from medseg_platform.dashboard import DEFAULT_DASHBOARD_HOST, dashboard_message
from medseg_platform.errors import ConfigError


def check_gpus_available(address: str | None) -> None:
    """A GPU request on a machine without one is an error before Ray starts (local runs only)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster's GPUs are checked by Ray's scheduler
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--gpus-per-trial > 0 but this machine has no CUDA GPU (run on a GPU node, join a cluster with --address, or use 0)")


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool, dashboard_host: str = DEFAULT_DASHBOARD_HOST) -> bool:
    """Join ``address``/``RAY_ADDRESS`` or start a local Ray (dashboard on ``dashboard_host``). True if started here."""
    import ray

    if ray.is_initialized():
        return False
    source, drop = ("--address", "drop the flag") if address else ("$RAY_ADDRESS", "unset RAY_ADDRESS")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:  # Ray 2.60 raises it after its own retries (about 25 s)
            raise ConfigError(f"{source} {address}: no Ray cluster answers there ({exc}); start one with `ray start --head` "
                              f"on that machine, check the address and port, or {drop} to run a local Ray") from None
        except ValueError as exc:  # e.g. no port: Ray's "Invalid address format"
            raise ConfigError(f"{source} {address}: not a Ray address ({exc}); give HOST:PORT of the head node's GCS "
                              "(port 6379 by default) or 'auto'") from None
        term_as_interrupt()
        return True
    try:
        context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                           object_store_memory=1 << 30, log_to_driver=False, configure_logging=False)
    except SystemExit as exc:  # a kill while Ray starts: its own SIGTERM handler's sys.exit(15)
        if exc.code == 15:
            raise KeyboardInterrupt from None
        raise
    term_as_interrupt()
    if dashboard and getattr(context, "dashboard_url", None):
        print(dashboard_message(context.dashboard_url), file=sys.stderr, flush=True)
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block (main thread only), the previous handler is back after it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    term_as_interrupt()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def term_as_interrupt() -> None:
    """``ray.init`` makes SIGTERM a silent ``sys.exit(15)``; outside Tune's run (starting it, writing the report) a
    ``kill`` then left no message and exit code 15. A KeyboardInterrupt instead takes the command's Ctrl-C path (its
    ``finally`` shuts Ray down; the study command says how to resume). While Tune runs,
    :func:`medseg_platform.study.runner.fit_until_stopped` maps SIGTERM to Tune's own stop and puts this handler back
    afterwards; :func:`sigterm_as_interrupt` around the study command puts back the one from before it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def trial_placement() -> dict:
    """Where this trial ran, recorded in its ``result.json``: Ray node id, host name, node IP and process id."""
    import socket

    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
