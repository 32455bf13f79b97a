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
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed {seed!r}: must be a non-negative int (set the trial's seed to 0 or more)")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    import torch

    torch.manual_seed(seed)
    return np.random.default_rng(seed)

