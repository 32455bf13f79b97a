"""Patient-level train/val/test splits for the converters (docs/data.md, 'Splits').

* ``published``: SSL4MIS's ACDC split of the 100 training-release patients, 70/10/20, with its
  training *order* (the order of ``train_slices.list`` defines which patients are "the first n labelled").
  Patients absent from the raw folder are dropped (order kept); patients not in the published lists are
  not used.
* ``random``: a seeded permutation of the patients present. Training patients keep the permuted order
  (so "the first n labelled" are a random draw fixed by the seed); val and test are sorted by id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from medseg_platform.errors import ConfigError, DataError

SPLIT_KINDS = ("published", "random")

_PUBLISHED_TRAIN = (
    "099 038 050 100 058 021 049 020 072 040 060 089 004 056 098 096 031 018 094 047 048 055 097 074 043 "
    "041 063 037 095 054 026 088 032 069 006 071 012 073 061 017 025 010 057 029 051 005 036 046 062 034 "
    "076 092 070 077 067 003 091 016 014 044 042 090 053 027 035 086 023 009 079 015"
)
_PUBLISHED_VAL = "028 085 082 087 019 030 078 045 002 039"
_PUBLISHED_TEST = "011 013 084 033 093 022 068 024 083 081 080 001 007 066 008 065 075 064 059 052"

#: SSL4MIS's ACDC patient split; the training tuple is in ``train_slices.list`` order.
PUBLISHED_TRAIN: tuple[str, ...] = tuple(f"patient{n}" for n in _PUBLISHED_TRAIN.split())
PUBLISHED_VAL: tuple[str, ...] = tuple(f"patient{n}" for n in _PUBLISHED_VAL.split())
PUBLISHED_TEST: tuple[str, ...] = tuple(f"patient{n}" for n in _PUBLISHED_TEST.split())


@dataclass(frozen=True)
class Split:
    """Patient ids per split; ``train`` is in labelled-first order, ``missing`` lists published patients absent."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    missing: tuple[str, ...] = ()

    def of(self, patient: str) -> str:
        """``"train"``, ``"val"`` or ``"test"`` for a patient of this split."""
        for name in ("train", "val", "test"):
            if patient in getattr(self, name):
                return name
        raise KeyError(patient)

    @property
    def patients(self) -> tuple[str, ...]:
        """All patients: train (in order), then val, then test."""
        return self.train + self.val + self.test


@dataclass(frozen=True)
class SplitSpec:
    """How to split: ``kind`` (published|random), ``seed``, fractions or absolute patient counts.

    Counts, when given, win over fractions. Validated on construction (:class:`ConfigError`).
    """

    kind: str = "published"
    seed: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    val_count: int | None = None
    test_count: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(f"--split {self.kind!r}: unknown split (use one of {', '.join(SPLIT_KINDS)})")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"--seed {self.seed!r}: must be a non-negative integer")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a number strictly between 0 and 1")
        if self.val_count is None and self.test_count is None and self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction}: must sum to less than 1 "
                f"(the rest is the training set)"
            )
        for name in ("val_count", "test_count"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a positive integer")

    def effective_seed(self) -> int | None:
        """The seed used: ``seed`` or 0 for a random split, ``None`` for the published one."""
        if self.kind == "published":
            return None
        return 0 if self.seed is None else self.seed


def _check_not_empty(split: Split, how: str) -> Split:
    """Raise :class:`DataError` if any of train/val/test has no patient."""
    for name in ("train", "val", "test"):
        if not getattr(split, name):
            raise DataError(
                f"{how}: the {name} split has no patient "
                f"(convert more patients, or use --split random with other fractions/counts)"
            )
    return split


def published_split(present: Sequence[str]) -> Split:
    """SSL4MIS's split restricted to the ``present`` patient ids, keeping the published order.

    ``missing`` holds the published patients not present. Raises :class:`DataError` when a split is empty.
    """
    have = set(present)
    published = PUBLISHED_TRAIN + PUBLISHED_VAL + PUBLISHED_TEST
    split = Split(
        train=tuple(p for p in PUBLISHED_TRAIN if p in have),
        val=tuple(p for p in PUBLISHED_VAL if p in have),
        test=tuple(p for p in PUBLISHED_TEST if p in have),
        missing=tuple(p for p in published if p not in have),
    )
    return _check_not_empty(split, f"--split published ({len(have & set(published))} of 100 published patients present)")


def split_counts(n: int, spec: SplitSpec) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for ``n`` patients: counts, or fractions rounded half up with at least 1.

    Raises :class:`DataError` when the training set would be empty.
    """
    def from_fraction(fraction: float) -> int:  # half up on the decimal as written (0.35 of 90 is 32, not 31)
        return max(1, math.floor(n * Fraction(str(fraction)) + Fraction(1, 2)))

    n_val = spec.val_count if spec.val_count is not None else from_fraction(spec.val_fraction)
    n_test = spec.test_count if spec.test_count is not None else from_fraction(spec.test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"--split random: {n} patient(s) cannot be split into {n_val} val + {n_test} test + at least 1 train "
            f"(convert more patients or lower the val/test fractions/counts)"
        )
    return n_train, n_val, n_test


def random_split(patients: Sequence[str], spec: SplitSpec) -> Split:
    """A seeded random patient split (``numpy.random.default_rng(seed).permutation`` of the sorted ids).

    The first ``n_train`` permuted patients are training (in permuted order), the next ``n_val`` val and the
    rest test (both sorted). Same patients + same spec -> same split on every machine.
    """
    ordered = sorted(set(patients))
    n_train, n_val, _ = split_counts(len(ordered), spec)
    rng = np.random.default_rng(spec.effective_seed())
    permuted = [ordered[i] for i in rng.permutation(len(ordered))]
    split = Split(
        train=tuple(permuted[:n_train]),
        val=tuple(sorted(permuted[n_train:n_train + n_val])),
        test=tuple(sorted(permuted[n_train + n_val:])),
    )
    return _check_not_empty(split, "--split random")


def make_split(patients: Sequence[str], spec: SplitSpec) -> Split:
    """Dispatch on ``spec.kind``."""
    if spec.kind == "published":
        return published_split(patients)
    return random_split(patients, spec)
