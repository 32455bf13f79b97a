"""The released 8-bit round trip shared by the strong view (medseg_platform.data.augment) and MONA's L_eqv input."""

import torch

from methods.intensity import round_trip_8bit, to_grey_levels


def test_round_trip_truncates_to_1_over_255_and_clamps():
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.00393])
    assert torch.equal(round_trip_8bit(x) * 255, torch.tensor([0.0, 127.0, 255.0, 255.0, 0.0, 1.0]))
    assert torch.equal(to_grey_levels(x), torch.tensor([0.0, 127.0, 255.0, 255.0, 0.0, 1.0]))


def test_round_trip_is_idempotent_in_float32_and_float64():
    levels = torch.arange(256, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(to_grey_levels((levels / 255).to(dtype)), levels.to(dtype))
        x = torch.rand(10_000, dtype=dtype, generator=torch.Generator().manual_seed(0))
        assert torch.equal(round_trip_8bit(round_trip_8bit(x)), round_trip_8bit(x))
