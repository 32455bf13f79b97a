"""The memory floor checked before a study starts (``medseg_platform.memory_floor``)."""

from __future__ import annotations

from unittest import mock

import pytest

from medseg_platform import memory_floor
from medseg_platform.errors import ConfigError
from medseg_platform.memory_floor import activation_floor_bytes, check_memory_floor, machine_memory_bytes
from medseg_platform.profiles import PROFILES


def _config(side: int = 32, batch: int = 4, amp: str = "off", channels=None) -> dict:
    config = PROFILES["smoke"].trial.to_dict()
    config["data"].update(patch_size=[side, side], labelled_batch=batch)
    config["optim"]["amp"] = amp
    if channels is not None:
        config["model"]["channels"] = list(channels)
    return config


def test_the_floor_scales_as_batch_times_patch_area_exactly():
    """Measured at 32 and 64 pixels and extended: the same bytes as measured at the patch itself (every UNet level's
    maps are (B, c, P / 2**l, P / 2**l), BatchNorm's statistics per channel), at any batch."""
    for batch in (2, 5):
        with mock.patch.object(memory_floor, "MEASURED_SIDES", (96, 128)):
            measured_at_96, measured_at_160 = (activation_floor_bytes(_config(side, batch)) for side in (96, 160))
        assert activation_floor_bytes(_config(96, batch)) == measured_at_96 > activation_floor_bytes(_config(32, batch)) > 0
        assert activation_floor_bytes(_config(160, batch)) == measured_at_160
    at_32 = activation_floor_bytes(_config(32))
    assert activation_floor_bytes(_config(32, amp="bf16")) == at_32 // 2  # some activations 16-bit: half is the floor
    assert 0 < activation_floor_bytes(_config(16)) < at_32 / 3  # a patch below 32: measured there


def test_a_patch_no_step_fits_in_is_refused_with_its_numbers():
    """The review of known gaps: a dry run of data.patch_size=8192,8192 timed supervised steps and died allocating."""
    small, huge = {"config": _config(32)}, {"config": _config(8192)}
    check_memory_floor([small], memory_bytes=2 ** 30)
    check_memory_floor([huge], memory_bytes=None)  # unknown memory: not checked
    with pytest.raises(ConfigError, match=r"data.patch_size 8192x8192 with data.labelled_batch 4 .* at least [\d.]+ GiB of "
                                          r"activations .* this machine has 1.0 GiB; use a smaller patch"):
        check_memory_floor([small, huge], memory_bytes=2 ** 30)


def test_the_floor_is_measured_once_per_network_patch_batch_and_precision():
    calls = []
    with mock.patch.object(memory_floor, "activation_floor_bytes", side_effect=lambda config: calls.append(config) or 1):
        check_memory_floor([{"config": _config(32)}, {"config": _config(32)}, {"config": _config(64)},
                            {"config": _config(32, amp="bf16")}], memory_bytes=2 ** 30)
    assert len(calls) == 3


def test_a_study_dry_run_is_refused_before_it_times_a_step(tiny_root, tmp_path):
    from medseg_platform.study import Study, Variant
    from medseg_platform.study.runner import check_before_ray

    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root), "data.patch_size": (8192, 8192)})
    study = Study("floor", base, tmp_path / "results", variants=[Variant({"row": "Sup"}, {"objective": "supervised"})],
                  seeds=[1], dashboard=False)
    with mock.patch.object(memory_floor.os, "sysconf", side_effect=lambda name: {"SC_PHYS_PAGES": 2 ** 18, "SC_PAGE_SIZE": 4096}[name]):
        assert machine_memory_bytes() <= 2 ** 30
        with pytest.raises(ConfigError, match="one training step keeps at least"):
            check_before_ray(study, dry_run=True)
    assert not (tmp_path / "results").exists()  # nothing written


def test_the_floor_touches_no_cuda_device(monkeypatch):
    """The final review: fork_rng() without devices saved and restored every CUDA device's state, which starts CUDA in
    the driver of a CPU study on a GPU machine (and warns on several GPUs)."""
    import torch

    touched = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: touched.append(a) or torch.zeros(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a, **k: touched.append(a))
    check_memory_floor([{"config": _config(32)}], memory_bytes=2 ** 30)
    assert touched == []
