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


#: The phase of :func:`stream_seed` that is the trial's fine-tuning; pretraining stage ``i`` is phase ``i + 1``.
FINE_TUNING = 0
#: The purposes of :func:`stream_seed`: the global generators (``seed_everything``) and a rank's data stream.
GLOBAL_RNG, DATA_RNG = 0, 1


def stream_seed(seed: int, phase: int, purpose: int, rank: int = 0, step: int = 0) -> int:
    """The seed of one random stream of the trial of ``seed`` (docs/config.md, 'Random streams').

    The fine-tuning's own streams (``phase`` :data:`FINE_TUNING`, rank 0, from the start) are seeded with ``seed``
    itself, as the released scripts seed theirs: a supervised or mean-teacher trial trains as it always did. Every
    other stream (a pretraining stage's global generators or data, another rank's data, another rank's data resumed at
    ``step``: rank 0's streams continue from the checkpoint's saved states) gets a seed derived from ``seed`` and its
    ``(phase, purpose, rank, step)`` by NumPy's ``SeedSequence``: the streams of two seeds coincide only by the chance
    of two 32-bit numbers (a derived seed is also a trial seed: seed 1's first stage draws the data stream of seed
    28728897's fine-tuning, the seeding review), where the offsets before made neighbouring seeds share them (stage ``i``
    of seed ``s`` ran seed ``s + i``'s global stream, that of ``s + i``'s first stage and fine-tuning: the default
    study's seeds 1, 2, 3 shared ACTION's).
    Returns a whole number in [0, 2**32 - 1].
    """
    if (phase, rank, step) == (FINE_TUNING, 0, 0):
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(phase, purpose, rank, step)).generate_state(1)[0])
