"""Random TPS warps of MONA/ARCO's L_eqv (methods/tps.py; docs/mona.md, 'TPS warp')."""

from __future__ import annotations

import pytest
import torch

from methods.tps import TPSConfig, apply_warp, control_points, identity_grid, sample_tps_grid, tps_displacement

IDENTITY = TPSConfig(sigma=0.0, rotation_deg=0.0, scale_min=1.0, scale_max=1.0, translation=0.0, mirror_p=0.0)


def ramp(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W): channel 0 = normalised x, channel 1 = normalised y (bilinear sampling is exact on it)."""
    return identity_grid(height, width).permute(2, 0, 1)[None]


def test_identity_warp_is_exact():
    grid = sample_tps_grid(3, 16, 12, IDENTITY, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (3, 16, 12, 2)
    assert torch.equal(grid, identity_grid(16, 12).expand(3, -1, -1, -1))
    image = torch.rand(3, 2, 16, 12, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(apply_warp(image, grid), image, atol=1e-6)


def test_tps_interpolates_control_offsets_and_zero_offsets_give_zero_field():
    offsets = torch.randn(2, 9, 2, generator=torch.Generator().manual_seed(0)) * 0.05
    # with a 3x3 output grid, the pixels are exactly the control points: f(c_i) - c_i = offsets_i
    field = tps_displacement(offsets, 3, 3)
    assert torch.allclose(field.reshape(2, 9, 2), offsets, atol=1e-6)
    assert torch.equal(tps_displacement(torch.zeros(2, 25, 2), 7, 5), torch.zeros(2, 7, 5, 2))
    # a uniform offset of every control point is a pure translation everywhere
    shifted = tps_displacement(torch.tensor([[0.1, -0.2]]).expand(1, 16, 2).contiguous(), 6, 6)
    assert torch.allclose(shifted, torch.tensor([0.1, -0.2]).expand(1, 6, 6, 2), atol=1e-6)
    assert control_points(3).shape == (9, 2)


def test_scale_mirror_and_translation_act_as_specified():
    image = ramp(9, 9)
    # target->source scale ~ U(1/scale_max, 1/scale_min) = 1/2 exactly: warped(x) = x / 2
    half = TPSConfig(sigma=0.0, rotation_deg=0.0, scale_min=2.0, scale_max=2.0, translation=0.0, mirror_p=0.0)
    out = apply_warp(image, sample_tps_grid(1, 9, 9, half))
    assert torch.allclose(out, image / 2, atol=1e-6)
    # mirror with probability 1: a horizontal flip (x -> -x), y unchanged
    mirror = TPSConfig(sigma=0.0, rotation_deg=0.0, scale_min=1.0, scale_max=1.0, translation=0.0, mirror_p=1.0)
    out = apply_warp(image, sample_tps_grid(1, 9, 9, mirror))
    assert torch.allclose(out, torch.flip(image, dims=[3]), atol=1e-6)
    assert torch.allclose(out[0, 0], -image[0, 0], atol=1e-6)
    # translation: the source is shifted by t in (-0.1, 0.1); away from the border warped = ramp + t
    shift = TPSConfig(sigma=0.0, rotation_deg=0.0, scale_min=1.0, scale_max=1.0, translation=0.1, mirror_p=0.0)
    grid = sample_tps_grid(1, 9, 9, shift, generator=torch.Generator().manual_seed(3))
    t = grid[0, 4, 4]
    assert 0 < t.abs().max() <= 0.1
    out = apply_warp(image, grid)
    assert torch.allclose(out[0, :, 2:7, 2:7], image[0, :, 2:7, 2:7] + t[:, None, None], atol=1e-6)


def test_rotation_stays_in_range_and_preserves_radius():
    cfg = TPSConfig(sigma=0.0, rotation_deg=60.0, scale_min=1.0, scale_max=1.0, translation=0.0, mirror_p=0.0)
    grid = sample_tps_grid(64, 5, 5, cfg, generator=torch.Generator().manual_seed(0))
    corner = grid[:, -1, -1]  # the target corner (1, 1) rotated by theta
    angle = torch.atan2(corner[:, 1], corner[:, 0]) - torch.pi / 4
    assert torch.allclose(corner.norm(dim=-1), torch.full((64,), 2 ** 0.5), atol=1e-5)
    assert angle.abs().max() <= torch.pi / 3 + 1e-5 and angle.abs().max() > torch.pi / 6


def test_default_warp_shapes_seed_reproducibility_and_zero_padding():
    image = torch.rand(4, 3, 32, 32)
    grid_a = sample_tps_grid(4, 32, 32, generator=torch.Generator().manual_seed(7))
    grid_b = sample_tps_grid(4, 32, 32, generator=torch.Generator().manual_seed(7))
    grid_c = sample_tps_grid(4, 32, 32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(grid_a, grid_b) and not torch.allclose(grid_a, grid_c)
    warped = apply_warp(image, grid_a)
    assert warped.shape == image.shape and warped.dtype == image.dtype
    assert not torch.allclose(warped, image)
    # per-image warps differ, and sampling outside [-1, 1] gives zeros
    assert not torch.allclose(grid_a[0], grid_a[1])
    outside = torch.full((1, 4, 4, 2), 3.0)
    assert torch.equal(apply_warp(torch.ones(1, 1, 8, 8), outside), torch.zeros(1, 1, 4, 4))
    # the global RNG path works too
    torch.manual_seed(0)
    assert sample_tps_grid(2, 8, 8).shape == (2, 8, 8, 2)


@pytest.mark.parametrize("field, value", [
    ("sigma", -0.1), ("rotation_deg", 200.0), ("scale_min", 0.0), ("translation", -1.0), ("mirror_p", 1.5), ("grid_points", 1),
])
def test_invalid_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TPSConfig.{field}"):
        TPSConfig(**{field: value})
    with pytest.raises(ValueError, match="scale_min must be <="):
        TPSConfig(scale_min=1.3, scale_max=1.2)
