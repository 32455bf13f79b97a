"""The Ray dashboard of a local Ray: where it binds, and how a user authenticates to it.

The dashboard serves a REST API that accepts job submissions, i.e. runs arbitrary code. It therefore
binds to 127.0.0.1 unless the user asks otherwise (``--dashboard-host``), and binding to anything else
prints a warning. Ray 2.60 turns token authentication on by default: every dashboard request needs
``Authorization: Bearer <token>`` (HTTP 401 without it, 403 with a wrong one), the browser UI asks for
the token once and keeps it in a cookie. Ray looks for the token in ``$RAY_AUTH_TOKEN``, then in the file
``$RAY_AUTH_TOKEN_PATH``, then in ``~/.ray/auth_token`` (written by the first ``ray.init`` that needs one);
``RAY_AUTH_MODE=disabled`` turns authentication off.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

from medseg_platform.errors import ConfigError

DEFAULT_DASHBOARD_HOST = "127.0.0.1"
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, their IPv4-mapped spelling (``::ffff:127.0.0.1``) and ``localhost`` (also with its
    root dot, ``localhost.``); the cluster review saw the mapped spelling warned about as exposed."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_dashboard_host(host: str) -> str | None:
    """Validate a ``--dashboard-host`` value; return a warning text when it is not loopback, else None.

    Accepts an IPv4/IPv6 literal or a DNS host name; anything else is a one-line :class:`ConfigError`.
    """
    if not isinstance(host, str) or not host:
        raise ConfigError("--dashboard-host: give an IP address or host name (default 127.0.0.1)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host.rstrip(".")) or re.fullmatch(r"[0-9.]+", host):  # 999.1.1.1: a broken IP, not a name
            raise ConfigError(f"--dashboard-host {host!r}: not an IP address or host name (default 127.0.0.1)") from None
    if is_loopback(host):
        return None
    try:  # every spelling of the unspecified address (0.0.0.0, ::, 0000::, ::ffff:0.0.0.0)
        address = ipaddress.ip_address(host)
        unspecified = address.is_unspecified or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_unspecified)
    except ValueError:
        unspecified = False
    where = "every network interface" if unspecified else host
    return (f"WARNING: the Ray dashboard will listen on {where}. It accepts job submissions, so anyone who can "
            "reach that port and has the token can run code on this machine (anyone at all if RAY_AUTH_MODE=disabled). "
            "Prefer the default 127.0.0.1 and an SSH tunnel: ssh -L 8265:127.0.0.1:8265 <this host>")


def check_dashboard_host_is_local(host: str) -> None:
    """One-line :class:`ConfigError` unless this machine can listen on ``host`` (resolved, then a socket bound to it on
    a free port and closed at once): Ray tries 50 ports for about a minute and then fails with a traceback."""
    try:
        addresses = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--dashboard-host {host!r}: cannot be resolved ({exc.strerror}); give an address of this "
                          "machine (default 127.0.0.1)") from None
    error = None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
                return
            except OSError as exc:
                error = exc
    raise ConfigError(f"--dashboard-host {host}: this machine cannot listen there ({error.strerror if error else 'no address'}); "
                      "give one of its own addresses, 127.0.0.1 (the default) or 0.0.0.0")


def token_hint(environ: os._Environ | dict | None = None) -> str:
    """Where the dashboard's token comes from and how to send it, for the message printed at start-up."""
    env = os.environ if environ is None else environ
    mode = (env.get("RAY_AUTH_MODE") or "").lower()
    if mode == "disabled":
        return ("token auth is DISABLED (RAY_AUTH_MODE=disabled): anyone who can reach the port can submit jobs, and Ray's "
                "other ports (GCS, raylet), which listen on every interface, are open to the network too")
    if env.get("RAY_AUTH_TOKEN"):
        where = "the token is in $RAY_AUTH_TOKEN"
    elif env.get("RAY_AUTH_TOKEN_PATH"):
        where = f"the token is in {env['RAY_AUTH_TOKEN_PATH']} ($RAY_AUTH_TOKEN_PATH)"
    else:
        where = "the token is in ~/.ray/auth_token (`ray get-auth-token` prints it)"
    return f"token auth: {where}; the browser asks for it once, API clients send 'Authorization: Bearer <token>'"


def token_file(environ: os._Environ | dict | None = None) -> Path | None:
    """The file Ray reads the token from when no ``$RAY_AUTH_TOKEN`` gives it (``$RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``); None with the token in the environment or token auth disabled."""
    env = os.environ if environ is None else environ
    if (env.get("RAY_AUTH_MODE") or "").lower() == "disabled" or env.get("RAY_AUTH_TOKEN"):
        return None
    return Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser() if env.get("RAY_AUTH_TOKEN_PATH") else Path.home() / ".ray" / "auth_token"


def keep_token_private(environ: os._Environ | dict | None = None) -> str | None:
    """Make the token file readable by its owner only (0600) when other users may read it: Ray 2.60 writes
    ``~/.ray/auth_token`` with the umask's mode (0644 under 022), and every local user could then read the token, the
    only barrier to the dashboard's job submission (the security review). Returns the file tightened, else None.
    A file another user owns, or that cannot be changed, is left as it is."""
    import stat

    path = token_file(environ)
    try:
        info = path.stat() if path is not None else None
        if info is None or not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o077 or info.st_uid != os.getuid():
            return None
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    except OSError:
        return None
    return str(path)


def dashboard_message(url: str) -> str:
    """The line printed when a local Ray starts its dashboard (``url`` as Ray reports it, host:port)."""
    url = url if url.startswith("http") else f"http://{url}"
    return f"Ray dashboard: {url} ({token_hint()})"
