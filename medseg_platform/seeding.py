"""One seeding function for every random number generator the platform uses."""

from __future__ import annotations

import os
import random

import numpy as np

from medseg_platform.errors import ConfigError


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python ``random``, NumPy's legacy global RNG and torch (CPU and all CUDA devices).

    Returns a fresh ``numpy.random.Generator`` seeded with ``seed`` for code that prefers an explicit
    generator.
    """
    from medseg_platform.config import MAX_SEED

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed {seed!r}: must be a whole number in [0, 2**32 - 1] (set the trial's seed in that range)")
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    import torch

    torch.manual_seed(seed)
    return np.random.default_rng(seed)

