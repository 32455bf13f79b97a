"""Representation heads on the UNet pyramid (docs/mona.md, 'Modules'; docs/action.md, 'Representation head')."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.heads import ActionProjectionHead, LinearPredictor, MonaFeatureExtractor
from methods.unet import UNet


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _eye_conv(conv, scale=1.0):
    """Set a 1x1 (or the centre tap of a 3x3) convolution to scale * identity (zero bias)."""
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.weight.shape[-1] // 2
        for i in range(min(conv.weight.shape[0], conv.weight.shape[1])):
            conv.weight[i, i, k, k] = scale
        if conv.bias is not None:
            conv.bias.zero_()


@pytest.mark.parametrize("channels,size", [((4, 8, 8, 8, 8), (32, 32)), ((4, 8, 16, 32, 64), (32, 48))])
def test_head_shapes_on_unet_pyramid(channels, size):
    torch.manual_seed(0)
    unet = UNet(channels=channels)
    pyramid = unet(torch.rand(2, 1, *size)).pyramid
    total = sum(unet.pyramid_channels)
    fe = MonaFeatureExtractor(unet.pyramid_channels)
    r = fe(pyramid)
    assert r.shape == (2, total, *size)
    assert LinearPredictor(total)(r).shape == (2, total, *size)
    assert MonaFeatureExtractor(unet.pyramid_channels, out_channels=7)(pyramid).shape == (2, 7, *size)
    head = ActionProjectionHead(unet.pyramid_channels, out_channels=12)
    assert head(pyramid).shape == (2, 12, *size)
    assert head(pyramid, size=(16, 16)).shape == (2, 12, 16, 16)
    assert ActionProjectionHead(unet.pyramid_channels).out_channels == 512


def test_feature_extractor_structure_default_widths():
    fe = MonaFeatureExtractor((256, 128, 64, 32, 16))
    assert [tuple(c.weight.shape[:2]) for c in fe.residual] == [(256, 256), (384, 384), (448, 448), (480, 480)]
    assert tuple(fe.project.weight.shape) == (496, 496, 1, 1)
    assert all(m.bias is None for m in fe.modules() if isinstance(m, torch.nn.Conv2d))


def test_feature_extractor_hand_computed_order_and_residuals():
    torch.manual_seed(1)
    fe = MonaFeatureExtractor((2, 1, 1))
    _eye_conv(fe.residual[0], 2.0)   # a0 = p0 + 2 p0 = 3 p0
    _eye_conv(fe.residual[1], 1.0)   # a1 = a + a = 2 [up(a0), p1]
    _eye_conv(fe.project, 1.0)       # r = [up(a1), p2]
    p0, p1, p2 = torch.randn(1, 2, 2, 2), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8)
    expected = torch.cat([_up(2 * torch.cat([_up(3 * p0, (4, 4)), p1], 1), (8, 8)), p2], 1)
    assert torch.allclose(fe([p0, p1, p2]), expected, atol=1e-6)
    # linear: FE(x + y) = FE(x) + FE(y) with random weights
    fe2 = MonaFeatureExtractor((2, 1, 1))
    q = [torch.randn_like(p) for p in (p0, p1, p2)]
    both = fe2([a + b for a, b in zip((p0, p1, p2), q)])
    assert torch.allclose(both, fe2([p0, p1, p2]) + fe2(q), atol=1e-5)


def test_linear_predictor_is_linear_and_bias_free():
    torch.manual_seed(2)
    pred = LinearPredictor(6)
    assert len(pred) == 2 and all(c.bias is None and c.kernel_size == (1, 1) for c in pred)
    x, y = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    assert torch.allclose(pred(x + y), pred(x) + pred(y), atol=1e-5)
    assert torch.allclose(pred(-x), -pred(x), atol=1e-6)  # no ReLU in between
    with pytest.raises(ValueError, match="dim"):
        LinearPredictor(0)


def test_action_head_hand_computed_concat_order():
    head = ActionProjectionHead((2, 1, 1), out_channels=4)
    assert head.project[0].bias is None and head.project[0].kernel_size == (3, 3)
    assert head.project[1].bias is not None and head.project[1].kernel_size == (1, 1)
    _eye_conv(head.project[0])
    _eye_conv(head.project[1])
    with torch.no_grad():
        head.project[1].bias[3] = 0.5  # bias shows up in output channel 3 only
    p0, p1, p2 = torch.randn(1, 2, 2, 2), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8)
    out = head([p0, p1, p2])
    expected = torch.cat([_up(p0, (8, 8)), _up(p1, (8, 8)), p2], 1)
    assert torch.allclose(out, expected + torch.tensor([0, 0, 0, 0.5]).view(1, 4, 1, 1), atol=1e-6)


def test_gradient_flows_through_heads_into_unet():
    torch.manual_seed(3)
    unet = UNet(channels=(4, 8, 8, 8, 8))
    fe = MonaFeatureExtractor(unet.pyramid_channels)
    pred = LinearPredictor(sum(unet.pyramid_channels))
    action = ActionProjectionHead(unet.pyramid_channels, out_channels=8)
    pyramid = unet(torch.rand(2, 1, 32, 32)).pyramid
    loss = pred(fe(pyramid)).square().mean() + action(pyramid).square().mean()
    loss.backward()
    for module in (fe, pred, action):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert unet.encoder[0][0].weight.grad.abs().sum() > 0


def test_heads_validate_inputs():
    with pytest.raises(ValueError, match="pyramid_channels"):
        MonaFeatureExtractor((16,))
    with pytest.raises(ValueError, match="pyramid_channels"):
        ActionProjectionHead((16, 0))
    with pytest.raises(ValueError, match="out_channels"):
        ActionProjectionHead((16, 8), out_channels=0)
    fe = MonaFeatureExtractor((4, 2))
    with pytest.raises(ValueError, match="expected 2 maps"):
        fe([torch.randn(1, 4, 2, 2), torch.randn(1, 3, 4, 4)])
    with pytest.raises(ValueError, match="expected 2 maps"):
        fe([torch.randn(1, 4, 2, 2)])
