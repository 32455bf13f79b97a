"""Labelled subsets by patient count (docs/data.md, 'Labelled subsets').

The ACDC literature names its settings in percent but means patients: 1 / 3 / 7 of the 70 training
patients are called 1% / 5% / 10%. Here a label fraction is always resolved to a number of whole
*patients* and then to their training slices:

* ``"3"`` (or ``3``): three patients.
* ``"5%"``: a percent. The three published ACDC percents map as published, scaled to the training set:
  1% = 1/70, 5% = 3/70, 10% = 7/70 of the training patients (exactly 1, 3 and 7 on ACDC); any other
  percent is ``N * p / 100`` rounded half up (on the decimal as written). At least one patient; ``100%`` is all of them.

Which patients (``strategy``):

* ``published`` (default): the first n patients in the published ordering, i.e. the order in which
  patients first appear in ``train_slices.list`` (SSL4MIS: patient099, 038, 050, 100, 058, 021, 049, ...).
  The same for every seed, as in the papers.
* ``random``: a seeded random subset of n patients (a different subset per seed).
* ``released_slices``: as released (``patients_to_slices``): the first N *slices* of
  ``train_slices.list`` with N from the released table {1: 23, 3: 68, 7: 136, ...}. For 1 patient this
  is 23 slices = patient099's ED frame plus 7 slices of its ES frame (a partial patient); for 3 and 7 it
  equals ``published``. The table belongs to the SSL4MIS ACDC list (1312 slices of 70 patients,
  :func:`has_released_slices`); on any other list this strategy is a :class:`ConfigError` (the released
  scripts have no count for it either: ``patients_to_slices`` fails on an unknown dataset).

Zero patients, more patients than available, or a malformed fraction are :class:`ConfigError`.
The labelled patient ids are part of every result (``LabelledSubset.to_dict``).

:func:`epoch_steps` is the released fine-tuning "epoch" of a subset, ``floor(N_u / B_u)`` steps (docs/data.md,
'Batches and epochs'), the unit of MONA/ARCO's α_t schedule.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from medseg_platform.data.layout import AcdcLayout, case_of_slice, patient_of_case, unique_in_order
from medseg_platform.errors import ConfigError

STRATEGIES = ("published", "random", "released_slices")

#: The published ACDC settings: percent -> patients out of 70 (dataset_split/README; docs/data.md, 'Labelled subsets').
PUBLISHED_PERCENT_TO_PATIENTS = {1.0: 1, 5.0: 3, 10.0: 7}
PUBLISHED_TRAIN_PATIENTS = 70

#: ``patients_to_slices`` of the released code for ACDC: patients -> leading slices of train_slices.list.
RELEASED_ACDC_SLICES = {1: 23, 3: 68, 7: 136, 14: 256, 21: 396, 28: 512, 35: 664, 70: 1312}

_FRACTION_RE = re.compile(r"^\s*(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<percent>%?)\s*$")  # ASCII digits only: one spelling


@dataclass(frozen=True)
class PatientCount:
    """A resolved label fraction: ``patients`` of ``available`` training patients, and how it was derived."""

    requested: str
    patients: int
    available: int
    rule: str

    @property
    def percent(self) -> float:
        return 100.0 * self.patients / self.available

    def describe(self) -> str:
        return f"label fraction {self.requested} -> {self.patients} of {self.available} training patients ({self.percent:.1f}%; {self.rule})"


def _parse_fraction(text: str) -> tuple[float, bool, str]:
    """``(value, is_percent, digits as written)`` of a label fraction's text; ConfigError for anything else."""
    match = _FRACTION_RE.match(text)
    if match is None:
        raise ConfigError(f"label fraction {text!r}: expected a patient count like '3' or a percent like '5%'")
    value = float(match["value"])
    if not math.isfinite(value):
        raise ConfigError(f"label fraction {text[:40]!r}{'...' if len(text) > 40 else ''}: too large a number")
    return value, bool(match["percent"]), match["value"]


def canonical_fraction(fraction: str | int) -> str:
    """A label fraction as one spelling: ``"01"``, ``" 1"`` -> ``"1"``; ``"5.0 %"`` -> ``"5%"``; the trial key carries it, so
    two spellings of one fraction are one trial. ConfigError for text that is not a count or a percent."""
    _, percent, digits = _parse_fraction(str(fraction))
    whole, _, part = digits.partition(".")  # as text: no digit of the value is rounded away
    number = (whole.lstrip("0") or "0") + ("." + part.rstrip("0") if part.rstrip("0") else "")
    return number + ("%" if percent else "")


def resolve_patient_count(fraction: str | int | float, available: int) -> PatientCount:
    """Map ``"3"``/``3`` (patients) or ``"5%"`` (percent) to a number of patients out of ``available``."""
    if available < 1:
        raise ConfigError("training split: no training patients (the dataset's train_slices.list is empty)")
    text = str(fraction)
    value, percent, digits = _parse_fraction(text)
    if percent:
        if value <= 0 or value > 100:
            raise ConfigError(f"label fraction {text!r}: a percent must be in (0, 100]")
        # exact fractions of the digits as written: in binary floating point 14.5% of 100 patients rounded to 14 (the
        # data review)
        # the decimal as written: "1.0000000000000001%" is no published setting, though its float is 1.0 (the splits review)
        if Fraction(digits) in PUBLISHED_PERCENT_TO_PATIENTS:
            share = Fraction(PUBLISHED_PERCENT_TO_PATIENTS[value], PUBLISHED_TRAIN_PATIENTS)
            rule = f"published ACDC mapping {value:g}% = {PUBLISHED_PERCENT_TO_PATIENTS[value]}/{PUBLISHED_TRAIN_PATIENTS} patients"
        else:
            share = Fraction(digits) / 100
            rule = f"round({available} x {value:g}/100)"
        n = max(1, math.floor(available * share + Fraction(1, 2)))
    else:
        if Fraction(digits).denominator != 1:  # the decimal as written: "3.0000000000000001" is not 3
            raise ConfigError(f"label fraction {text!r}: a patient count must be a whole number (use '%' for a percent)")
        n = int(Fraction(digits))
        rule = "patient count"
        if n == 0:
            raise ConfigError(f"label fraction {text!r}: 0 labelled patients leaves nothing to supervise (use at least 1)")
    if n > available:
        raise ConfigError(f"label fraction {text!r}: {n} patients requested but the training split has only {available} "
                          "(--labelled sets the fractions a study or medseg train trains)")
    return PatientCount(text, n, available, rule)


@dataclass(frozen=True)
class LabelledSubset:
    """Which training data are labelled. Slice ids keep ``train_slices.list`` order."""

    count: PatientCount
    strategy: str
    seed: int | None
    patients: tuple[str, ...]
    labelled_slices: tuple[str, ...]
    unlabelled_slices: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-able record stored with every result."""
        return {
            "requested": self.count.requested,
            "num_patients": self.count.patients,
            "available_patients": self.count.available,
            "percent_patients": round(self.count.percent, 3),
            "rule": self.count.rule,
            "strategy": self.strategy,
            "seed": self.seed,
            "patients": list(self.patients),
            "num_labelled_slices": len(self.labelled_slices),
            "num_unlabelled_slices": len(self.unlabelled_slices),
        }

    def describe(self) -> str:
        return (
            f"{self.count.describe()}; strategy {self.strategy}"
            + (f" (seed {self.seed})" if self.strategy == "random" else "")
            + f": {', '.join(self.patients)} = {len(self.labelled_slices)} labelled / {len(self.unlabelled_slices)} unlabelled slices"
        )


def select_labelled(
    train_slices: Sequence[str],
    fraction: str | int | float,
    strategy: str = "published",
    seed: int | None = None,
) -> LabelledSubset:
    """Split training slice ids into labelled and unlabelled ones (see the module docstring).

    Args:
        train_slices: slice ids in ``train_slices.list`` order (defines the published ordering).
        fraction: patients (``"3"``) or percent (``"5%"``).
        strategy: ``published`` | ``random`` | ``released_slices``.
        seed: required for ``random``; recorded otherwise.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"labelled strategy {strategy!r}: unknown; choose one of {', '.join(STRATEGIES)}")
    slice_patients = [patient_of_case(case_of_slice(s)) for s in train_slices]
    ordering = unique_in_order(slice_patients)
    count = resolve_patient_count(fraction, len(ordering))

    if strategy == "released_slices":
        if count.patients not in RELEASED_ACDC_SLICES:
            raise ConfigError(
                f"labelled strategy released_slices: no released slice count for {count.patients} patients "
                f"(known: {sorted(RELEASED_ACDC_SLICES)}); use strategy 'published'"
            )
        n_slices = RELEASED_ACDC_SLICES[count.patients]
        if not has_released_slices(train_slices):
            raise ConfigError(
                f"labelled strategy released_slices: the released slice counts belong to the SSL4MIS ACDC list "
                f"({RELEASED_ACDC_SLICES[PUBLISHED_TRAIN_PATIENTS]} slices of {PUBLISHED_TRAIN_PATIENTS} patients), this "
                f"train_slices.list has {len(train_slices)} slices of {len(ordering)} patients (use strategy 'published')"
            )
        labelled = tuple(train_slices[:n_slices])
        unlabelled = tuple(train_slices[n_slices:])
        patients = tuple(unique_in_order(slice_patients[:n_slices]))
        return LabelledSubset(count, strategy, seed, patients, labelled, unlabelled)

    if strategy == "published":
        chosen = ordering[: count.patients]
    else:
        if seed is None:
            raise ConfigError("labelled strategy random: a seed is required (pass --seed)")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ConfigError(f"labelled strategy random: the seed must be a whole number >= 0, got {seed!r}")
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(ordering), size=count.patients, replace=False)
        chosen = [ordering[i] for i in sorted(picked)]
    wanted = set(chosen)
    mask = [p in wanted for p in slice_patients]
    labelled = tuple(s for s, m in zip(train_slices, mask) if m)
    unlabelled = tuple(s for s, m in zip(train_slices, mask) if not m)
    return LabelledSubset(count, strategy, seed, tuple(chosen), labelled, unlabelled)


def has_released_slices(train_slices: Sequence[str]) -> bool:
    """Whether ``train_slices`` (``train_slices.list`` in order) is the list the released slice counts were made for:
    the SSL4MIS ACDC training list, 1312 slices of its 70 patients in its order (:data:`RELEASED_ACDC_SLICES`,
    ``acdc_split.PUBLISHED_TRAIN``; any list of 1312 slices of 70 patients passed, and the cuts then labelled
    other patients' slices than the report said: the splits review)."""
    from medseg_platform.data.acdc_split import PUBLISHED_TRAIN

    patients = unique_in_order(patient_of_case(case_of_slice(s)) for s in train_slices)
    return len(train_slices) == RELEASED_ACDC_SLICES[PUBLISHED_TRAIN_PATIENTS] and tuple(patients) == PUBLISHED_TRAIN


#: The first entries of SSL4MIS's ``data/ACDC/train_slices.list`` (patient099's two frames, 1-based slice numbers as that
#: list writes them): the release orders the slices within a frame in no index order, and its 1-patient cut (23 slices)
#: ends 7 slices into the ES frame, so which 7 are labelled depends on that order.
RELEASED_LIST_HEAD = tuple(
    [f"patient099_frame01_slice_{k}" for k in (15, 11, 1, 16, 9, 7, 4, 13, 8, 5, 14, 6, 12, 3, 10, 2)]
    + [f"patient099_frame02_slice_{k}" for k in (5, 9, 11, 2, 3, 10, 1, 15, 14, 4, 6, 16, 13, 8, 12, 7)])


def released_cut_note(train_slices: Sequence[str], patients: int = 1) -> str:
    """A warning when ``released_slices`` at ``patients`` would label other slices than the release: its cut
    (:data:`RELEASED_ACDC_SLICES`) ends inside a frame of this list, and the list's slices up to the cut are not the
    release's (:data:`RELEASED_LIST_HEAD`; ``convert-acdc`` writes a frame's slices in index order). "" otherwise: the
    cuts of 3, 7 and 14 patients end on a patient, where the order within a frame does not matter (the data review)."""
    n = RELEASED_ACDC_SLICES.get(patients)
    if n is None or not has_released_slices(train_slices) or n >= len(train_slices):
        return ""
    if case_of_slice(train_slices[n - 1]) != case_of_slice(train_slices[n]):
        return ""
    if n <= len(RELEASED_LIST_HEAD) and tuple(train_slices[:n]) == RELEASED_LIST_HEAD[:n]:
        return ""
    case = case_of_slice(train_slices[n - 1])
    ours = [s.rsplit("_", 1)[1] for s in train_slices[:n] if case_of_slice(s) == case]
    released = [s.rsplit("_", 1)[1] for s in RELEASED_LIST_HEAD[:n] if case_of_slice(s) == case]
    theirs = f"slices {', '.join(released)} there" if released else "the slices its own list puts first"
    return (f"the released {n}-slice cut of {patients} patient{'s' if patients != 1 else ''} ends inside {case}, whose slices "
            f"this train_slices.list orders otherwise than SSL4MIS's list: the run labels its slices {', '.join(ours)} (this "
            f"list's ids), the release {theirs} (SSL4MIS's ids, 1-based); only SSL4MIS's own preprocessed slices and list "
            "give the released set")


def epoch_steps(subset: LabelledSubset, unlabelled_batch: int) -> int:
    """The released fine-tuning epoch of ``subset``: ``max(1, floor(N_u / unlabelled_batch))`` steps, N_u = its
    unlabelled slices (the length of the released unlabelled loader, ``drop_last``: 322 / 311 / 294 steps at
    1 / 3 / 7 released ACDC patients with batch 4). Pass the effective batch (``B_u`` x data-parallel workers)."""
    if isinstance(unlabelled_batch, bool) or not isinstance(unlabelled_batch, int) or unlabelled_batch < 1:
        raise ConfigError(f"epoch_steps: unlabelled_batch must be an int >= 1, got {unlabelled_batch!r} (pass data.unlabelled_batch)")
    return max(1, len(subset.unlabelled_slices) // unlabelled_batch)


def select_labelled_from_layout(layout: AcdcLayout, fraction: str | int | float, strategy: str = "published", seed: int | None = None) -> LabelledSubset:
    """:func:`select_labelled` on a dataset root's ``train_slices.list``."""
    return select_labelled(layout.train_slices, fraction, strategy, seed)


# ------------------------------------------------------------------------------------------ CLI
def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "splits",
        help="show which training patients and slices a label fraction selects",
        example="medseg data splits data/phantom --labelled 5% --strategy random --seed 2",
        # the rules of the fraction and of the strategies (it printed the paragraph that leads to them, cut at its colon)
        description=re.sub(r":\w+:`([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), "\n\n".join(__doc__.split("\n\n")[1:5]))
        + "\n\nPatients (e.g. 3) or percent (e.g. 5%) -> labelled patients and slices.",
    )
    parser.add_argument("root", help="dataset root (SSL4MIS/ACDC layout)")
    parser.add_argument("--labelled", action="extend", nargs="+", required=True, metavar="FRACTION",
                        help="patients ('3') or percent ('5%%'); several after one flag (as the study scripts take them) or repeated")
    parser.add_argument("--strategy", choices=STRATEGIES, default="published", help="which patients (default: published ordering)")
    parser.add_argument("--seed", type=int, default=None, help="seed for --strategy random")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    if args.seed is not None and args.strategy != "random":
        raise ConfigError(f"--seed: only used with --strategy random (the {args.strategy} strategy has no randomness)")
    layout = AcdcLayout(args.root)
    for fraction in args.labelled:
        print(select_labelled_from_layout(layout, fraction, args.strategy, args.seed).describe())
    return 0
