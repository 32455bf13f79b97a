"""Ray itself: joining a cluster or starting a local Ray (with its dashboard), the GPU check before it starts, and
where a trial ran (docs/ray.md)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import tempfile

from medseg_platform.dashboard import DEFAULT_DASHBOARD_HOST, dashboard_message, keep_token_private
from medseg_platform.errors import ConfigError


def check_gpus_available(address: str | None, gpus_per_worker: float = 1.0, num_workers: int = 1) -> None:
    """A GPU request on a machine without one, or a trial of more GPUs (``num_workers x gpus_per_worker``) than it
    has, is an error before Ray starts (local runs only: Tune waited forever for such a trial, with a warning that the
    cluster may grow; the cluster review). A cluster this process joined itself (a notebook's ``ray.init(address=...)``)
    is not checked: its GPUs were refused as this machine's none; a Ray it started itself has the GPUs it was given."""
    if joins_cluster(address):
        return  # a cluster's GPUs are checked by Ray's scheduler
    need = gpus_per_worker * num_workers
    workers = f" ({num_workers} workers x {gpus_per_worker:g})" if num_workers > 1 else ""
    if ray_started_here():  # a notebook's ray.init(num_gpus=...): Tune waits for GPUs it was not given
        gpus = float(sys.modules["ray"].cluster_resources().get("GPU", 0))
        if need > gpus + 1e-9:
            raise ConfigError(f"--gpus-per-trial {gpus_per_worker:g}: a trial needs {need:g} GPU(s){workers}, the Ray this "
                              f"process started (ray.init) has {gpus:g}; ask for fewer (0 trains on the CPU), or "
                              "ray.shutdown() first and let the study start a Ray of this machine's GPUs")
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--gpus-per-trial > 0 but this machine has no CUDA GPU (run on a GPU node, join a cluster with --address, or use 0)")
    gpus = torch.cuda.device_count()
    if need > gpus + 1e-9:
        raise ConfigError(f"--gpus-per-trial {gpus_per_worker:g}: a trial needs {need:g} GPU(s){workers}, this machine has {gpus}; "
                          f"ask for fewer (0 trains on the CPU), or join a cluster that has them (--address)")


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool, dashboard_host: str = DEFAULT_DASHBOARD_HOST) -> bool:
    """Join ``address``/``RAY_ADDRESS`` or start a local Ray (dashboard on ``dashboard_host``). True if started here."""
    import ray

    if ray.is_initialized():
        if address:  # it ran on the session's Ray without a word (the API review)
            print(f"warning: this process already runs Ray (ray.init before the study): the study runs on it, not on "
                  f"{address}; call ray.shutdown() first to join that cluster", file=sys.stderr, flush=True)
        return False
    address, source, drop = cluster_address(address)
    if address:
        check_address_answers(address, source, drop)  # again (check_cluster_answers): it may have gone since the checks
        try:
            context = _init_as_interruptible(ray, address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:  # a GCS that answers TCP but not this driver: Ray's own retries, then this
            raise ConfigError(f"{source} {address}: no Ray cluster answers there, or it refused this driver ({exc}); start "
                              f"one with `ray start --head` on that machine, check the address and port and, for a cluster "
                              f"started with a token, set RAY_AUTH_MODE=token here with that token (~/.ray/auth_token or "
                              f"RAY_AUTH_TOKEN_PATH; README, 'Authentication'), or {drop} to run a local Ray") from None
        except ValueError as exc:  # e.g. no port: Ray's "Invalid address format"
            raise ConfigError(f"{source} {address}: not a Ray address ({exc}); give HOST:PORT of the head node's GCS "
                              "(port 6379 by default) or 'auto'") from None
        term_as_interrupt()
        if getattr(context, "dashboard_url", None):  # the cluster's, on its head node (README, 'Running on a cluster')
            print(dashboard_message(context.dashboard_url) + "; on the cluster's head node: from another machine, tunnel "
                  "to it (README, 'Running on a cluster', the dashboard)", file=sys.stderr, flush=True)
        return True
    temp = check_local_ray_temp_dir()
    try:
        with _ray_processes_in_their_own_session():
            context = _init_as_interruptible(ray, num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                                             object_store_memory=1 << 30, log_to_driver=False, configure_logging=False)
    except OSError as exc:  # e.g. an unwritable HOME, where Ray writes its token (~/.ray/auth_token)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise ConfigError(f"a local Ray could not start: {exc.strerror or exc}{where}; Ray writes its session under {temp} "
                          "(RAY_TMPDIR sets it) and, with token authentication, a token under ~/.ray (RAY_AUTH_TOKEN_PATH "
                          "sets it): point them at writable folders") from None
    term_as_interrupt()
    keep_token_private()  # the token Ray just wrote under the umask: the dashboard's only barrier for local users
    if dashboard and getattr(context, "dashboard_url", None):
        print(dashboard_message(context.dashboard_url), file=sys.stderr, flush=True)
    return True


def check_nodes_see(paths: dict, timeout_s: float = 120.0, writable: tuple = ()) -> None:
    """On a joined Ray cluster: every alive node sees each of ``paths`` (path -> (what it is, the bytes it holds here)) as
    this machine does, and can create a file in each folder of ``writable`` (the study folder, where its trials write),
    checked by one zero-CPU task per node, pinned to it. A one-line :class:`DataError` names the first node that does
    not. Without a shared filesystem a trial on such a node wrote its checkpoints and results to that node's own disk,
    and Tune's own check failed only at the first checkpoint, after the pretraining (the cluster audit; README, 'Running
    on a cluster'); a node that mounts the folder read-only failed its trials once they started (the cluster review)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from medseg_platform.errors import DataError

    @ray.remote(num_cpus=0, max_retries=0)
    def differing(paths: dict, writable: tuple) -> list:
        import tempfile

        out = []
        for path, (what, content) in paths.items():
            try:
                with open(path, "rb") as fh:
                    if fh.read() != content:
                        out.append(f"{what} {path} holds other bytes there (another filesystem at the same path)")
            except OSError as exc:
                out.append(f"{what} {path} cannot be read there ({exc.strerror or exc})")
        for folder in writable:
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".node-check-"):
                    pass
            except OSError as exc:
                out.append(f"the study folder {folder} cannot be written there ({exc.strerror or exc}: mounted read-only?)")
        return out

    resources = ("CPU", "GPU")  # the nodes trials can run on (a head node started with --num-cpus 0 runs none)
    nodes = [node for node in ray.nodes() if node.get("Alive") and any(node.get("Resources", {}).get(r, 0) > 0 for r in resources)]
    pending = {differing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
               paths, tuple(str(folder) for folder in writable)): node for node in nodes}
    try:
        answers = ray.get(list(pending), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        for ref in pending:
            ray.cancel(ref, force=True)
        print(f"warning: could not check within {timeout_s:.0f} s that every node of the cluster sees the results and data "
              "folders (a busy or growing cluster); going on", file=sys.stderr, flush=True)
        return
    for node, problems in zip(pending.values(), answers):
        if problems:
            raise DataError(f"node {node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')}) of the Ray cluster: "
                            f"{problems[0]}; every node must reach the data and --results-dir at the same absolute path (a "
                            "shared filesystem: README, 'Running on a cluster')")


ADDRESS_PROBE_S = 5.0  # how long the TCP probe of --address waits for the head's GCS port
#: Unix socket paths are at most 107 bytes on Linux; Ray puts "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store"
#: (up to 64 bytes) under its temporary folder.
SOCKET_PATH_MAX, RAY_SOCKET_SUFFIX = 107, 64


def ray_temp_dir() -> str:
    """The folder a local Ray starts its session in: $RAY_TMPDIR, else $TMPDIR on Linux, else /tmp, plus "ray" (Ray
    2.60's rule, ``ray._common.utils.get_default_ray_temp_dir``)."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return os.path.join(base, "ray")


def check_local_ray_temp_dir() -> str:
    """A one-line :class:`ConfigError` when a local Ray cannot start in :func:`ray_temp_dir`: a folder too long for its
    socket paths (a long TMPDIR, common in cluster job folders, stopped the study with Ray's own traceback) or one it
    cannot write; returns the folder."""
    temp = ray_temp_dir()
    if len(temp.encode()) + RAY_SOCKET_SUFFIX > SOCKET_PATH_MAX:
        raise ConfigError(f"Ray's temporary folder {temp} is too long for its socket paths ({len(temp.encode())} bytes; "
                          f"at most {SOCKET_PATH_MAX - RAY_SOCKET_SUFFIX}): set RAY_TMPDIR to a short folder, e.g. RAY_TMPDIR=/tmp")
    try:
        os.makedirs(temp, exist_ok=True)
        with tempfile.TemporaryFile(dir=temp):
            pass
    except OSError as exc:
        raise ConfigError(f"Ray's temporary folder {temp}: cannot write there ({exc.strerror or exc}); set RAY_TMPDIR "
                          "to a writable folder") from None
    return temp


def ray_started_here() -> bool:
    """Whether this process runs Ray and started its head itself (``ray.init()`` without an address: a local Ray, which
    cannot grow). False where it joined a cluster (``ray.init(address=...)``), or runs none."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    node = getattr(ray._private.worker, "_global_node", None)  # Ray 2.60: the Node this driver started or connected to
    return bool(node is not None and node.is_head())


def joins_cluster(address: str | None) -> bool:
    """Whether the study's trials run on a Ray cluster beside this machine: ``--address``/``$RAY_ADDRESS``, or a Ray this
    process joined itself (a notebook's ``ray.init(address=...)``, where the nodes' view of the folders went unchecked:
    the cluster review)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return not ray_started_here()
    return bool(address or os.environ.get("RAY_ADDRESS"))


def check_cluster_answers(address: str | None) -> None:
    """:func:`check_address_answers` for the cluster :func:`init_ray` would join (``address``, else ``$RAY_ADDRESS``);
    nothing when there is none or this process already runs Ray (a notebook's, which :func:`init_ray` keeps). The
    study's checks call it before anything is written (an unreachable address used to fail after the study folder's
    study.json and preflight were written, and a dry run passed it: the studies review)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return
    address, source, drop = cluster_address(address)
    if address:
        check_address_answers(address, source, drop)


def cluster_address(address: str | None) -> tuple[str | None, str, str]:
    """``(address to join or None, what gave it, how to run a local Ray instead)``: ``address`` (``--address``), else
    ``$RAY_ADDRESS`` (an empty --address was refused before: check_ray_options)."""
    if address:
        return address, "--address", "drop the flag"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS", "unset RAY_ADDRESS"


#: The client's HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (a Ray head's GCS) answers with a
#: SETTINGS frame of its own (frame type 4, the fourth byte of the reply).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(connection) -> bool:
    """Whether the server on ``connection`` (a connected socket with a timeout) answers :data:`HTTP2_PREFACE` with an
    HTTP/2 SETTINGS frame, as a gRPC server does; False for a silent server, a closed connection or another protocol."""
    import socket

    connection.sendall(HTTP2_PREFACE)
    reply = b""
    try:
        while len(reply) < 4:
            chunk = connection.recv(9 - len(reply))
            if not chunk:
                break
            reply += chunk
    except socket.timeout:
        pass
    return len(reply) >= 4 and reply[3] == 4


#: A read-only method of a Ray head's GCS (Ray 2.60's ``NodeInfoGcsService``) that :func:`_serves_ray_gcs` calls.
GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


def _serves_ray_gcs(target: str) -> bool:
    """Whether the gRPC server at ``target`` (``HOST:PORT``, IPv6 in brackets) has a Ray GCS's methods: it answers
    :data:`GCS_PROBE_METHOD` with anything but "unimplemented" (a GCS with token authentication refuses the call
    unauthenticated, which passes). False for another gRPC server: a Ray Client's port given without ``ray://`` passed
    the HTTP/2 probe, and ``ray.init`` then retried it for minutes (the review of known gaps)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(GCS_PROBE_METHOD)(b"", timeout=ADDRESS_PROBE_S)
        except grpc.RpcError as exc:
            return exc.code() != grpc.StatusCode.UNIMPLEMENTED
    return True


def check_address_answers(address: str, source: str = "--address", drop: str = "drop the flag") -> None:
    """A one-line :class:`ConfigError` within seconds for an address ``ray.init`` would retry for about 14 minutes (Ray
    2.60: 20 tries of its GCS client, each blocking about 40 s) or refuse only after the study folder was written: one
    that is not ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (a missing port, a dashboard URL, a blank value), a port
    that takes no TCP connection, or one whose server does not speak gRPC (HTTP/2) as a Ray head's GCS does (the
    dashboard's port given by mistake: the cluster review), or speaks it without a GCS's methods (a Ray Client's port
    without ``ray://``: :func:`_serves_ray_gcs`). ``auto`` and ``ray://`` addresses are left to Ray, and so are the gRPC
    checks of a cluster with TLS (``RAY_USE_TLS``)."""
    import socket

    text = address.strip()
    if text == "auto" or text.startswith("ray://"):
        return
    form = ("give the head's GCS address HOST:PORT (port 6379 by default), 'auto' for a Ray started on this machine, or "
            "ray://HOST:10001 for a Ray Client")
    if not text or "://" in text or "/" in text:
        raise ConfigError(f"{source} {address!r}: not a Ray address ({'empty' if not text else 'a URL'}); {form}, or {drop} "
                          "to run a local Ray")
    try:  # an IP address alone (::1, fe80::1, 10.0.0.1): its last group is no port
        bare = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        bare = None
    if bare is not None:
        example = f"[{bare}]:6379" if bare.version == 6 else f"{bare}:6379"
        raise ConfigError(f"{source} {address}: not a Ray address (no port), e.g. {example}; {form}")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{source} {address}: not a Ray address (no port); {form}")
    if ":" in host and not host.startswith("["):
        raise ConfigError(f"{source} {address}: an IPv6 address needs brackets before its port: [{host}]:{port}")
    host = host.strip("[]")  # [IPv6]:port
    if not 1 <= int(port) <= 65535:  # getaddrinfo wraps a larger port (99999 probed 34463; the cluster review)
        raise ConfigError(f"{source} {address}: not a Ray address: the port must be 1-65535 (the head's GCS port, 6379 "
                          "by default)")
    tls = os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "", "false")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_PROBE_S) as connection:
            if not tls and not _answers_http2(connection):
                raise ConfigError(f"{source} {address}: something answers there, but not a Ray head's GCS (no gRPC "
                                  "reply: the dashboard's port 8265, say); give the GCS port (6379 by default, `ray "
                                  f"start --head --port`), or {drop} to run a local Ray")
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ConfigError(f"{source} {address}: no Ray cluster answers there (TCP connection: {why}); start one with "
                          f"`ray start --head` on that machine, check the address and port (the head's GCS port, 6379 by "
                          f"default), or {drop} to run a local Ray") from None
    if not tls and not _serves_ray_gcs(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"):
        raise ConfigError(f"{source} {address}: a gRPC server answers there, but not a Ray head's GCS (a Ray Client's port, "
                          f"10001 by default, say: give that one as ray://{text}); give the GCS port (6379 by default, "
                          f"`ray start --head --port`), or {drop} to run a local Ray")


@contextlib.contextmanager
def _ray_processes_in_their_own_session():
    """While a local Ray starts: the processes it starts (its GCS, raylet, dashboard; the raylet's workers after them)
    get a session of their own, so a signal to the command's process group reaches the driver alone. A SIGTERM to the
    group (``timeout``, a job scheduler, ``kill -TERM -PGID``) killed them beside the driver, whose clean stop (the
    command's SIGTERM = Ctrl-C) then waited 60 s for a GCS that was gone and ended in Ray's "Failed to connect to GCS"
    without its message or report (the studies review). They still end with the driver: Ray starts them with the
    kernel's kill-on-parent-death (fate sharing), and ``ray.shutdown`` stops them; the raylet's dashboard and
    runtime-env agents, its children, not the driver's, exit on their own about a minute after a SIGKILL of the driver
    (so it was for a SIGKILL of the driver alone before; a group SIGKILL used to take them at once: the diff review).
    Ray offers no option for it: its private ``ConsolePopen``, through which it starts them, is wrapped for the start
    only, and left alone where this Ray version lacks it (the processes then share the group, as before)."""
    try:
        from ray._private import services
    except ImportError:  # a Ray without the module: as before
        services = None
    popen = getattr(services, "ConsolePopen", None)
    if popen is None or sys.platform == "win32" or not isinstance(popen, type):
        yield
        return

    class OwnSession(popen):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = popen


def _init_as_interruptible(ray, **kwargs):
    """``ray.init(**kwargs)``, where Ctrl-C or a kill while Ray starts or connects (its own SIGTERM handler's
    ``sys.exit(15)``) shuts the started Ray down and becomes a KeyboardInterrupt: the command's Ctrl-C path, with its
    message and exit code 130."""
    from medseg_platform.io import signals_deferred

    try:
        # Ctrl-C or a kill while Ray starts is raised once it has started, so that it can be shut down: cut in the
        # middle, its GCS, raylet and dashboard kept running as children of the process, which ray.shutdown no longer
        # reached, and a second start in a notebook ran a second cluster beside them (the notebook probe)
        with signals_deferred():
            return ray.init(**kwargs)
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code != 15:
            raise
        if ray.is_initialized():
            ray.shutdown()
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def sigterm_handler_kept():
    """The SIGTERM handler from before the block is back after it (main thread only), for Python and the OS alike:
    ``ray.init`` installs its own, and ``ray.shutdown`` resets the OS's action to the default behind Python's back, so a
    notebook's next ``kill -TERM`` killed it although ``signal.getsignal`` named the platform's handler (the notebook
    probe)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block (main thread only), the previous handler is back after it. A
    SIGTERM whose exception Python ignored stops the training loop at its next step
    (:func:`medseg_platform.io.raise_if_stopped`) until the block ends."""
    from medseg_platform.io import forget_stop_signals

    try:
        with sigterm_handler_kept():
            term_as_interrupt()
            yield
    finally:
        forget_stop_signals()


def term_as_interrupt() -> None:
    """``ray.init`` makes SIGTERM a silent ``sys.exit(15)``; outside Tune's run (starting it, writing the report) a
    ``kill`` then left no message and exit code 15. A KeyboardInterrupt instead takes the command's Ctrl-C path (its
    ``finally`` shuts Ray down; the study command says how to resume). While Tune runs,
    :func:`medseg_platform.study.runner.fit_until_stopped` maps SIGTERM to Tune's own stop and puts this handler back
    afterwards; :func:`sigterm_as_interrupt` around the study command puts back the one from before it."""
    import signal
    import threading

    from medseg_platform.io import interrupt_on_signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt_on_signal)


def trial_placement() -> dict:
    """Where this trial ran, recorded in its ``result.json``: Ray node id, host name, node IP and process id."""
    import socket

    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
