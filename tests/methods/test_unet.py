"""UNet (docs/shared.md, 'UNet backbone') and EMA teacher (docs/shared.md, 'EMA teacher')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.ema import EMATeacher
from methods.errors import ConfigError
from methods.unet import DEFAULT_DROPOUT, UNet, UNetOutput

TINY = (4, 8, 8, 8, 8)


@pytest.mark.parametrize("channels", [(4, 8, 16, 32, 64), (8, 16, 32, 64, 128)])
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_output_shapes(channels, size):
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=4, channels=channels)
    h, w = size
    out = model(torch.rand(2, 1, h, w))
    assert isinstance(out, UNetOutput)
    assert out.logits.shape == (2, 4, h, w)
    assert out.bottleneck.shape == (2, channels[4], h // 16, w // 16)
    expected = [(2, channels[4 - i], h // 2 ** (4 - i), w // 2 ** (4 - i)) for i in range(5)]
    assert [tuple(t.shape) for t in out.pyramid] == expected
    assert out.pyramid[0] is out.bottleneck
    assert model.pyramid_channels == tuple(reversed(channels))


def test_default_widths_match_released_network():
    model = UNet()
    assert model.channels == (16, 32, 64, 128, 256)
    assert sum(model.pyramid_channels) == 496  # the pyramid feeding every head
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (3, 3) and model.head.out_channels == 4
    # the released up-path: conv1x1 (with bias) to the skip's channels, then bilinear x2 with align_corners=True (its
    # UpBlock's default: the released UNet never passes its 'bilinear': False on; a fidelity review found the
    # ConvTranspose2d that setting names, which the platform used before)
    ups = [block.up for block in model.decoder]
    for up, skip in zip(ups, (128, 64, 32, 16)):
        conv, upsample = up
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None and conv.out_channels == skip
        assert isinstance(upsample, nn.Upsample) and upsample.mode == "bilinear" and upsample.align_corners and upsample.scale_factor == 2
    assert sum(p.numel() for p in model.parameters()) == 1_813_764  # the released network's count at 4 classes
    transposed = UNet(upsample="transposed")
    assert all(isinstance(block.up, nn.ConvTranspose2d) and block.up.kernel_size == (2, 2) for block in transposed.decoder)
    assert sum(p.numel() for p in transposed.parameters()) == 1_944_324


def test_the_released_up_path_is_a_pointwise_convolution_then_bilinear_upsampling():
    model = UNet(channels=TINY).eval()
    block = model.decoder[0]
    x = torch.randn(2, TINY[4], 3, 5)
    conv = block.up[0]
    expected = nn.functional.interpolate(nn.functional.conv2d(x, conv.weight, conv.bias), scale_factor=2, mode="bilinear",
                                         align_corners=True)
    torch.testing.assert_close(block.up(x), expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="UNet.upsample"):
        UNet(upsample="nearest")


def test_dropout_per_encoder_level_and_none_in_decoder():
    model = UNet(channels=TINY)
    per_level = [[m.p for m in block.modules() if isinstance(m, nn.Dropout)] for block in model.encoder]
    assert per_level == [[p] for p in DEFAULT_DROPOUT]
    assert not any(isinstance(m, nn.Dropout) for m in model.decoder.modules())
    custom = UNet(channels=TINY, dropout=(0.0, 0.1, 0.0, 0.2, 0.3))
    assert [[m.p for m in b.modules() if isinstance(m, nn.Dropout)] for b in custom.encoder] == [[], [0.1], [], [0.2], [0.3]]


def test_leaky_relu_slope_and_dropout_active_only_in_train():
    model = UNet(channels=TINY)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}
    x = torch.rand(2, 1, 16, 16)
    model.train()  # the released dropout draws a new mask each pass (a dropout that never dropped passed; the tests review)
    with torch.no_grad():
        torch.manual_seed(0)
        first = model(x).logits
        torch.manual_seed(1)
        assert not torch.equal(first, model(x).logits)
        torch.manual_seed(0)
        assert torch.equal(first, model(x).logits)
        without = UNet(channels=TINY, dropout=(0.0,) * 5).train()
        assert torch.equal(without(x).logits, without(x).logits)  # only dropout draws: BatchNorm uses batch statistics
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_in_place_leaky_relu_trains_exactly_like_the_released_out_of_place_one():
    """The LeakyReLUs run in place (one activation fewer kept for backward per convolution): outputs, every
    gradient and the BatchNorm running statistics equal the released ``nn.LeakyReLU()``'s bit for bit."""
    import copy

    torch.manual_seed(0)
    fast = UNet(channels=(4, 8, 16, 32, 64))
    assert all(m.inplace for m in fast.modules() if isinstance(m, nn.LeakyReLU))
    released = copy.deepcopy(fast)
    for module in released.modules():
        if isinstance(module, nn.LeakyReLU):
            module.inplace = False
    x = torch.randn(3, 1, 48, 48)
    outputs = []
    for model in (released, fast):
        torch.manual_seed(5)  # dropout
        out = model(x)
        (out.logits.square().mean() + sum(level.square().mean() for level in out.pyramid)).backward()
        outputs.append((out, [p.grad for p in model.parameters()], list(model.buffers())))
    (a, grads_a, buffers_a), (b, grads_b, buffers_b) = outputs
    assert torch.equal(a.logits, b.logits) and all(torch.equal(p, q) for p, q in zip(a.pyramid, b.pyramid))
    assert all(torch.equal(p, q) for p, q in zip(grads_a, grads_b))
    assert all(torch.equal(p, q) for p, q in zip(buffers_a, buffers_b))


@pytest.mark.parametrize("size", [(30, 32), (32, 40), (8, 8)])
def test_sizes_not_divisible_by_16_rejected(size):
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(channels=TINY)(torch.rand(1, 1, *size))


def test_wrong_input_channels_rejected():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNet(channels=TINY)(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"channels": (4, 8, 8, 8)}, "channels"), ({"channels": (4, 8, 0, 8, 8)}, "channels"),
     ({"dropout": (0.1, 0.1, 0.1, 0.1, 1.0)}, "dropout"), ({"num_classes": 1}, "num_classes"),
     ({"in_channels": 0}, "in_channels")],
)
def test_invalid_construction_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        UNet(**kwargs)


# ---------------------------------------------------------------- EMA teacher


def _perturbed_student(seed=0):
    torch.manual_seed(seed)
    student = UNet(channels=TINY)
    teacher = EMATeacher(student, momentum=0.9)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    return student, teacher


def test_ema_teacher_is_frozen_copy():
    student = UNet(channels=TINY)
    teacher = EMATeacher(student)
    assert teacher.momentum == 0.99
    assert teacher.module is not student
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for a, b in zip(teacher.module.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_update_matches_formula():
    student, teacher = _perturbed_student()
    before = [p.clone() for p in teacher.module.parameters()]
    teacher.update(student)
    for t_new, t_old, s in zip(teacher.module.parameters(), before, student.parameters()):
        expected = 0.9 * t_old + 0.1 * s.detach()
        assert torch.allclose(t_new, expected, atol=1e-6, rtol=1e-6)
        assert not torch.equal(t_new, t_old)
    # teacher stays out of autograd; student unchanged
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())


def test_ema_momentum_zero_copies_student():
    student, _ = _perturbed_student()
    teacher = EMATeacher(UNet(channels=TINY), momentum=0.0)
    teacher.update(student)
    for t, s in zip(teacher.module.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_ema_buffers_untouched_by_default_and_copied_on_request():
    torch.manual_seed(0)
    student = UNet(channels=TINY)
    own = EMATeacher(student)
    copying = EMATeacher(student, copy_buffers=True)
    initial = [b.clone() for b in own.module.buffers()]
    student.train()
    student(torch.rand(2, 1, 16, 16) * 5 + 3)  # moves BN running stats
    assert not all(torch.equal(a, b) for a, b in zip(student.buffers(), initial))
    own.update(student)
    copying.update(student)
    for b, b0 in zip(own.module.buffers(), initial):
        assert torch.equal(b, b0)
    for b, bs in zip(copying.module.buffers(), student.buffers()):
        assert torch.equal(b, bs)


def test_ema_predict_sets_mode_without_grad():
    student = UNet(channels=TINY)
    teacher = EMATeacher(student)
    x = torch.rand(2, 1, 16, 16)
    out = teacher.predict(x, "train")
    assert teacher.module.training and not out.logits.requires_grad
    running = teacher.module.encoder[0][1].running_mean.clone()
    a, b = teacher.predict(x, "eval").logits, teacher.predict(x, "eval").logits
    assert not teacher.module.training and torch.equal(a, b)
    assert torch.equal(teacher.module.encoder[0][1].running_mean, running)
    with pytest.raises(ValueError, match="bn_mode"):
        teacher.predict(x, "frozen")


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, True, "0.99"])
def test_ema_invalid_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(nn.Linear(2, 2), momentum=momentum)
