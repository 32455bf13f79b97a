"""One seeding function for every random number generator the platform uses."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python ``random``, NumPy's legacy global RNG and torch (CPU and all CUDA devices).

    Returns a fresh ``numpy.random.Generator`` seeded with ``seed`` for code that prefers an explicit
    generator. DataLoader workers are seeded with :func:`seed_worker`.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    import torch

    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: derive each worker's NumPy/random seed from torch's."""
    import torch

    worker_seed = torch.initial_seed() % (2**32)
    np.random.seed(worker_seed)
    random.seed(worker_seed)
