"""Tests for medseg_platform.data.advmorph (docs/data.md, 'AdvMorph warp')."""

import pytest
import torch
import torch.nn.functional as F

from medseg_platform.data import advmorph as M


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(b: int = 4, size: int = 64) -> torch.Tensor:
    """Smooth images in [0, 1] with distinct per-image patterns (so a warp visibly changes them)."""
    y = torch.linspace(0, 1, size).view(1, 1, size, 1)
    x = torch.linspace(0, 1, size).view(1, 1, 1, size)
    k = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1)
    return 0.5 + 0.5 * torch.sin(6.28 * k * x) * torch.cos(6.28 * (k + 1) * y)


def pixel_displacement(grid: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 2) grid -> displacement from the identity in pixels (align_corners=True units)."""
    _, h, w, _ = grid.shape
    scale = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=grid.dtype)
    return (grid - M.identity_grid(h, w, dtype=grid.dtype)) * scale


def jacobian_det(grid: torch.Tensor) -> torch.Tensor:
    """Forward-difference Jacobian determinant of the map pixel -> source pixel: (B, H-1, W-1)."""
    _, h, w, _ = grid.shape
    g = grid * torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=grid.dtype)
    dx_dc = g[:, :-1, 1:, 0] - g[:, :-1, :-1, 0]
    dy_dc = g[:, :-1, 1:, 1] - g[:, :-1, :-1, 1]
    dx_dr = g[:, 1:, :-1, 0] - g[:, :-1, :-1, 0]
    dy_dr = g[:, 1:, :-1, 1] - g[:, :-1, :-1, 1]
    return dx_dc * dy_dr - dx_dr * dy_dc


def unclamped_stencil(grid: torch.Tensor) -> torch.Tensor:
    """(B, H-1, W-1) mask of forward-difference stencils whose three points were not clamped to +-1."""
    inside = (grid.abs() < 1).all(-1)
    return inside[:, :-1, :-1] & inside[:, 1:, :-1] & inside[:, :-1, 1:]


# ------------------------------------------------------------------------------------------ p and draws


def test_p0_returns_identical_copy_and_draws_documented_count():
    x = smooth_image(4, 64)
    before = x.clone()
    g = gen(3)
    out = M.random_diffeomorphic_warp(x, g, p=0.0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)
    # exactly 1 + B * 2 * h * w values were drawn (h = w = 64 // 8)
    ref = gen(3)
    torch.rand(1 + 4 * 2 * 8 * 8, generator=ref)
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=ref))


def test_draw_count_does_not_depend_on_firing():
    x = smooth_image(2, 32)
    g0, g1 = gen(5), gen(5)
    M.random_diffeomorphic_warp(x, g0, p=0.0)
    M.random_diffeomorphic_warp(x, g1, p=1.0)
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))


def test_one_decision_per_batch():
    x = smooth_image(4, 32)
    fired = []
    for seed in range(40):
        out = M.random_diffeomorphic_warp(x, gen(seed), p=0.5)
        changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-4
        assert bool(changed.all()) or not bool(changed.any())  # all images or none
        fired.append(bool(changed.all()))
    assert 8 <= sum(fired) <= 32  # p = 0.5 over 40 seeds


def test_warp_matches_grid_helper():
    """The warp is grid_sample with the helper's grid drawn after the one decision value."""
    x = smooth_image(3, 48)
    out = M.random_diffeomorphic_warp(x, gen(11), p=1.0)
    g = gen(11)
    torch.rand((), generator=g)
    grid = M.diffeomorphic_grid(3, 48, 48, g)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ geometry


def test_p1_changes_image_but_displacement_is_small():
    x = smooth_image(4, 64)
    out = M.random_diffeomorphic_warp(x, gen(0), p=1.0)
    diff = (out - x).abs().mean(dim=(1, 2, 3))
    assert (diff > 1e-3).all()
    assert (diff < 0.15).all()
    d = pixel_displacement(M.diffeomorphic_grid(16, 64, 64, gen(0)))
    mean_abs = d.abs().mean().item()
    assert 0.3 < mean_abs < 3.0  # ~1 px for the released epsilon = 1.5 (module docstring)
    assert d.abs().max().item() < 12.0


def test_displacement_in_pixels_is_roughly_resolution_independent():
    small = pixel_displacement(M.diffeomorphic_grid(8, 64, 64, gen(1))).abs().mean().item()
    large = pixel_displacement(M.diffeomorphic_grid(8, 128, 128, gen(1))).abs().mean().item()
    assert 0.5 < large / small < 2.0


def test_epsilon_scales_displacement_and_zero_is_identity():
    grid0 = M.diffeomorphic_grid(2, 32, 40, gen(2), epsilon=0.0)
    # (the identity read at its own positions, as released: float32 rounding of grid_sample's coordinates)
    torch.testing.assert_close(grid0, M.identity_grid(32, 40).expand(2, -1, -1, -1), atol=5e-5, rtol=0)
    x = smooth_image(2, 32)
    out0 = M.random_diffeomorphic_warp(x, gen(2), p=1.0, epsilon=0.0)
    torch.testing.assert_close(out0, x, atol=1e-4, rtol=0)
    a = pixel_displacement(M.diffeomorphic_grid(4, 64, 64, gen(2), epsilon=0.5)).abs().mean()
    b = pixel_displacement(M.diffeomorphic_grid(4, 64, 64, gen(2), epsilon=1.0)).abs().mean()
    assert 1.8 < (b / a).item() < 2.2  # nearly linear in epsilon for small fields


def test_jacobian_positive_almost_everywhere():
    grid = M.diffeomorphic_grid(8, 64, 64, gen(4))
    det = jacobian_det(grid)
    mask = unclamped_stencil(grid)
    assert mask.float().mean() > 0.85  # clamping only touches a thin border
    assert (det[mask] > 0).float().mean() > 0.99
    # the clamp flattens the map at the border (det ~ 0 there), not in the interior
    assert (det > 0).float().mean() > 0.9


def test_scaling_and_squaring_prevents_folding_for_large_fields():
    kwargs = dict(epsilon=15.0)
    once = M.diffeomorphic_grid(4, 64, 64, gen(6), steps=1, **kwargs)
    grid = M.diffeomorphic_grid(4, 64, 64, gen(6), steps=8, **kwargs)
    folded_once = (jacobian_det(once)[unclamped_stencil(once)] <= 0).float().mean()
    folded = (jacobian_det(grid)[unclamped_stencil(grid)] <= 0).float().mean()
    assert folded_once > 0.05  # one squaring of the large field folds
    assert folded < 0.02 and folded < folded_once / 4  # eight fold (almost) nowhere


def _released_grid(velocity: torch.Tensor, height: int, width: int, epsilon: float = 1.5, steps: int = 8) -> torch.Tensor:
    """The released ``DemonsCompose`` as its description in docs/data.md ('AdvMorph warp') reads, written another way
    (a 7 x 7 two-dimensional kernel, an identity built with ``torch.linspace``), float64."""
    b = velocity.shape[0]
    taps = torch.arange(7, dtype=torch.float64) - 3
    kernel = torch.exp(-(taps.view(-1, 1) ** 2 + taps.view(1, -1) ** 2) / 2.0)
    kernel = (kernel / kernel.sum()).view(1, 1, 7, 7).repeat(2, 1, 1, 1)

    def smooth(field):  # a depthwise convolution, zero padding
        return F.conv2d(field, kernel, padding=3, groups=2)

    def identity(h, w):
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64),
                                    indexing="ij")
        return torch.stack([cols, rows]).unsqueeze(0).repeat(b, 1, 1, 1)

    def compose(field, at):
        return F.grid_sample(field, at.permute(0, 2, 3, 1), padding_mode="border", align_corners=True)

    v = velocity / velocity.reshape(b, -1).norm(dim=1).view(b, 1, 1, 1) * epsilon
    v = F.interpolate(smooth(v), size=(height, width), mode="bilinear", align_corners=False)
    base = identity(height, width)
    scaled = base + v / 2 ** steps  # the released grid, moved in place by the first step
    phi = scaled
    for _ in range(steps):
        phi = compose(phi, phi)
    offsets = phi - scaled
    composed = compose(base, offsets + base)
    composed = smooth(composed - base) + base
    return composed.clamp(-1, 1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("size", [(64, 64), (48, 40)])
def test_the_warp_is_the_released_demons_compose(size):
    """A data-pipeline review found the warp's conventions were the platform's own (replicate padding, corner-aligned
    upsampling, the displacement smoothed before the clamp); they are the release's now."""
    h, w = size
    velocity = torch.rand((3, 2, h // 8, w // 8), generator=gen(11), dtype=torch.float32) * 2.0 - 1.0
    ours = M.diffeomorphic_grid(3, h, w, gen(11), dtype=torch.float64)
    torch.testing.assert_close(ours, _released_grid(velocity.double(), h, w), atol=1e-9, rtol=0)


def test_grid_is_in_range_and_has_expected_layout():
    grid = M.diffeomorphic_grid(2, 24, 40, gen(7), dtype=torch.float64)
    assert grid.shape == (2, 24, 40, 2) and grid.dtype == torch.float64
    assert grid.abs().max() <= 1.0
    # channel 0 follows the columns, channel 1 the rows
    assert (grid[:, :, -1, 0] > grid[:, :, 0, 0]).all()
    assert (grid[:, -1, :, 1] > grid[:, 0, :, 1]).all()


# ------------------------------------------------------------------------------------------ values


def test_constant_image_stays_constant_everywhere():
    x = torch.full((3, 2, 64, 64), 0.7)
    out = M.random_diffeomorphic_warp(x, gen(8), p=1.0, epsilon=5.0)
    # the grid is clamped to the corner-pixel centres (align_corners=True): zero padding is never reached
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_values_stay_in_input_range_and_input_untouched():
    x = torch.rand(4, 1, 64, 64, generator=gen(9))
    before = x.clone()
    out = M.random_diffeomorphic_warp(x, gen(10), p=1.0, epsilon=5.0)
    assert torch.equal(x, before)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    assert ((out >= lo) & (out <= hi)).all()
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_reproduces_and_other_seed_differs():
    x = smooth_image(4, 64)
    a = M.random_diffeomorphic_warp(x, gen(12), p=1.0)
    b = M.random_diffeomorphic_warp(x, gen(12), p=1.0)
    c = M.random_diffeomorphic_warp(x, gen(13), p=1.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)


def test_images_in_a_batch_get_different_fields():
    grid = M.diffeomorphic_grid(2, 32, 32, gen(14))
    assert not torch.allclose(grid[0], grid[1], atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shape_dtype_device_preserved(dtype):
    x = smooth_image(2, 32).repeat(1, 3, 1, 1)[:, :, :, :30].to(dtype)
    out = M.random_diffeomorphic_warp(x, gen(15), p=1.0)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert not torch.equal(out, x)


def test_tiny_image_smaller_than_grid_factor():
    x = smooth_image(2, 6)
    out = M.random_diffeomorphic_warp(x, gen(16), p=1.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert M.coarse_field_size(6, 20, 8) == (1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = smooth_image(2, 64)
    cpu = M.random_diffeomorphic_warp(x, gen(17), p=1.0)
    gpu = M.random_diffeomorphic_warp(x.cuda(), gen(17), p=1.0)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=1.5), "p must be a probability"),
        (dict(p=-0.1), "p must be a probability"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(epsilon=float("nan")), "epsilon"),
        (dict(sigma=-0.5), "sigma"),
        (dict(kernel_size=6), "kernel_size"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(steps=-1), "steps"),
        (dict(steps=2.0), "steps"),
        (dict(grid_factor=0), "grid_factor"),
    ],
)
def test_invalid_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"random_diffeomorphic_warp: {match}"):
        M.random_diffeomorphic_warp(smooth_image(1, 16), gen(), **kwargs)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="must be 4-D"):
        M.random_diffeomorphic_warp(torch.zeros(16, 16), gen())
    with pytest.raises(ValueError, match="floating"):
        M.random_diffeomorphic_warp(torch.zeros(1, 1, 16, 16, dtype=torch.long), gen())
    with pytest.raises(ValueError, match="torch.Generator"):
        M.random_diffeomorphic_warp(smooth_image(1, 16), 0)
    with pytest.raises(ValueError, match="diffeomorphic_grid: height"):
        M.diffeomorphic_grid(1, 0, 16, gen())
    with pytest.raises(ValueError, match="diffeomorphic_grid: dtype"):
        M.diffeomorphic_grid(1, 16, 16, gen(), dtype=torch.float16)
    # one line, with a hint in parentheses
    with pytest.raises(ValueError) as info:
        M.random_diffeomorphic_warp(smooth_image(1, 16), gen(), kernel_size=4)
    assert "\n" not in str(info.value) and str(info.value).endswith(")")
