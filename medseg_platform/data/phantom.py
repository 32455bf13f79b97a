"""The embedded default dataset: a synthetic cardiac short-axis cine MRI phantom (``medseg data phantom``).

The phantom is written in the SSL4MIS/ACDC layout (docs/data.md, 'ACDC layout') through the layout writers, so
the platform's default path exercises the same reader as real ACDC. Each patient ``patientNNN`` (001, 002, ...)
has two frames, ``patientNNN_frame01`` (ED) and ``patientNNN_frame02`` (ES), of 6-10 base-to-apex slices.
The anatomy (see :mod:`medseg_platform.data.phantom_anatomy`): a bright LV blood pool (label 3, papillary
muscles included) inside a dark myocardial ring (2), a bright RV crescent on the septal side (1) that
fades out before the apex (no RV in the apical slices), around it unlabelled structure: body outline with
subcutaneous fat as bright as blood, chest-wall muscle as dark as myocardium, dark lungs, a liver rising
toward the apex, spine, descending aorta (bright blood, label 0), an outflow vessel in some basal slices,
pericardial fat and a thin unlabelled RV free wall. ES has smaller cavities and a thicker wall. Per patient
the heart size, position, rotation and ellipticity, the field of view and image size (±10 %, non-square),
the tissue contrasts, a multiplicative bias field, texture, partial-volume blur, per-slice gain and
breath-hold shifts and the Rician noise level all vary. Volumes are min-max normalised to [0, 1] float32.
At ``--size S`` the in-plane spacing is U(1.2, 1.8)·128/S mm (so the anatomy covers the same field of view
at any size); slice thickness is U(5, 10) mm. Patients are split 70/10/20 % into train/val/test
(at least one each), deterministically from the seed; ``train_slices.list`` lists the training slices in
patient order, frame01 before frame02.

Measured difficulty (``benchmarks/phantom_gap.py``: default phantom of 20 patients at 128 px, slices
resized to 96 px, a 4-level UNet of 57k parameters, 400 Adam steps of batch 8 with CE + Dice on 2 CPU
cores, ~30 s per run, no augmentation; mean foreground Dice over the 8 test volumes of 4 patients):
seed 0: 1 labelled patient 0.410, 3 patients 0.677, all 14 training patients 0.864; seed 1: 1 patient
0.446, all 0.851. So one labelled patient leaves a gap of about 40 Dice points to full supervision while
full supervision is clearly learnable. Class fractions of the default phantom: background 92.6 %,
RV 1.5 %, Myo 3.6 %, LV 2.3 % of voxels (RV the rarest class, as in ACDC).

Everything is deterministic: patient ``i`` is drawn from ``SeedSequence([seed, i])`` (the same patient for
any ``--patients``), the split from ``SeedSequence([seed, patients, _SPLIT_STREAM])``, and the layout
writers produce byte-identical files. :func:`ensure_phantom` caches datasets under
``<cache_root>/phantom-<key>``; a dataset is built in a hidden temporary folder and renamed into place,
so a killed generation never leaves a folder that looks complete.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medseg_platform.data import layout
from medseg_platform.data.phantom_anatomy import FRAMES, sample_patient, synthesize_case
from medseg_platform.errors import ConfigError, DataError
from medseg_platform.io import check_folder_writable, check_output_folder, raise_if_interrupted, removed_if_terminated

PHANTOM_VERSION = 1  # bump whenever the generated data changes; it is part of the cache key
DEFAULT_PATIENTS = 20
DEFAULT_SIZE = 128
DEFAULT_SEED = 0
MIN_PATIENTS = 3  # one patient each for train, val and test
MAX_PATIENTS = 999  # three-digit patient numbers
MIN_SIZE = 32
MAX_SIZE = 1024
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
_SPLIT_STREAM = 0x5B1
#: Names of the labels the phantom draws (phantom_anatomy.LABEL_OF_TISSUE: 1 RV blood, 2 myocardium, 3 LV
#: blood pool with papillary muscles), recorded in its manifest for tables and plots.
PHANTOM_CLASS_NAMES = ("RV", "Myo", "LV")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PhantomParams:
    """The parameters that fully determine a phantom dataset."""

    patients: int = DEFAULT_PATIENTS
    size: int = DEFAULT_SIZE
    seed: int = DEFAULT_SEED

    def validate(self) -> "PhantomParams":
        """Return self, or raise a one-line :class:`ConfigError` naming the bad value."""
        checks = (
            ("patients", self.patients, MIN_PATIENTS, MAX_PATIENTS, "so that train, val and test each get a patient"),
            ("size", self.size, MIN_SIZE, MAX_SIZE, "the in-plane image size in pixels"),
            ("seed", self.seed, 0, 2**63 - 1, "a non-negative integer"),
        )
        for name, value, lo, hi, why in checks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ConfigError(f"phantom: {name}={value!r} is out of range (use an integer in [{lo}, {hi}], {why})")
        return self

    def source(self) -> dict:
        """The manifest's ``source`` entry: generator name, version and parameters."""
        return {"generator": "phantom", "version": PHANTOM_VERSION, "params": {k: int(v) for k, v in asdict(self).items()}}

    def key(self) -> str:
        """Short hash (12 hex digits) of the parameters and :data:`PHANTOM_VERSION`."""
        return layout.phantom_source_key(self.source())

    def __str__(self) -> str:
        return f"patients={self.patients}, size={self.size}, seed={self.seed}"


# ------------------------------------------------------------------------------------ naming
def patient_id(index: int) -> str:
    """0-based patient index -> ``patientNNN`` (1-based, three digits)."""
    return f"patient{index + 1:03d}"


def case_id(index: int, frame: str) -> str:
    """``(0, "ED")`` -> ``patient001_frame01``; ES is ``frame02``."""
    return f"{patient_id(index)}_frame{FRAMES.index(frame) + 1:02d}"


# ------------------------------------------------------------------------------------ splits
def split_counts(patients: int) -> tuple[int, int, int]:
    """Numbers of (train, val, test) patients: 70/10/20 % rounded, at least one each."""
    n_val = max(1, int(round(patients * SPLIT_FRACTIONS[1])))
    n_test = max(1, int(round(patients * SPLIT_FRACTIONS[2])))
    return patients - n_val - n_test, n_val, n_test


def split_patients(patients: int, seed: int) -> dict[str, list[int]]:
    """Random, seed-determined assignment of 0-based patient indices to train/val/test (each sorted)."""
    n_train, n_val, _ = split_counts(patients)
    order = np.random.default_rng(np.random.SeedSequence([seed, patients, _SPLIT_STREAM])).permutation(patients)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {name: sorted(int(i) for i in idx) for name, idx in parts.items()}


# -------------------------------------------------------------------------------- generation
def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of patient ``index`` (0-based): independent of the number of patients."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def make_patient(params: PhantomParams, index: int) -> dict[str, tuple[np.ndarray, np.ndarray, tuple]]:
    """Both frames of one patient: ``{"ED"|"ES": (image float32 D×H×W, label uint8 D×H×W, spacing)}``."""
    rng = patient_rng(params.seed, index)
    anatomy = sample_patient(rng, params.size)
    return {frame: (*synthesize_case(anatomy, frame, rng), anatomy.spacing) for frame in FRAMES}


def _write_all(root: Path, params: PhantomParams, progress: Progress | None) -> None:
    """Generate every patient into the (empty, existing) folder ``root`` and write lists and manifest."""
    split_of = {i: name for name, idx in split_patients(params.patients, params.seed).items() for i in idx}
    slices: list[str] = []
    lists: dict[str, list[str]] = {"val": [], "test": []}
    cases: dict[str, dict] = {}
    for index in range(params.patients):
        raise_if_interrupted()
        split = split_of[index]
        frames = make_patient(params, index)
        for frame, (image, label, spacing) in frames.items():
            case = case_id(index, frame)
            ids = layout.write_case(root, case, image, label, spacing, with_slices=split == "train")
            if split == "train":
                slices += ids
            else:
                lists[split].append(case)
            cases[case] = {"patient": patient_id(index), "frame": frame, "spacing": [float(s) for s in spacing], "split": split}
        if progress is not None:
            d, h, w = frames["ED"][0].shape
            progress(f"phantom: patient {index + 1}/{params.patients} {patient_id(index)} ({split}, {d} slices of {h}x{w})")
    layout.write_lists(root, slices, lists["val"], lists["test"])
    layout.write_manifest(root, params.source(), cases, PHANTOM_CLASS_NAMES)


def _manifest(root: str | os.PathLike) -> dict | None:
    """``root``'s manifest as a dict, or None when it is absent, unreadable or not a JSON object."""
    try:
        return layout.read_manifest(root) or None
    except (DataError, OSError):
        return None


def holds_phantom(root: str | os.PathLike, params: PhantomParams) -> bool:
    """True if ``root`` holds a complete phantom made with exactly ``params`` (manifest matches, files exist)."""
    manifest = _manifest(root)
    if manifest is None or manifest.get("source") != params.source():
        return False
    return all((Path(root) / rel).is_file() for rel in manifest.get("sha256", {}))


def _describe_existing(root: Path) -> str:
    """What a non-empty folder holds, for the refusal message."""
    manifest = _manifest(root)
    if manifest is None:
        return "is not empty"
    source = manifest.get("source", {})
    if isinstance(source, dict) and source.get("generator") == "phantom":
        p = source.get("params", {})
        return f"holds another phantom (version {source.get('version')}, patients={p.get('patients')}, size={p.get('size')}, seed={p.get('seed')})"
    return "holds another dataset"


def _check_target(out: Path, params: PhantomParams) -> bool:
    """True if ``out`` already holds this phantom; False if it is absent or an empty folder; else ConfigError."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder (choose another --out)")
    if holds_phantom(out, params):
        return True
    if out.is_dir() and any(out.iterdir()):
        if (_manifest(out) or {}).get("source") == params.source():
            raise ConfigError(f"{out}: holds an incomplete copy of the phantom with {params} (files its manifest lists are "
                              "missing); delete the folder and rerun")
        raise ConfigError(f"{out}: folder {_describe_existing(out)}, not the phantom with {params} "
                          "(choose an empty or new --out, or delete it)")
    return False


def generate_phantom(
    out: str | os.PathLike,
    patients: int = DEFAULT_PATIENTS,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    progress: Progress | None = None,
    what: str = "--out",
) -> Path:
    """Write the phantom into ``out`` (absent or empty folder) atomically; returns ``out``. ``what``: how errors name
    the folder (the CLI's flag, or the cache a study reads it from).

    If ``out`` already holds the same phantom nothing is done. A non-empty ``out`` holding anything else
    raises :class:`ConfigError`. The data are built in a hidden sibling folder and renamed onto ``out``.
    """
    params = PhantomParams(patients, size, seed).validate()
    if not str(out).strip():
        raise ConfigError(f"{what} '': give the folder to write the phantom into")
    check_output_folder(out, what, writes=None)
    out = Path(out).expanduser().absolute()
    if _check_target(out, params):
        return out
    check_folder_writable(out, what, beside=True)  # staged next to out (not needed when out already holds it)
    tmp = out.parent / f"{_staging_prefix(out)}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(out)
        tmp.mkdir()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror}); choose a writable place") from None
    try:
        with removed_if_terminated(tmp):
            _write_all(tmp, params, progress)
            raise_if_interrupted()  # a Ctrl-C that Python swallowed: no phantom moved into place
            try:
                os.replace(tmp, out)
            except OSError:
                if not holds_phantom(out, params):  # a concurrent writer may have finished first
                    raise ConfigError(f"{out}: could not move the generated phantom into place (is the folder in use?)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _staging_prefix(out: Path) -> str:
    """Staging folders of ``out`` are ``.<name>.tmp-<host>-<pid>-<random>`` beside it (the host: a cache folder may be
    shared by the nodes of a cluster, and a process id means something only on its own host)."""
    return f".{out.name}.tmp-{socket.gethostname()}-"


def remove_dead_staging(out: Path) -> list[Path]:
    """Remove this host's staging folders of ``out`` whose writer process is gone (a SIGKILLed generation); returns them."""
    removed = []
    prefix = _staging_prefix(out)
    for path in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def phantom_cache_path(cache_root: str | os.PathLike, patients: int, size: int, seed: int) -> Path:
    """``<cache_root>/phantom-<key>`` for these parameters (whether or not it exists)."""
    return Path(cache_root).expanduser().absolute() / f"phantom-{PhantomParams(patients, size, seed).validate().key()}"


def ensure_phantom(
    cache_root: str | os.PathLike,
    patients: int = DEFAULT_PATIENTS,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    progress: Progress | None = None,
) -> Path:
    """Return the cached phantom folder for these parameters, generating it first only if it is not complete."""
    path = phantom_cache_path(cache_root, patients, size, seed)
    if holds_phantom(path, PhantomParams(patients, size, seed)):
        return path
    return generate_phantom(path, patients, size, seed, progress,
                            what="the phantom's cache folder ($MEDSEG_CACHE, default ~/.cache/medseg-platform)")


# --------------------------------------------------------------------------------------- CLI
def _run(args) -> int:
    params = PhantomParams(args.patients, args.size, args.seed).validate()
    if not args.out.strip():
        raise ConfigError("--out '': give the folder to write the phantom into")
    check_output_folder(args.out, "--out", writes=None)  # generate_phantom checks the write once it has work to do
    out = Path(args.out).expanduser().absolute()
    if _check_target(out, params):
        changed = layout.changed_files(out)
        if changed:
            shown = ", ".join(changed[:3]) + (f", ... ({len(changed)} in all)" if len(changed) > 3 else "")
            raise DataError(f"{out}: holds the phantom with {params}, but {shown} differ(s) from its manifest's checksums; "
                            "delete the folder and rerun to write it again")
        print(f"{out} already holds the phantom with {params} (checksums verified); nothing to do")
        return 0
    start = time.perf_counter()
    generate_phantom(out, params.patients, params.size, params.seed, progress=None if args.quiet else print)
    n_train, n_val, n_test = split_counts(params.patients)
    n_slices = len(layout.AcdcLayout(out).train_slices)
    print(
        f"wrote phantom ({params}) to {out}: {n_train} train patient{'s' if n_train != 1 else ''} ({n_slices} slices), "
        f"{n_val} val, {n_test} test, in {time.perf_counter() - start:.1f} s"
    )
    return 0


def add_cli(subparsers) -> None:
    """Add ``phantom`` to the ``medseg data`` commands."""
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "phantom",
        help="write the synthetic cardiac MRI phantom dataset (ACDC layout)",
        example="medseg data phantom --out data/phantom --patients 20 --size 128 --seed 0",
        description=(
            "Write a synthetic cardiac short-axis cine MRI dataset (labels 0 bg, 1 RV, 2 Myo, 3 LV)\n"
            "in the SSL4MIS/ACDC layout, split 70/10/20 % into train/val/test.\n"
            "The same parameters give byte-identical files."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (absent or empty; re-running with the same parameters is a no-op)")
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS,
                        help=f"number of patients, {MIN_PATIENTS} to {MAX_PATIENTS} (default {DEFAULT_PATIENTS})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"approximate in-plane size in pixels, {MIN_SIZE} to {MAX_SIZE} (default {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed, >= 0 (default {DEFAULT_SEED})")
    parser.add_argument("--quiet", action="store_true", help="no per-patient progress lines")
    parser.set_defaults(func=_run)
