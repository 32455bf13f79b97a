"""What computed a trial: the processor, the accelerator and the software versions (``result.json``'s ``environment``).

The same seeds and code give the same table on one machine, but not on another CPU or GPU: the kernels round
differently there, and training amplifies a difference in the last bit into another trajectory, as another seed
does (docs/analysis.md, 'Reproducibility across machines'). So every result records what computed it, and the
report names it (``analysis.report``, the "Machines" bullet), and says so when one table mixes several.
"""

from __future__ import annotations

import functools
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


def trial_environment(device) -> dict[str, Any]:
    """The environment of a trial run on ``device``: ``{"cpu", "accelerator", "torch", "python", "platform"}``.

    ``accelerator``: the CUDA device's name (``torch.cuda.get_device_name``) for a CUDA device, else None.
    ``platform``: operating system and architecture, e.g. "Linux-x86_64". (torch is imported here, not at the top:
    ``medseg report`` reads environments without importing it.)"""
    import torch

    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu_model(), "accelerator": accelerator, "torch": torch.__version__,
            "python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}


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
