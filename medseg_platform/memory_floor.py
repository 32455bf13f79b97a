"""A floor under a trial's memory, checked before a study starts: a patch or batch no machine here can train.

A training step keeps the activations its backward pass reads. For the UNet (``methods/unet.py``) they are one
fully convolutional forward's: every level's maps are ``(B, c_l, P / 2**l, P / 2**l)``, so their bytes are
``a + b * P**2`` for a patch side ``P`` that is a multiple of 16 (``a``: BatchNorm's per-channel statistics).
:func:`activation_floor_bytes` measures them on the CPU at 32 and 64 pixels (milliseconds; the bytes of the distinct
storages autograd saves) and extends the line to the trial's patch. That is a floor, not an estimate, of a trial's
memory: the supervised row's labelled batch alone, without the parameters, gradients, optimiser state, the data in
memory, or the further images of the semi-supervised objectives (MONA runs 16 images with gradients where supervised
runs 4; benchmarks/RESULTS.md has measured peaks). Measured against the first supervised step's RSS growth (the UNet
of 16-256 channels, batch 4): 97 / 389 / 1558 MiB at 128 / 256 / 512 pixels, against 157 / 542 / 1821 MiB.

A trial whose floor exceeds this machine's memory cannot finish a step: :func:`check_memory_floor` refuses it with one
line before anything is written or started; a dry run asked for ``data.patch_size=8192,8192`` went on to time
supervised steps and died allocating memory (the review of known gaps).

Only trials that run here on the CPU are checked: a cluster's nodes (``--address``) may have more memory, and a GPU
trial's device memory is not read from this process (that would start a CUDA context outside Ray's accounting).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from medseg_platform.errors import ConfigError

#: The patch sides of the measurement (multiples of 16; the bottleneck is 2x2 or more, so BatchNorm trains at any batch).
MEASURED_SIDES = (32, 64)
_GIB = 2 ** 30


def activation_floor_bytes(config: Mapping) -> int:
    """Bytes autograd saves in one training-mode forward of ``config``'s UNet (``model``, ``data.num_classes``) on its
    labelled batch (``data.labelled_batch`` x 1 x P x P float32 images, ``data.patch_size`` P); half of that under mixed
    precision (``optim.amp``), where some of them are 16-bit. A floor under the trial's memory (module docstring)."""
    import torch

    from methods.registry import build_model

    data, model_cfg = config["data"], config["model"]
    side, batch = int(data["patch_size"][0]), int(data["labelled_batch"])
    with torch.random.fork_rng(devices=[]):  # the initialisation's draws leave the caller's CPU generator as it was
        # (devices=[]: no CUDA device's state saved, which would start CUDA in the driver: the final review)
        model = build_model(model_cfg["name"], num_classes=int(data["num_classes"]), channels=tuple(model_cfg["channels"]),
                            upsample=model_cfg["upsample"]).train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(measured: int) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()  # a tensor saved twice (or a view of one) counts once
            return tensor

        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.zeros(batch, 1, measured, measured))  # dropout draws: its own RNG state, restored after
        return sum(nbytes for pointer, nbytes in storages.items() if pointer not in parameters)

    if side in MEASURED_SIDES or side < MEASURED_SIDES[0]:
        floor = saved_bytes(side)
    else:
        (small, large), (at_small, at_large) = MEASURED_SIDES, [saved_bytes(s) for s in MEASURED_SIDES]
        per_pixel = (at_large - at_small) / (large ** 2 - small ** 2)
        floor = at_small + per_pixel * (side ** 2 - small ** 2)
    return int(floor / 2 if (config.get("optim") or {}).get("amp", "off") != "off" else floor)


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or its cgroup's limit where lower (a container); None when unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total if total and total > 0 else None


def check_memory_floor(trials: Iterable[Mapping], memory_bytes: int | None) -> None:
    """A one-line :class:`ConfigError` when a trial's :func:`activation_floor_bytes` exceeds ``memory_bytes`` (this
    machine's, :func:`machine_memory_bytes`; None: not checked). Measured once per distinct network, patch, batch and
    precision among ``trials`` (dicts with a ``config``)."""
    if memory_bytes is None:
        return
    seen: set[str] = set()
    for trial in trials:
        config = trial["config"]
        data, optim = config["data"], config.get("optim") or {}
        identity = repr((config["model"], data["num_classes"], data["patch_size"], data["labelled_batch"], optim.get("amp", "off")))
        if identity in seen:
            continue
        seen.add(identity)
        floor = activation_floor_bytes(config)
        if floor > memory_bytes:
            side = data["patch_size"][0]
            raise ConfigError(
                f"data.patch_size {side}x{side} with data.labelled_batch {data['labelled_batch']} and model.channels "
                f"{list(config['model']['channels'])}: one training step keeps at least {floor / _GIB:.1f} GiB of activations "
                f"(the UNet's forward on the labelled batch alone; semi-supervised methods keep several times more), and this "
                f"machine has {memory_bytes / _GIB:.1f} GiB; use a smaller patch, batch or width (--set), or run on a cluster "
                "with more memory per node (--address)")
