"""``medseg data check DIR``: validate a dataset in the SSL4MIS/ACDC layout (docs/data.md, 'ACDC layout').

Every listed slice and volume is opened and checked: the file exists and is readable HDF5, has
``image`` and ``label`` of equal shape (2-D slices, 3-D volumes), a floating-point image that is finite
and within [0, 1], and integer labels within ``0 .. num_classes-1``; the manifest's class names (if any)
must name labels 1..num_classes-1, no list may name an id twice, no patient may have cases in two splits, every
file the manifest records a SHA-256 for must still have it, and the train split must hold some foreground label. A val
or test split without any, and a foreground class that a split never holds, are notes (a trial that selects on val
refuses a val split without foreground itself: :func:`medseg_platform.engine.trial.train_trial`); a training case's
volume must exist (it is not read). A bad file gives one line naming the file and the problem and the check goes on
(a manifest that cannot be read stops it: its classes and spacings are what the files are checked against); the
command exits non-zero if any problem was found. Without ``--num-classes`` the count is the manifest's (its class
names + 1, else the converter's ``num_classes``), else 4 (ACDC). It also prints cases and slices per split and the
voxel fraction of every class (by name). Studies run the same check before Ray starts
(:mod:`medseg_platform.preflight`).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_platform.data.layout import (MANIFEST, TEST_LIST, TRAIN_LIST, VAL_LIST, AcdcLayout, changed_files, default_class_names,
                                         patient_of_case, read_h5_pair, read_manifest)
from medseg_platform.errors import DataError

MAX_CLASSES = 256  # labels are uint8, as the converters cap them
#: Why a split without any foreground label is a problem, and the list file that names its files.
_UNLABELLED_SPLIT = {"train": "there is nothing to learn",
                     "val": "validation Dice cannot tell models apart (a trial that selects on val refuses to start)",
                     "test": "the test metrics score no structure (undefined, or 0/1 under the released empty-mask policy)"}
_LIST_OF_SPLIT = {"train": TRAIN_LIST, "val": VAL_LIST, "test": TEST_LIST}


@dataclass
class SplitStats:
    """Counts of one split: ``items`` files checked, ``class_voxels[c]`` voxels of class c."""

    name: str
    cases: int = 0
    slices: int = 0
    items: int = 0
    class_voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class CheckReport:
    root: Path
    num_classes: int
    splits: dict[str, SplitStats]
    problems: list[str]
    class_names: tuple[str, ...] = ()  # labels 1..num_classes-1 (the manifest's, else the defaults)
    notes: list[str] = field(default_factory=list)  # not problems: foreground classes that a split never holds

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        lines = [f"dataset {self.root} ({self.num_classes} classes)"]
        names = ["background", *(self.class_names or default_class_names(self.num_classes))]
        widths = [max(9, len(name)) for name in names]
        header = f"  {'split':<6} {'cases':>6} {'slices':>7}  " + " ".join(f"{name:>{w}}" for name, w in zip(names, widths))
        lines.append(header)
        for stats in self.splits.values():
            total = stats.class_voxels.sum()
            fractions = stats.class_voxels / total if total else np.full(self.num_classes, np.nan)
            lines.append(
                f"  {stats.name:<6} {stats.cases:>6} {stats.slices:>7}  "
                + " ".join(f"{100 * f:>{w - 1}.2f}%" for f, w in zip(fractions, widths))
            )
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"{len(self.problems)} problem(s)" if self.problems else "OK: no problems found")
        return lines


def check_array_pair(path: Path, image: np.ndarray, label: np.ndarray, num_classes: int) -> list[str]:
    """Problems of one ``image``/``label`` pair as one-line messages (empty list if fine)."""
    problems = []
    if not np.issubdtype(image.dtype, np.floating):
        problems.append(f"{path}: 'image' has dtype {image.dtype}, expected float32 in [0, 1]")
    else:
        finite = np.isfinite(image)
        if not finite.all():
            problems.append(f"{path}: 'image' has {int((~finite).sum())} NaN/inf value(s)")
        elif image.size and (image.min() < 0.0 or image.max() > 1.0):
            problems.append(f"{path}: 'image' values span [{image.min():.4g}, {image.max():.4g}], expected [0, 1] (min-max normalise per volume)")
    if not np.issubdtype(label.dtype, np.integer):
        problems.append(f"{path}: 'label' has dtype {label.dtype}, expected an integer type (uint8)")
    elif label.size and (label.min() < 0 or label.max() >= num_classes):
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        problems.append(f"{path}: 'label' has value(s) {bad[:5].tolist()} outside 0..{num_classes - 1} (wrong --num-classes or a corrupt label)")
    return problems


def _check_item(path: Path, ndim: int, num_classes: int, stats: SplitStats, problems: list[str]) -> None:
    try:
        image, label, _ = read_h5_pair(path, ndim)
    except DataError as exc:
        problems.append(str(exc))
        return
    item_problems = check_array_pair(path, image, label, num_classes)
    problems.extend(item_problems)
    stats.items += 1
    if np.issubdtype(label.dtype, np.integer):
        valid = label[(label >= 0) & (label < num_classes)]
        stats.class_voxels += np.bincount(valid.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    if ndim == 3:
        stats.slices += label.shape[0]


def check_dataset(root: str | Path, num_classes: int = 4, progress: bool = False) -> CheckReport:
    """Open and validate every file the lists name; never stops at the first problem.

    Raises :class:`DataError` only when the root or a list file is missing, or the manifest cannot be read (nothing to
    check against).
    """
    problems: list[str] = []  # a malformed list line is one of them, skipped: it stopped the whole check (the data CLI review)
    layout = AcdcLayout(root, num_classes, list_problems=problems)
    splits: dict[str, SplitStats] = {}
    try:
        class_names = layout.class_names
    except DataError as exc:  # the manifest names another number of classes than num_classes
        problems.append(str(exc))
        class_names = tuple(f"class {label}" for label in range(1, num_classes))  # not ACDC's names: they are unknown

    train = SplitStats("train", class_voxels=np.zeros(num_classes, dtype=np.int64))
    train.cases = len(layout.train_cases)
    for i, sid in enumerate(layout.train_slices):
        _check_item(layout.slice_path(sid), 2, num_classes, train, problems)
        if progress and (i + 1) % 500 == 0:
            print(f"  checked {i + 1}/{len(layout.train_slices)} training slices", file=sys.stderr)
    train.slices = len(layout.train_slices)
    splits["train"] = train
    # a training case's volume is not read by training (its slices are) but by `medseg predict --split all`, and the
    # manifest records its checksum: a missing one passed as "OK" (the converter review); checked for existence only
    problems += [f"{layout.volume_path(case)}: file is missing (every case has its volume in data/; convert the dataset again)"
                 for case in layout.train_cases if not layout.volume_path(case).is_file()]

    for name, cases in (("val", layout.val_cases), ("test", layout.test_cases)):
        stats = SplitStats(name, class_voxels=np.zeros(num_classes, dtype=np.int64))
        stats.cases = len(cases)
        for case in cases:
            _check_item(layout.volume_path(case), 3, num_classes, stats, problems)
        splits[name] = stats

    notes: list[str] = []
    for name, stats in splits.items():
        if stats.cases == 0:
            problems.append(f"{layout.root}: split '{name}' lists no cases")
        elif stats.items and not stats.class_voxels[1:].any():
            found = (f"split '{name}' has no foreground label in any of its files, so {_UNLABELLED_SPLIT[name]} (check its "
                     f"label files and {_LIST_OF_SPLIT[name]})")
            if name == "train":
                problems.append(f"{layout.root}: {found}")
            else:
                notes.append(found)
        elif stats.items:
            absent = [class_names[c - 1] if c - 1 < len(class_names) else f"class {c}"
                      for c in range(1, num_classes) if not stats.class_voxels[c]]
            if absent:
                notes.append(f"split '{name}' never holds {', '.join(absent)}: "
                             + ("no trial learns to segment it" if name == "train" else
                                f"{'its' if len(absent) == 1 else 'their'} Dice is undefined where nothing predicts it (left "
                                f"out of the {name} means) and 0 where something does"))
    for list_name, ids in ((TRAIN_LIST, layout.train_slices), (VAL_LIST, layout.val_cases), (TEST_LIST, layout.test_cases)):
        repeated = sorted(item for item, count in Counter(ids).items() if count > 1)
        if repeated:
            problems.append(f"{layout.root / list_name}: {len(repeated)} id(s) listed more than once, e.g. {repeated[0]!r} "
                            "(each slice or case once; a repeat counts it twice)")
    overlap = set(layout.train_cases) & (set(layout.val_cases) | set(layout.test_cases))
    overlap |= set(layout.val_cases) & set(layout.test_cases)
    if overlap:
        problems.append(f"{layout.root}: case(s) {sorted(overlap)[:5]} appear in more than one split (train/val/test must be disjoint)")
    else:
        problems += _patients_in_two_splits(layout)
    mixed = layout.mixed_spacing([*layout.val_cases, *layout.test_cases])
    if mixed:  # a note: trials scoring in voxels use the dataset as it is; in mm they refuse it (TrialConfig.validate)
        notes.append(mixed)
    changed = changed_files(layout.root)
    if changed:
        problems.append(f"{layout.root / MANIFEST}: {len(changed)} file(s) differ from the SHA-256 it records, e.g. "
                        f"{changed[0]} (changed after the dataset was written, and results could not tell the two versions "
                        "apart: convert or generate it again, restore the file, or delete the manifest's \"sha256\" entry to "
                        "accept the change; either way it is then another version of the dataset, whose earlier results and "
                        "cached pretraining stages are refused)")
    return CheckReport(layout.root, num_classes, splits, problems, class_names, notes)


def _patients_in_two_splits(layout: AcdcLayout) -> list[str]:
    """A problem line when one patient's cases (``patientXXX_frameNN``) sit in two splits: splits are by patient, and a
    test frame of a training patient leaks (docs/data.md, 'Splits')."""
    split_of: dict[str, set[str]] = {}
    for name, cases in (("train", layout.train_cases), ("val", layout.val_cases), ("test", layout.test_cases)):
        for case in cases:
            split_of.setdefault(patient_of_case(case), set()).add(name)
    shared = sorted(patient for patient, names in split_of.items() if len(names) > 1)
    if not shared:
        return []
    example = shared[0]
    where = " and ".join(name for name in ("train", "val", "test") if name in split_of[example])
    return [f"{layout.root}: {len(shared)} patient(s) have cases in more than one split, e.g. {example} in {where} (splits are "
            "by patient: the other frames of a training patient are not a test of generalisation); fix the list files"]


# ------------------------------------------------------------------------------------------ CLI
def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "check",
        help="validate a dataset (files, keys, dtypes, shapes, value ranges) and print its class balance",
        example="medseg data check data/phantom --num-classes 4",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("root", help="dataset root (SSL4MIS/ACDC layout)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes including background (default: the count its manifest records, else 4: ACDC)")
    parser.set_defaults(func=_run_cli)


def manifest_num_classes(root: str | Path) -> int | None:
    """The number of classes (background included) a dataset's manifest records: one more than its class names,
    else the converter's ``source.num_classes``; None when it records neither (a released SSL4MIS folder)."""
    root = Path(root).expanduser().resolve()
    manifest = read_manifest(root) if root.is_dir() else {}
    names = manifest.get("class_names")
    if isinstance(names, list) and names:
        return len(names) + 1
    source = manifest.get("source")
    count = source.get("num_classes") if isinstance(source, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


#: Problems `medseg data check` prints before counting the rest (a wrong --num-classes made one line per file).
PRINTED_PROBLEMS = 20


def _run_cli(args) -> int:
    num_classes, source = args.num_classes, f"--num-classes {args.num_classes}"
    if num_classes is None:  # the manifest's count, else ACDC's 4 (always in range)
        recorded = manifest_num_classes(args.root)
        num_classes = 4 if recorded is None else recorded
        source = f"{Path(args.root).expanduser().resolve() / MANIFEST}: {num_classes} classes"
    if not 2 <= num_classes <= MAX_CLASSES:
        raise DataError(f"{source}: the number of classes must be from 2 (background and one structure) to {MAX_CLASSES} "
                        "(labels are stored as uint8)")
    report = check_dataset(args.root, num_classes, progress=True)
    for problem in report.problems[:PRINTED_PROBLEMS]:
        print(f"problem: {problem}")
    if len(report.problems) > PRINTED_PROBLEMS:
        print(f"problem: ... and {len(report.problems) - PRINTED_PROBLEMS} more ({len(report.problems)} in all; "
              "fix the ones above and check again)")
    for line in report.summary_lines():
        print(line)
    return 0 if report.ok else 1
