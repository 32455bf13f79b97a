"""The one seeding function (``medseg_platform.seeding.seed_everything``): its range and what it seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from medseg_platform.errors import ConfigError
from medseg_platform.seeding import seed_everything


def test_the_same_seed_gives_the_same_draws_of_every_generator():
    """No direct test had it (the test audit): a trial's reproducibility rests on it."""
    def draws(seed: int) -> tuple:
        generator = seed_everything(seed)
        return (torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random(), generator.random())

    assert draws(7) == draws(7)
    assert all(a != b for a, b in zip(draws(7), draws(8)))


@pytest.mark.parametrize("seed", [-1, 2 ** 32, True, 1.0, "3"])
def test_a_seed_outside_the_recorded_range_is_a_config_error(seed):
    with pytest.raises(ConfigError, match=r"must be a whole number in \[0, 2\*\*32 - 1\]"):
        seed_everything(seed)
    assert all(isinstance(seed_everything(edge), np.random.Generator) for edge in (0, 2 ** 32 - 1))  # the ends are valid
