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


def test_grey_levels_back_to_unit_range_are_correctly_rounded_divisions_on_every_device():
    """``from_grey_levels`` is the division by 255 (numpy's IEEE result), not a multiplication by 1/255, which
    differs in the last place for about half the levels (what PyTorch's CUDA kernels did with a Python divisor)."""
    import numpy as np

    from methods.intensity import from_grey_levels

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
        levels = torch.arange(256, dtype=dtype)
        ieee = torch.from_numpy(levels.numpy() / np_dtype(255))
        reciprocal = levels * (1 / torch.tensor(255.0, dtype=dtype))
        assert not torch.equal(ieee, reciprocal)  # the two forms differ here, so the next line can fail
        for device in devices:
            back = from_grey_levels(levels.to(device))
            assert back.device.type == device and back.dtype == dtype
            assert torch.equal(back.cpu(), ieee), (device, dtype)
            assert torch.equal(to_grey_levels(back).cpu(), levels)  # idempotent on this device too
