"""What computed a trial: the processor, the accelerator and the software versions (``result.json``'s ``environment``).

The same seeds and code give the same table on one machine, but not on another CPU or GPU: the kernels round
differently there, and training amplifies a difference in the last bit into another trajectory, as another seed
does (docs/analysis.md, 'Reproducibility across machines'). So every result records what computed it, and the
report names it (``analysis.report``, the "Machines" bullet), and says so when one table mixes several.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any, Mapping


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's model name: Linux's ``/proc/cpuinfo`` ``model name`` (e.g. "Intel(R) Xeon(R) Processor"),
    else :func:`platform.processor`, else the architecture (``platform.machine()``), else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: The folders whose files decide what a trial computes and how it is reported (docs, tests and benchmarks do not).
CODE_FOLDERS = ("medseg_platform", "methods", "analysis", "studies")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The platform's code that computes this process's results (:func:`describe_checkout` of the package's checkout),
    read once per process: :func:`medseg_platform.engine.train_trial` asks at its start, so a commit made while a trial
    trains does not relabel the code it imported. A researcher comparing two tables needs to know whether one code
    computed both (a report review found no code version in any result file)."""
    from medseg_platform import __version__

    return describe_checkout(Path(__file__).resolve().parents[1], f"medseg-platform {__version__}")


def describe_checkout(root: Path, version: str) -> str:
    """``version`` and the git commit of the checkout at ``root``: "medseg-platform 0.1.0, git 8527c1f", with "+ local
    changes 3f2a9c1e" when files of :data:`CODE_FOLDERS` differ from the commit (tracked edits or untracked ``.py``
    files; the 8 hex digits hash the differences, so two different edits of one commit read differently); ``version``
    alone outside a git checkout or where git cannot say (not installed, a repository owned by another user).

    Fixed arguments, no user input; the caller's ``GIT_*`` variables are dropped (an inherited ``GIT_DIR`` would
    describe another repository), ``GIT_OPTIONAL_LOCKS=0`` keeps ``status`` from taking the index lock a git command
    of the user's may need at the same moment, and no fsmonitor hook runs."""
    import hashlib
    import subprocess

    if not (root / ".git").exists():
        return version
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-c", "core.fsmonitor=false", "-C", str(root), *args], capture_output=True,
                              timeout=10, check=True, env=env).stdout

    try:
        commit = git("rev-parse", "--short=7", "HEAD").decode().strip()
        # untracked files count where they are Python (a new module): a results folder inside a code folder (the
        # default `results` of a command run from studies/) changed the hash at every trial and was read in full
        entries = [e for e in git("status", "--porcelain", "-z", "--untracked-files=all", "--", *CODE_FOLDERS).split(b"\0")
                   if e and (not e.startswith(b"?? ") or e.endswith(b".py"))]
        digest = hashlib.sha256(git("diff", "HEAD", "--", *CODE_FOLDERS)) if entries else None
        for entry in sorted(entries):
            if digest is not None and entry.startswith(b"?? "):  # an untracked file: its name and its bytes
                path = root / entry[3:].decode(errors="surrogateescape")
                digest.update(entry + (path.read_bytes() if path.is_file() else b""))
    except (OSError, subprocess.SubprocessError, UnicodeError):
        return version
    if not commit:
        return version
    return f"{version}, git {commit}" + (f" + local changes {digest.hexdigest()[:8]}" if digest is not None else "")


def trial_environment(device) -> dict[str, Any]:
    """The environment of a trial run on ``device``: ``{"cpu", "accelerator", "torch", "python", "platform", "code"}``.

    ``accelerator``: the CUDA device's name (``torch.cuda.get_device_name``) for a CUDA device, else None.
    ``platform``: operating system and architecture, e.g. "Linux-x86_64"; ``code``: :func:`code_version`. (torch is
    imported here, not at the top: ``medseg report`` reads environments without importing it.)"""
    import torch

    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu_model(), "accelerator": accelerator, "torch": torch.__version__,
            "python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}", "code": code_version()}


#: :func:`environment_text` of a result without an environment (written before environments were recorded).
NOT_RECORDED = "not recorded"


def environment_text(environment: Mapping[str, Any] | None) -> str:
    """One environment in words, e.g. "Intel(R) Xeon(R) Processor, torch 2.13.0+cpu" (the accelerator first when there
    is one); "not recorded" for a result written before environments were recorded."""
    if not isinstance(environment, Mapping) or not environment:
        return NOT_RECORDED
    parts = [str(environment[key]) for key in ("accelerator", "cpu") if environment.get(key)]
    if environment.get("torch"):
        parts.append(f"torch {environment['torch']}")
    return ", ".join(parts) or NOT_RECORDED
