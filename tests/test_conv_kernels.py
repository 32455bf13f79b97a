"""The CPU convolution kernels of a trial (``conv_kernels``): the rule of "auto", the switch, and where a trial uses it."""

from pathlib import Path

import pytest
import torch

from medseg_platform.config import TrialConfig
from medseg_platform.engine import train_trial
from medseg_platform.engine.conv_kernels import recorded_conv_kernels, resolve_conv_kernels, trial_conv_kernels, using_conv_kernels
from medseg_platform.errors import ConfigError
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import method_overrides
from medseg_platform.results import trial_key
from methods.unet import UNet

QUARTER, HALF = (4, 8, 16, 32, 64), (8, 16, 32, 64, 128)


@pytest.mark.parametrize("objective, channels, patch, device, amp, expected", [
    ("mona", QUARTER, (48, 48), "cpu", "off", "pytorch"),
    ("arco", QUARTER, (32, 32), "cpu", "off", "pytorch"),
    ("action", QUARTER, (64, 64), "cpu", "off", "pytorch"),
    ("action", QUARTER, (96, 96), "cpu", "off", "onednn"),     # the two even there: the default kernels
    ("mona", HALF, (48, 48), "cpu", "off", "onednn"),          # a first width of 8 fills oneDNN's vectors
    ("mona", QUARTER, (48, 48), "cpu", "bf16", "onednn"),      # measured in float32 only
    ("supervised", QUARTER, (48, 48), "cpu", "off", "onednn"),  # the baselines keep their results
    ("mean_teacher", QUARTER, (48, 48), "cpu", "off", "onednn"),
    ("isd_pretrain", QUARTER, (48, 48), "cpu", "off", "onednn"),
    ("mona", QUARTER, (48, 48), "cuda", "off", "cuda"),          # not a CPU: cuDNN, whatever the choice
])
def test_auto_takes_pytorchs_kernels_only_for_contrastive_fine_tuning_of_a_thin_unet_on_small_patches(
        objective, channels, patch, device, amp, expected):
    assert resolve_conv_kernels("auto", objective, channels, patch, device, amp) == expected


def test_an_explicit_choice_is_taken_as_given_and_anything_else_is_an_error():
    assert resolve_conv_kernels("onednn", "mona", QUARTER, (48, 48)) == "onednn"
    assert resolve_conv_kernels("pytorch", "supervised", (16, 32, 64, 128, 256), (256, 256)) == "pytorch"
    with pytest.raises(ConfigError, match="conv_kernels 'fast'"):
        resolve_conv_kernels("fast", "mona", QUARTER, (48, 48))
    with pytest.raises(ConfigError, match="conv_kernels 'fast'.*'auto', 'onednn', 'pytorch'"):
        TrialConfig(conv_kernels="fast").validate(check_data=False)


def test_the_profiles_resolve_as_measured():
    def kernels(profile: str, method: str) -> str:
        base = PROFILES[profile].trial
        return trial_conv_kernels(base.replace(objective=method_overrides(method, PROFILES[profile])["objective"]), "cpu")

    assert [kernels("quick", m) for m in ("supervised", "mean_teacher", "mona", "arco_sg", "action")] == \
        ["onednn", "onednn", "pytorch", "pytorch", "pytorch"]
    assert kernels("smoke", "action") == "pytorch"
    assert [kernels("paper", m) for m in ("mona", "action")] == ["onednn", "onednn"]


def test_a_finished_trial_is_run_again_with_the_kernels_it_recorded():
    quick_mona = PROFILES["quick"].trial.replace(objective="mona")
    assert recorded_conv_kernels({"conv_kernels": "pytorch"}, quick_mona.replace(conv_kernels="onednn"), "cpu") == "pytorch"
    assert recorded_conv_kernels({}, quick_mona, "cpu") == "onednn"  # finished before the field: it ran oneDNN's
    assert recorded_conv_kernels({"conv_kernels": "cuda"}, quick_mona, "cpu") == "pytorch"  # trained elsewhere: the rule


def _convolution_ops(kernels: str) -> tuple[set[str], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net, image = UNet(channels=QUARTER), torch.randn(2, 1, 32, 32)
    with using_conv_kernels(kernels), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        logits = net(image).logits
        logits.square().sum().backward()
    names = {e.key for e in prof.key_averages() if "conv" in e.key}
    return names, logits.detach(), net.encoder[0][0].weight.grad


def test_the_switch_changes_the_kernels_not_the_convolutions_and_restores_the_setting():
    assert torch.backends.mkldnn.enabled
    onednn_ops, onednn_logits, onednn_grad = _convolution_ops("onednn")
    pytorch_ops, pytorch_logits, pytorch_grad = _convolution_ops("pytorch")
    assert torch.backends.mkldnn.enabled  # restored
    assert "aten::mkldnn_convolution" in onednn_ops
    assert not any("mkldnn" in name for name in pytorch_ops) and pytorch_ops  # PyTorch's own kernels ran instead
    torch.testing.assert_close(pytorch_logits, onednn_logits, rtol=1e-4, atol=1e-5)  # float rounding apart
    torch.testing.assert_close(pytorch_grad, onednn_grad, rtol=1e-3, atol=1e-4)
    with pytest.raises(RuntimeError, match="inside"):
        with using_conv_kernels("pytorch"):
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled  # restored after an error too


def test_auto_keeps_the_trial_key_it_had_before_the_option_existed():
    config = PROFILES["quick"].trial.replace(objective="mona").to_dict()
    assert config["conv_kernels"] == "auto"
    without = {k: v for k, v in config.items() if k != "conv_kernels"}
    assert trial_key(config) == trial_key(without)
    assert trial_key({**config, "conv_kernels": "onednn"}) != trial_key(config)


def test_a_trial_runs_its_stages_on_onednn_and_its_fine_tuning_on_its_kernels(tiny_root: Path, tmp_path, monkeypatch):
    from medseg_platform.engine import pretrain, trial

    stage = {"objective": "supervised", "max_steps": 2, "checkpoint_every": 2, "labelled_batch": 2, "unlabelled_batch": 0}
    cfg = TrialConfig.from_dict({
        "data.root": str(tiny_root), "data.patch_size": [32, 32], "data.labelled": "2", "data.labelled_batch": 2,
        "data.unlabelled_batch": 2, "model.channels": list(QUARTER), "optim.max_steps": 2, "eval.val_every": 2,
        "eval.log_every": 2, "seed": 3, "conv_kernels": "pytorch", "pretrain": [stage]})
    onednn_at_build = []

    def spy(module):
        original = module.build_objective

        def build(name, model, params):
            onednn_at_build.append((module.__name__.rsplit(".", 1)[-1], torch.backends.mkldnn.enabled))
            return original(name, model, params)
        monkeypatch.setattr(module, "build_objective", build)

    spy(pretrain)
    spy(trial)
    outcome = train_trial(cfg, tmp_path / "t", log=lambda _msg: None, pretrain_cache=tmp_path / "cache")
    assert onednn_at_build == [("pretrain", True), ("trial", False)]
    assert outcome.extra["conv_kernels"] == "pytorch"
    assert torch.backends.mkldnn.enabled  # the process's setting is back
