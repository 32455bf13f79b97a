"""The flags every study script shares (:func:`study_parser`) and the dataset ``--data-root`` resolves to
(:func:`resolve_data_root`: the given root, or the embedded phantom of the profile, generated on first use).

A study script declares its variants (table rows) and axes and calls :func:`analysis.study_cli.run_study_main`,
which parses these flags, runs the study and writes its report.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from medseg_platform.cli import plain_help
from medseg_platform.config import resolve_path
from medseg_platform.errors import MedsegError
from medseg_platform.profiles import PROFILES, Profile
from medseg_platform.protocol import PROTOCOLS


def default_cache_root() -> Path:
    """Where the embedded dataset is cached: ``$MEDSEG_CACHE`` or ``~/.cache/medseg-platform`` (an empty
    ``MEDSEG_CACHE`` counts as unset: it used to put the phantom into the current folder; the home folder is looked up
    only when it is needed)."""
    return Path(os.environ.get("MEDSEG_CACHE") or Path.home() / ".cache" / "medseg-platform").expanduser().resolve()


def count_at_least(minimum: int, maximum: int | None = None):
    """An argparse ``type``: a whole number >= ``minimum`` (and <= ``maximum`` if given; argparse names the flag in its
    error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return parse


def seed_value():
    """An argparse ``type`` for a seed: a whole number in [0, 2**32 - 1] (:data:`medseg_platform.config.MAX_SEED`)."""
    from medseg_platform.config import MAX_SEED

    return count_at_least(0, MAX_SEED)


def label_fraction(text: str) -> str:
    """An argparse ``type``: a label fraction, patients ("3") or percent ("5%"), in one spelling
    (:func:`medseg_platform.data.splits.canonical_fraction`)."""
    from medseg_platform.data.splits import canonical_fraction

    try:
        return canonical_fraction(text)
    except MedsegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def study_fractions(args: argparse.Namespace, default) -> tuple[str, ...]:
    """The label fractions (table columns) a study script trains: ``--labelled`` if given, else the study's own
    ``default`` (its profile's, e.g. 1 / 3 / 7 patients at ``paper``)."""
    given = getattr(args, "labelled", None)
    return tuple(given) if given else tuple(default)


def fractions_in_patient_order(fractions: Iterable[str], root, num_classes: int) -> tuple[str, ...]:
    """``--labelled``'s fractions, as typed, in increasing order of the patients they select of the dataset at ``root``
    (:func:`medseg_platform.data.splits.resolve_patient_count`; a note on stderr says what a percent selects).

    A study's "improves with more patients" claims pair its fractions in this order, not in the order they were typed,
    and its claims and the published numbers compare fractions by the patients they select (the papers' "5%" is the "3"
    patients of ACDC's 70: :func:`analysis.claims.at_fraction`). The spelling is kept: it is part of the trials'
    keys, so a folder trained with "5%" is found again. Two fractions that select the same patients are refused with
    the study's other checks (:meth:`medseg_platform.study.Study.trial_params`)."""
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.splits import resolve_patient_count
    from medseg_platform.errors import ConfigError

    layout = AcdcLayout(root, num_classes)
    patients: dict[str, int] = {}
    for fraction in fractions:
        try:
            count = resolve_patient_count(fraction, len(layout.train_patients))
        except ConfigError as exc:
            raise ConfigError(f"--labelled, dataset {layout.root}: {exc}") from None
        patients[fraction] = count.patients
        if str(count.patients) != fraction:
            print(f"note: {count.describe()}", file=sys.stderr)
    return tuple(sorted(patients, key=patients.__getitem__))


def selected_patients(fraction: str, base=None) -> int | None:
    """The number of patients ``fraction`` selects on the dataset of ``base`` (a TrialConfig), or None where that is not
    known (no ``base`` or no dataset, e.g. a study built without one); a patient count as written needs no dataset."""
    from medseg_platform.data.splits import resolve_patient_count
    from medseg_platform.errors import MedsegError

    text = str(fraction)
    if text.isdigit():
        return int(text)
    if base is None:
        return None
    try:
        from medseg_platform.data.layout import AcdcLayout

        return resolve_patient_count(text, len(AcdcLayout(base.data.root, base.data.num_classes).train_patients)).patients
    except (MedsegError, TypeError):
        return None


def amount(positive: bool):
    """An argparse ``type``: a finite number > 0 (``positive``) or >= 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {'> 0' if positive else '>= 0'}, got {text}")
        return value
    return parse


def fractions_help(default: Mapping[str, Sequence[str]] | Sequence[str] | str | None) -> str:
    """How ``--labelled``'s help states a study's default fractions: ``{"smoke": ("1",), "quick": ("1",), "paper": ("1",
    "3", "7")}`` reads "1 patient at --profile smoke and quick, 1 / 3 / 7 patients at paper"; one tuple for every
    profile reads "1 patient"; a string is the help's words as they are; None reads the profiles' own
    (``Profile.labelled``)."""
    if isinstance(default, str):
        return default
    if default is None:
        default = {name: profile.labelled for name, profile in PROFILES.items()}

    def spelled(fractions: Sequence[str]) -> str:
        noun = "patient" if list(fractions) == ["1"] else "patients"
        return " / ".join(fractions) + (f" {noun}" if not any(str(f).endswith("%") for f in fractions) else "")

    if not isinstance(default, Mapping):
        return spelled(default)
    profiles_by_fractions: dict[tuple[str, ...], list[str]] = {}
    for name, fractions in default.items():
        profiles_by_fractions.setdefault(tuple(fractions), []).append(name)
    parts = [f"{spelled(fractions)} at {' and '.join(names)}" for fractions, names in profiles_by_fractions.items()]
    return ", ".join(parts).replace(" at ", " at --profile ", 1)


def study_parser(description: str, default_name: str, folder: str | None = None,
                 seeds_help: str = "seeds, each in [0, 2**32 - 1] (default: the profile's)",
                 labelled_default: Mapping[str, Sequence[str]] | Sequence[str] | str | None = None) -> argparse.ArgumentParser:
    """The parser of a study script's shared flags (profile, data, Ray and resources, ``--set``, ``--rows``,
    ``--dry-run``, ``--protocol``, ``--test-root``); a script may add its own before handing it to
    :func:`analysis.study_cli.run_study_main`. ``folder``: how ``--name``'s help spells the default folder name
    (default ``<default_name>-<profile>``); ``seeds_help``: ``--seeds``'s help (a search takes one);
    ``labelled_default``: the study's own label fractions, by profile name or one for every profile, for
    ``--labelled``'s help (:func:`fractions_help`; None: the profiles' own, ``Profile.labelled``)."""
    parser = argparse.ArgumentParser(description=plain_help(description), formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  python {sys.argv[0]} --smoke-test")
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick",
                        help="problem size (default: quick, a laptop CPU; smoke: as --smoke-test)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks the whole path in about a minute (30 s on a fast machine)")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--results-dir", default="results", help="where results go (default: ./results)")
    parser.add_argument("--data-root", default=None, help="dataset root in the SSL4MIS/ACDC layout (default: the embedded phantom at --profile smoke and quick; --profile paper needs one)")
    parser.add_argument("--seeds", type=seed_value(), nargs="+", default=None, help=seeds_help)
    parser.add_argument("--labelled", type=label_fraction, nargs="+", default=None, metavar="FRACTION",
                        help="the label fractions (table columns) to train: labelled patients ('3') or percent ('5%%') "
                             f"(default: {fractions_help(labelled_default)})")
    parser.add_argument("--name", default=None, help=f"study name (default: {folder or default_name + '-<profile>'})")
    parser.add_argument("--max-concurrent", type=count_at_least(1), default=None, help="at most this many trials at once")
    parser.add_argument("--gpus-per-trial", type=amount(positive=False), default=0.0, help="GPUs per trial (default 0: CPU)")
    parser.add_argument("--cpus-per-trial", type=amount(positive=True), default=None, help="CPUs Ray reserves per trial (default: the profile's); a trial computes with the config's torch "
                             "threads (quick 1, paper 4; --set threads=N), so reserve as many CPUs as threads")
    parser.add_argument("--num-workers", type=count_at_least(1), default=1,
                        help="processes per trial; > 1 trains data-parallel through Ray Train (CPUs/GPUs per trial are per worker)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                        help="mixed precision of the forward pass and losses (default off; bf16 runs on CPU and GPU, fp16 needs --gpus-per-trial)")
    parser.add_argument("--max-retries", type=count_at_least(0), default=2, metavar="N",
                        help="restart a trial whose worker process died up to N times from its last checkpoint (default 2; "
                             "NaN losses and other deterministic errors are never retried)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                        help="address the local Ray's dashboard binds to (default 127.0.0.1; anything else exposes job "
                             "submission to the network and prints a warning: prefer an SSH tunnel)")
    parser.add_argument("--optuna-storage", default=None, metavar="PATH",
                        help="search studies only: also record the Optuna study in this journal file (optuna-dashboard PATH)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value of every trial, e.g. --set optim.lr=0.02 --set objective_params.temperature=0.2 "
                             "(repeatable; typed like the config field: the keys of docs/config.md but those a flag sets; an error if a row "
                             "sets the key itself or its objective lacks it)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                        help="run only these table rows (names as the table prints them; quote names with spaces)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the trials (status, estimated cost) and the estimated wall time; start and train nothing")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="corrected",
                        help="evaluation protocol of every trial (default corrected: model selected on val, undefined "
                             "distances left out, mm where the spacing is known); released: as the released scripts "
                             "(final iteration, empty prediction = distance 0, voxels, and the released labelled slices "
                             "on ACDC), to compare a table with a published one")
    parser.add_argument("--test-root", default=None, metavar="ROOT",
                        help="also score every trial's selected weights on this dataset's test split (same classes as the "
                             "study's data); tables and report show it as its own block. Trials finished without it are "
                             "scored from their checkpoints, without training")
    return parser


def dataset_num_classes(root: str | Path, set_keys: Iterable[str], current: int, note: bool = True) -> dict[str, int]:
    """``{"data.num_classes": n}`` when ``root``'s manifest records n classes, the trials are set up for another count
    and neither ``--set`` nor a config file names it (``set_keys``): a converted dataset of 3 classes trains with 3
    (the data-flow probe had to pass ``--set data.num_classes=3`` after an error); a note on stderr says so (with
    ``note``; a second lookup for the same command passes False: it printed twice). {} else."""
    from medseg_platform.data.check import manifest_num_classes

    if "data.num_classes" in set(set_keys):
        return {}
    recorded = manifest_num_classes(root)
    if recorded is None or recorded == current:
        return {}
    if note:
        print(f"note: data.num_classes = {recorded}, the class count {root}'s manifest records (background included; the "
              f"profile's is {current})", file=sys.stderr, flush=True)
    return {"data.num_classes": recorded}


def resolve_data_root(args, profile: Profile) -> Path:
    """``--data-root`` resolved, or the cached phantom (generated on first use)."""
    if args.data_root is not None:  # an empty one (an unset shell variable) is an error, not the phantom (the CLI review)
        return resolve_path(args.data_root, "--data-root")
    if profile.phantom is None:
        raise MedsegError(f"profile {profile.name}: needs --data-root (an ACDC dataset converted with 'medseg data convert-acdc')")
    from medseg_platform.data.phantom import ensure_phantom

    return Path(ensure_phantom(default_cache_root(), **profile.phantom))
