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


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The platform's code that computed a result: "medseg-platform 0.1.0, git 8527c1f" (the checkout's commit, with
    "+ local changes" when tracked files differ from it), or the package version alone outside a git checkout or where
    git cannot say. A researcher comparing two tables needs to know whether one code computed both (a report review
    found no code version in any result file)."""
    import subprocess

    from medseg_platform import __version__

    text = f"medseg-platform {__version__}"
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return text
    # fixed arguments, no user input; GIT_OPTIONAL_LOCKS=0: status must not take the index lock that a git command the
    # user runs at the same moment needs; a missing or slow git leaves the version alone
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True, env=env).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text}, git {commit}" + (" + local changes" if changed else "") if commit else text


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
