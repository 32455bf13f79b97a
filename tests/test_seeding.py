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


def test_every_stream_but_the_fine_tunings_own_has_a_seed_of_its_own():
    """``stream_seed``: stage i of seed s ran seed s + i's global stream, which was seed s + i's own first stage and
    fine-tuning (the default study's seeds 1, 2, 3 shared ACTION's streams); now no stream of one seed is another's."""
    from medseg_platform.seeding import DATA_RNG, FINE_TUNING, GLOBAL_RNG, stream_seed

    assert stream_seed(5, FINE_TUNING, GLOBAL_RNG) == stream_seed(5, FINE_TUNING, DATA_RNG) == 5  # the baselines' streams
    places = [(phase, purpose, rank, step) for phase in range(4) for purpose in (GLOBAL_RNG, DATA_RNG)
              for rank in range(3) for step in (0, 40)]
    trial_seeds = (0, 1, 2, 3, 2 ** 32 - 1)
    others = [stream_seed(seed, *place) for seed in trial_seeds for place in places
              if (place[0], *place[2:]) != (FINE_TUNING, 0, 0)]
    assert len(set(others)) == len(others) == len(trial_seeds) * (len(places) - 2)  # no two streams coincide...
    assert not set(others) & set(trial_seeds)  # ...nor any with a trial's own stream (another seed's fine-tuning)
    assert all(isinstance(s, int) and 0 <= s < 2 ** 32 for s in others)
    assert stream_seed(1, 2, GLOBAL_RNG) != stream_seed(2, 1, GLOBAL_RNG)  # the offsets' coincidence, gone
