"""The GPU path of the engine: mixed precision (autocast, fp16 loss scaling), pinned non-blocking copies,
and the clear errors on a machine without a GPU. The CUDA tests run where a GPU exists."""

import math
from pathlib import Path

import pytest
import torch

from analysis.study_cli import run_study_main
import medseg_platform.engine as engine
from medseg_platform.config import TrialConfig
from medseg_platform.errors import ConfigError
from medseg_platform.study import Study, Variant
from tests.test_engine import quiet, small_cfg as engine_small_cfg

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def small_cfg(root: Path, **overrides) -> TrialConfig:
    """The engine tests' tiny config, 6 steps."""
    return engine_small_cfg(root, **{"optim.max_steps": 6, "eval.val_every": 3, **overrides})


def spy_autocast(monkeypatch, objective_cls):
    """Record the autocast state the objective's loss runs under (device type -> dtype or None)."""
    seen = []
    original = objective_cls.loss

    def loss(self, batch, step, max_steps):
        device = batch.labelled_image.device.type
        seen.append(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        return original(self, batch, step, max_steps)

    monkeypatch.setattr(objective_cls, "loss", loss)
    return seen


@pytest.mark.parametrize("objective", ["supervised", "mean_teacher"])
def test_bf16_autocast_trains_on_cpu_with_finite_losses(tiny_root, tmp_path, monkeypatch, objective):
    from methods.registry import OBJECTIVES

    seen = spy_autocast(monkeypatch, OBJECTIVES[objective])
    cfg = small_cfg(tiny_root, objective=objective, **{"optim.amp": "bf16"})
    outcome = engine.train_trial(cfg, tmp_path / "t", log=quiet, device=torch.device("cpu"))
    assert seen == [torch.bfloat16] * 6  # every step's forward + loss ran under bf16 autocast
    assert len(outcome.curves) == 4 and all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in outcome.curves)
    state = torch.load(tmp_path / "t" / "checkpoint" / "checkpoint.pt", weights_only=True)  # still a plain-tensor checkpoint
    assert state["grad_scaler"] is None  # bf16 needs no loss scaling


def test_amp_off_runs_full_precision(tiny_root, tmp_path, monkeypatch):
    from methods.supervised import SupervisedObjective

    seen = spy_autocast(monkeypatch, SupervisedObjective)
    engine.train_trial(small_cfg(tiny_root, **{"optim.max_steps": 2, "eval.val_every": 2}), tmp_path / "t", log=quiet,
                       device=torch.device("cpu"))
    assert seen == [None, None]


def test_amp_values_are_validated(tiny_root):
    with pytest.raises(ConfigError, match=r"optim.amp 'fp32': choose 'off', 'bf16', 'fp16'"):
        small_cfg(tiny_root, **{"optim.amp": "fp32"}).validate(check_data=False)
    assert engine.autocast_dtype("off", torch.device("cpu")) is None
    assert engine.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_fp16_without_cuda_is_a_config_error_before_training(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "load_training_data", lambda *a: pytest.fail("data read before the amp check"))
    with pytest.raises(ConfigError, match=r"optim.amp 'fp16': needs a CUDA device, but this trial runs on cpu"):
        engine.train_trial(small_cfg(tiny_root, **{"optim.amp": "fp16"}), tmp_path / "t", log=quiet, device=torch.device("cpu"))
    # a study: fp16 trials without a GPU per trial fail before Ray starts
    import medseg_platform.study.runner as study_module

    monkeypatch.setattr(study_module, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    study = Study("fp16", small_cfg(tiny_root, **{"optim.amp": "fp16"}), tmp_path / "results", variants=[Variant({"row": "Sup"})],
                  seeds=[1], dashboard=False)
    with pytest.raises(ConfigError, match=r"fp16' needs a CUDA GPU per trial: pass --gpus-per-trial 1"):
        study.run()


def _build(args, profile, base):
    base = base.replace(**{"data.labelled_batch": 2, "data.unlabelled_batch": 2})
    return Study("gpu", base, Path(args.results_dir), variants=[Variant({"row": "Sup"}, {"objective": "supervised"})])


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-trial", "1"], "error: --gpus-per-trial > 0 but this machine has no CUDA GPU"),
    (["--amp", "fp16"], "error: optim.amp 'fp16' needs a CUDA GPU per trial"),
    (["--amp", "fp16", "--gpus-per-trial", "1"], "error: --gpus-per-trial > 0 but this machine has no CUDA GPU"),
])
def test_gpu_requests_without_a_gpu_fail_before_ray_starts(tiny_root, tmp_path, monkeypatch, capsys, flags, message):
    import ray

    import medseg_platform.study.runner as study_module

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a command line's process: the session's Ray is not its
    monkeypatch.setattr(study_module, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    code = run_study_main("gpu", "gpu", _build, argv=["--smoke-test", "--data-root", str(tiny_root), "--results-dir",
                                                      str(tmp_path / "r"), "--no-dashboard", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(message) and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing written


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains_and_resumes_with_the_scaler_state(tiny_root, tmp_path, amp):
    cfg = small_cfg(tiny_root, objective="mean_teacher", **{"optim.amp": amp})
    straight = engine.train_trial(cfg, tmp_path / "straight", log=quiet, device=torch.device("cuda"))
    assert all(math.isfinite(row["loss"]) for row in straight.curves)
    state = torch.load(tmp_path / "straight" / "checkpoint" / "checkpoint.pt", weights_only=True)
    if amp == "fp16":
        assert isinstance(state["grad_scaler"], dict) and state["grad_scaler"]["scale"] > 0
    else:
        assert state["grad_scaler"] is None

    class Interrupt(Exception):
        pass

    def stop(metrics, ckpt):
        if ckpt is not None:  # the first validation (a progress-only report comes before it)
            raise Interrupt

    with pytest.raises(Interrupt):
        engine.train_trial(cfg, tmp_path / "resumed", report=stop, log=quiet, device=torch.device("cuda"))
    resumed = engine.train_trial(cfg, tmp_path / "resumed", log=quiet, device=torch.device("cuda"))
    assert resumed.resumed_from_step == 3 and len(resumed.curves) == len(straight.curves)
    assert torch.backends.cudnn.benchmark


@needs_cuda
def test_cuda_batches_are_pinned_and_copied_without_blocking(tiny_root):
    cfg = small_cfg(tiny_root, **{"optim.amp": "fp16"})
    device = torch.device("cuda")
    data = engine.load_training_data(cfg, quiet)
    from methods.registry import build_model, build_objective

    objective = build_objective("supervised", build_model("unet", num_classes=4, channels=tuple(cfg.model.channels)), {}).to(device)
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.01)
    loop = engine.TrainLoop(cfg, objective, optimizer, data, torch.Generator().manual_seed(0), device, None, 4, 2, 2, 0.01, 0.9, "test")
    assert loop.pin_memory and loop.scaler is not None and loop.amp_dtype is torch.float16
    moved = loop._to_device(torch.ones(2, 1, 32, 32))
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), torch.ones(2, 1, 32, 32))
    for step in range(4):
        loop.step(step)
    row = loop.curve_row(4)
    assert math.isfinite(row["loss"])


def test_strong_views_are_computed_in_full_precision_inside_an_autocast_region():
    """The objectives call the strong augmentation inside the step's autocast: the views must not change with it."""
    image = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    views = []
    for amp in (False, True):
        adapter = engine.StrongAugmentAdapter(torch.Generator().manual_seed(5), "cutmix", num_classes=4, advmorph_p=1.0)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=amp):
            views.append((adapter.perturb(image), adapter.pretrain_views(image, "per_batch")[1]))
    for full, under_amp in zip(*views):
        assert under_amp.dtype == torch.float32
        assert torch.equal(full, under_amp)


def test_the_equivariance_warp_samples_at_the_same_points_inside_an_autocast_region():
    """MONA/ARCO's L_eqv draws its TPS grid and warps its half-precision targets inside the step's autocast: the grid must
    be the float32 one, and a bfloat16 tensor is read at its points (the GPU-path review: up to 1.2 px and 0.5 px off)."""
    from methods.tps import TPSConfig, apply_warp, sample_tps_grid

    config = TPSConfig(sigma=0.05, rotation_deg=20.0, scale_min=0.8, scale_max=1.2, translation=0.1, mirror_p=0.5)
    full = sample_tps_grid(4, 256, 256, config, generator=torch.Generator().manual_seed(3))
    logits = torch.randn(4, 4, 256, 256, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        grid = sample_tps_grid(4, 256, 256, config, generator=torch.Generator().manual_seed(3))
        warped = apply_warp(logits, grid)
    assert grid.dtype == torch.float32 and torch.equal(grid, full)
    expected = torch.nn.functional.grid_sample(logits.float(), full, padding_mode="zeros", align_corners=True)
    assert warped.dtype == torch.bfloat16 and torch.equal(warped, expected.to(torch.bfloat16))
    image = torch.rand(4, 1, 256, 256, generator=torch.Generator().manual_seed(5))
    assert torch.equal(apply_warp(image, full), torch.nn.functional.grid_sample(image, full, align_corners=True))


def test_the_isd_logits_are_full_precision_inside_an_autocast_region():
    """ISD's global term divides cosines by the teacher's tau 0.01: logits up to ±100, which bfloat16 rounds to steps of
    0.5 (the GPU-path review); they are computed in float32 under autocast, as the local term's were."""
    from methods.isd import cosine_logits

    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    keys = torch.randn(36, 16, generator=torch.Generator().manual_seed(1))
    keys[0] = x[0] * 3.0  # a cosine of 1: a logit of 100
    full = cosine_logits(x, keys, 0.01)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_amp = cosine_logits(x, keys, 0.01)
        half_inputs = cosine_logits(x.to(torch.bfloat16), keys.to(torch.bfloat16), 0.01)
    assert under_amp.dtype == half_inputs.dtype == torch.float32 and torch.equal(under_amp, full)
    assert full[0, 0].item() == pytest.approx(100.0, rel=1e-5)
    assert cosine_logits(x.double(), keys.double(), 0.01).dtype == torch.float64  # float64 tests keep float64


def test_host_to_device_copies_pin_then_copy_without_blocking(monkeypatch):
    """The copy path the CUDA loop takes, checked on CPU with spies: pin first, then ``.to(non_blocking=True)``."""
    from types import SimpleNamespace

    calls = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", k.get("non_blocking"))) or real_to(self, *a, **k))
    loop = SimpleNamespace(pin_memory=True, device=torch.device("cpu"))
    engine.TrainLoop._to_device(loop, torch.ones(2))
    assert calls == ["pin", ("to", True)]
    calls.clear()
    engine.TrainLoop._to_device(SimpleNamespace(pin_memory=False, device=torch.device("cpu")), torch.ones(2))
    assert calls == [("to", True)]  # CPU training: no pinning


def _fp16_anywhere(amp, device):
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def test_an_fp16_trial_whose_updates_the_scaler_skips_every_step_is_an_error_not_a_finished_trial(tiny_root, tmp_path, monkeypatch):
    """With gradients NaN at every step and a finite loss, fp16's scaler skipped every update and halved its scale each
    time, while the trial finished "successfully", untrained, with finite curves (the GPU-path review, fp16 emulated on
    the CPU as here). The curve rows now carry the scale, and a scale below MIN_HEALTHY_AMP_SCALE ends the trial."""
    import medseg_platform.engine.loop as loop_module
    import medseg_platform.engine.trial as trial_module
    from medseg_platform.engine.loop import MIN_HEALTHY_AMP_SCALE, NonFiniteLossError

    monkeypatch.setattr(loop_module, "autocast_dtype", _fp16_anywhere)
    monkeypatch.setattr(trial_module, "autocast_dtype", _fp16_anywhere)
    healthy = engine.train_trial(engine_small_cfg(tiny_root, **{"optim.amp": "fp16", "optim.max_steps": 4}), tmp_path / "ok",
                                 log=quiet, device=torch.device("cpu"))
    assert all(row["amp_scale"] >= MIN_HEALTHY_AMP_SCALE for row in healthy.curves)
    build = trial_module.build_trial_model

    def poisoned(cfg, device):  # every step's gradients NaN, its loss finite
        model = build(cfg, device)
        next(model.parameters()).register_hook(lambda grad: grad * float("nan"))
        return model

    monkeypatch.setattr(trial_module, "build_trial_model", poisoned)
    cfg = engine_small_cfg(tiny_root, **{"optim.amp": "fp16", "optim.max_steps": 40, "eval.val_every": 40, "eval.log_every": 20})
    with pytest.raises(NonFiniteLossError, match=r"step 20: fp16's gradient scale fell to 0.0625, halved 20 times over the last 20 "
                                                 r"steps: the gradients overflowed or were NaN at least that often") as raised:
        engine.train_trial(cfg, tmp_path / "skipped", log=quiet, device=torch.device("cpu"))
    assert raised.value.terms == ("gradients",)
    # rare skips that add up (every 4th step here: the scale ends at 2**-4) are no such failure: most updates were applied
    # (the diff review: the scale alone ended a long run with rare overflows)
    calls = []

    def now_and_then(cfg, device):
        model = build(cfg, device)
        next(model.parameters()).register_hook(lambda grad: grad * float("nan") if len(calls) % 4 == 0 and not calls.append(1)
                                               else calls.append(1) or grad)
        return model

    monkeypatch.setattr(trial_module, "build_trial_model", now_and_then)
    cfg = engine_small_cfg(tiny_root, **{"optim.amp": "fp16", "optim.max_steps": 80, "eval.val_every": 80, "eval.log_every": 20})
    rare = engine.train_trial(cfg, tmp_path / "rare", log=quiet, device=torch.device("cpu"))
    assert [row["amp_scale"] for row in rare.curves] == [2.0 ** 11, 2.0 ** 6, 2.0, 2.0 ** -4]
