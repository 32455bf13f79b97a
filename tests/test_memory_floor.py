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


def test_a_dry_run_joining_a_cluster_does_not_time_a_step_too_large_for_this_machine(tiny_root, tmp_path, capsys):
    """The preflight review: with --address the floor is not checked (the cluster's nodes run the trials), but the dry run
    timed a supervised step of the 8192-pixel patch here and died allocating; it now says why it cannot estimate."""
    from medseg_platform.plan import format_plan, plan_study
    from medseg_platform.study import Study, Variant

    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root), "data.patch_size": (8192, 8192)})
    study = Study("floor", base, tmp_path / "results", variants=[Variant({"row": "Sup"}, {"objective": "supervised"})],
                  seeds=[1], dashboard=False, address="127.0.0.1:1")
    with mock.patch.object(memory_floor.os, "sysconf", side_effect=lambda name: {"SC_PHYS_PAGES": 2 ** 18, "SC_PAGE_SIZE": 4096}[name]), \
            mock.patch("medseg_platform.plan.measure_unit_seconds", side_effect=AssertionError("timed")), \
            mock.patch("medseg_platform.study.runner.joins_cluster", lambda address: True):  # also beside the session's Ray
        text = format_plan(plan_study(study))
    assert "Estimated wall time: unknown, not measured: a step does not fit in this machine's memory (one training step " \
           "keeps at least" in text
    assert "this machine has 1.0 GiB)" in text
    row = next(line for line in text.splitlines() if "Sup" in line and "to run" in line)
    assert row.rstrip().endswith("?")  # no time per trial either


def test_the_cpus_count_the_affinity_and_the_cgroup_limit(tmp_path, monkeypatch):
    """The preflight review: the plan and the --cpus-per-trial check counted the affinity (taskset), the local Ray the
    cgroup's limit (a container's --cpus): 2 trials ran at once on 1 pinned core where the dry run said 1. The count
    now takes both, and the study starts its local Ray with it."""
    from medseg_platform import plan

    v2 = tmp_path / "v2"
    v2.mkdir()
    for text, limit in (("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000\n", 0.5)):
        (v2 / "cpu.max").write_text(text)
        assert plan.cgroup_cpu_limit(v2) == limit
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert plan.cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert plan.cgroup_cpu_limit(v1) == 3.0 and plan.cgroup_cpu_limit(tmp_path / "none") is None
    monkeypatch.setattr(plan.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for limit, expected in ((None, 4), (2.5, 2), (0.5, 1), (16.0, 4)):
        monkeypatch.setattr(plan, "cgroup_cpu_limit", lambda root=None, limit=limit: limit)
        assert plan.available_cpus() == expected


def test_a_study_starts_its_local_ray_with_the_cpus_its_checks_counted(tiny_root, tmp_path, monkeypatch):
    from medseg_platform import plan
    from medseg_platform.study import Study, Variant
    from medseg_platform.study import runner

    class Started(Exception):
        pass

    asked = []
    monkeypatch.setattr(plan, "available_cpus", lambda: 1)
    monkeypatch.setattr(runner, "init_ray", lambda address, num_cpus, *a: asked.append(num_cpus) or (_ for _ in ()).throw(Started()))
    monkeypatch.setattr(runner, "ray_started_here", lambda: False)
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root)})
    study = Study("cpus", base, tmp_path / "results", variants=[Variant({"row": "Sup"}, {"objective": "supervised"})],
                  seeds=[1], dashboard=False)
    with pytest.raises(Started):
        study.run()
    assert asked == [1]


def test_the_dry_runs_timing_takes_one_step_after_a_warm_up_longer_than_its_budget(tiny_root, monkeypatch):
    """The preflight review: a 4096-pixel bf16 dry run timed its warm-up and at least 3 more steps of a minute each;
    where the warm-up alone outlasts the budget, one timed step prices the unit."""
    from medseg_platform import engine
    from medseg_platform.plan import measure_unit_seconds

    config = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root)}).to_dict()
    steps, step = [], engine.TrainLoop.step
    monkeypatch.setattr(engine.TrainLoop, "step", lambda self, at: steps.append(at) or step(self, at))
    unit = measure_unit_seconds(config, steps=5, budget_s=0.0)
    assert steps == [0, 1] and "the median of 1 supervised step(s)" in unit.source
    steps.clear()
    measure_unit_seconds(config, steps=5, budget_s=60.0)
    assert steps == [0, 1, 2, 3, 4, 5]
