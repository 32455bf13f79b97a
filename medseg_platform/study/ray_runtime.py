"""Ray itself: joining a cluster or starting a local Ray (with its dashboard), the GPU check before it starts, and
where a trial ran (docs/ray.md)."""

from __future__ import annotations

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
        return True
    context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                       object_store_memory=1 << 30, log_to_driver=False, configure_logging=False)
    if dashboard and getattr(context, "dashboard_url", None):
        print(dashboard_message(context.dashboard_url), file=sys.stderr, flush=True)
    return True


def trial_placement() -> dict:
    """Where this trial ran, recorded in its ``result.json``: Ray node id, host name, node IP and process id."""
    import socket

    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
