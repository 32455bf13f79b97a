"""Converters from raw NIfTI data to the SSL4MIS/ACDC layout (docs/data.md, 'ACDC layout').

``medseg data convert-acdc RAW_DIR OUT_DIR``
    The ACDC challenge release: ``patientNNN/`` folders anywhere under RAW_DIR (e.g. ``training/`` and
    ``testing/``), each with ``Info.cfg`` (``ED: 1``, ``ES: 12``, ``Group: DCM``, ...) and the ED/ES frames
    ``patientNNN_frameMM.nii.gz`` + ``patientNNN_frameMM_gt.nii.gz``; the 4-D cine file is ignored.
    ED becomes case ``patientNNN_frame01`` and ES ``patientNNN_frame02`` (SSL4MIS's naming); the original
    frame numbers go to the manifest. Default split: SSL4MIS's published 70/10/20 patient split and order.

``medseg data convert-nifti RAW_DIR OUT_DIR --image-glob GLOB --label-suffix SUFFIX``
    Any folder of image/label NIfTI pairs; a seeded random patient split.

Both record the names of labels 1..N-1 in the manifest (``--class-names A,B,...``; ACDC's default is
RV,Myo,LV, convert-nifti's ``class 1``, ``class 2``, ...); tables, plots and reports show them. Each case's
``affine`` and ``oriented`` (the source image's, :func:`~medseg_platform.data.nifti.source_grid`) let ``medseg predict``
write NIfTI predictions on the source grid.

Both: per-volume min-max to [0,1] float32, no resampling, NIfTI ``(X, Y, Z)`` -> ``(D, H, W) = (Z, Y, X)``
with spacing ``(dz, dy, dx)`` (see :mod:`medseg_platform.data.nifti`). Slices are written for training
cases only, volumes for every case. Output is built in a hidden staging folder next to OUT_DIR and moved
into place only when complete, so a failed run leaves an existing OUT_DIR untouched. Identical inputs give
byte-identical outputs (the manifest records only the raw folder's name, not its path).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from medseg_platform import __version__
from medseg_platform.cli import command_parser
from medseg_platform.data.acdc_split import Split, SplitSpec, make_split
from medseg_platform.data.layout import (
    ACDC_CLASS_NAMES,
    LAYOUT_FORMAT,
    MANIFEST,
    TEST_LIST,
    TRAIN_LIST,
    VAL_LIST,
    check_class_names,
    parse_class_names,
    patient_of_case,
    read_manifest,
    write_case,
    write_lists,
    write_manifest,
)
from medseg_platform.data.nifti import (
    check_same_grid,
    find_nifti_pairs,
    image_shape_text,
    nifti_files_left_out,
    load_pair,
    read_header,
    read_label,
    source_grid,
)
from medseg_platform.errors import ConfigError, DataError
from medseg_platform.io import check_output_folder, raise_if_interrupted, removed_if_terminated, signals_deferred

ACDC_NUM_CLASSES = 4  # 0 background, 1 RV, 2 Myo, 3 LV
ACDC_PHASES = (("ED", "frame01"), ("ES", "frame02"))
_PATIENT_DIR_RE = re.compile(r"patient\d{3}")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default logger: say nothing."""


# --------------------------------------------------------------------------------- case sources
@dataclass(frozen=True)
class CaseSource:
    """One raw case to convert: output ``case`` id, its ``patient``, the NIfTI ``image``/``label`` paths and
    extra JSON-able ``facts`` for the manifest (e.g. ACDC phase and original frame number)."""

    case: str
    patient: str
    image: Path
    label: Path
    facts: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote: the output root, the patient split and the number of training slices."""

    out_dir: Path
    split: Split
    num_slices: int
    num_cases: int
    skipped: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------- ACDC
def read_info_cfg(path: Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dict of stripped strings."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "is missing"
        raise DataError(f"{path}: Info.cfg {problem} (each ACDC patient folder needs it for the ED/ES frame numbers)")
    info: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DataError(f"{path}: line {lineno} {line.strip()!r} is not 'Key: value' (restore the file from the ACDC release)")
        info[key.strip()] = value.strip()
    return info


def info_frame(info: Mapping[str, str], key: str, path: Path) -> int:
    """The 1-based frame number of phase ``key`` (``ED`` or ``ES``) from a parsed Info.cfg."""
    if key not in info:
        raise DataError(f"{path}: no '{key}:' line (the {key} frame number is required; restore the file from the ACDC release)")
    try:
        frame = int(info[key])
    except ValueError:
        raise DataError(f"{path}: {key}: {info[key]!r} is not a frame number (expected e.g. '{key}: 1')") from None
    if frame < 1:
        raise DataError(f"{path}: '{key}: {frame}' must be a frame number >= 1")
    return frame


def find_acdc_patient_dirs(raw_dir: Path) -> dict[str, Path]:
    """``patientNNN`` folders anywhere under ``raw_dir`` (sorted by id). Two folders of one patient is an error."""
    found: dict[str, Path] = {}
    for path in sorted(raw_dir.rglob("patient*")):
        if not (_PATIENT_DIR_RE.fullmatch(path.name) and path.is_dir()):
            continue
        if path.name in found:
            raise DataError(f"{path}: patient {path.name} is also at {found[path.name]} (keep one copy)")
        found[path.name] = path
    if not found:
        if _PATIENT_DIR_RE.fullmatch(raw_dir.name):
            raise DataError(f"{raw_dir}: RAW_DIR is one patient's folder; point it at the folder that holds the patientNNN "
                            f"folders (e.g. {raw_dir.parent})")
        raise DataError(f"{raw_dir}: no patientNNN folders found (point RAW_DIR at the unpacked ACDC release)")
    return dict(sorted(found.items()))


def acdc_case_sources(patient_dir: Path) -> list[CaseSource]:
    """The ED and ES cases of one ACDC patient folder; checks Info.cfg and that the four files exist."""
    patient = patient_dir.name
    info_path = patient_dir / "Info.cfg"
    info = read_info_cfg(info_path)
    frames = {phase: info_frame(info, phase, info_path) for phase, _ in ACDC_PHASES}
    if frames["ED"] == frames["ES"]:
        raise DataError(f"{info_path}: ED and ES are the same frame {frames['ED']} (restore the file from the ACDC release)")
    sources = []
    for phase, new_frame in ACDC_PHASES:
        stem = f"{patient}_frame{frames[phase]:02d}"
        image, label = patient_dir / f"{stem}.nii.gz", patient_dir / f"{stem}_gt.nii.gz"
        for path in (image, label):
            if not path.is_file():
                raise DataError(f"{path}: {phase} frame file is missing (Info.cfg says {phase}: {frames[phase]})")
        facts = {"phase": phase, "frame": frames[phase], "group": info.get("Group")}
        sources.append(CaseSource(f"{patient}_{new_frame}", patient, image, label, facts))
    return sources


# ------------------------------------------------------------------------------------- generic
def nifti_case_sources(raw_dir: Path, image_glob: str, label_suffix: str) -> list[CaseSource]:
    """Cases of a generic folder; a case named ``<patient>_frameNN`` belongs to ``<patient>``, else to itself."""
    return [
        CaseSource(pair.case, patient_of_case(pair.case), pair.image, pair.label)
        for pair in find_nifti_pairs(raw_dir, image_glob, label_suffix)
    ]


# -------------------------------------------------------------------------------------- output
def check_output_dir(out_dir: Path, raw_dir: Path, overwrite: bool) -> None:
    """Refuse an OUT_DIR that is RAW_DIR or contains it, a file, or a non-empty folder (unless ``overwrite``
    and it looks like a converted dataset)."""
    if out_dir == raw_dir or out_dir in raw_dir.parents:
        raise ConfigError(f"{out_dir}: OUT_DIR must not be RAW_DIR or contain it (choose another output folder)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: OUT_DIR exists and is not a folder (choose another output folder)")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out_dir}: OUT_DIR is not empty (pass --overwrite to replace it, or choose another folder)")
    refuse = "refusing to replace it even with --overwrite (delete it yourself or choose another folder)"
    if not ((out_dir / MANIFEST).is_file() or (out_dir / TRAIN_LIST).is_file()):
        raise ConfigError(f"{out_dir}: OUT_DIR is not empty and has no {MANIFEST} or {TRAIN_LIST}, so it does not look like a "
                          f"converted dataset; {refuse}")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in DATASET_ENTRIES) + foreign_data_entries(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise ConfigError(f"{out_dir}: OUT_DIR holds entries a converted dataset does not have ({shown}), which --overwrite "
                          f"would delete; {refuse}")
    if (out_dir / MANIFEST).is_file():
        try:
            manifest = read_manifest(out_dir)
        except DataError:
            manifest = {}
        if manifest.get("format") != LAYOUT_FORMAT:
            raise ConfigError(f"{out_dir / MANIFEST}: not the manifest of a converted dataset (no \"format\": "
                              f"\"{LAYOUT_FORMAT}\"); {refuse}")


DATASET_ENTRIES = frozenset({"data", MANIFEST, TRAIN_LIST, VAL_LIST, TEST_LIST, "train.list",
                             ".DS_Store", "Thumbs.db", "desktop.ini"})
"""Top-level entries of a dataset root (the converters' and the SSL4MIS release's, whose ``train.list``
names volumes), and the folder-view files macOS and Windows drop into any folder: the only ones ``--overwrite``
replaces."""


def foreign_data_entries(out_dir: Path) -> list[str]:
    """Entries of ``out_dir/data`` that a converted dataset does not write (anything but ``<case>.h5`` files and a
    ``slices`` folder of ``.h5`` files, and folder-view files), as paths relative to ``out_dir``; ``--overwrite``
    would delete them with the folder."""
    data = out_dir / "data"
    if not data.is_dir():
        return []
    ignored = {".DS_Store", "Thumbs.db", "desktop.ini"}  # folder-view files (DATASET_ENTRIES' others are top-level only)

    def odd(folder: Path, sub_folder_ok: bool) -> list[str]:
        out = []
        for entry in sorted(folder.iterdir()):
            if entry.name in ignored or (entry.suffix == ".h5" and entry.is_file() and not entry.is_symlink()):
                continue
            if sub_folder_ok and entry.name == "slices" and entry.is_dir() and not entry.is_symlink():
                out += odd(entry, False)
            else:
                out.append(entry.relative_to(out_dir).as_posix())
        return out

    return odd(data, True)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to ``out_dir``; on success it replaces ``out_dir``, on error it is removed."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        raise ConfigError(f"OUT_DIR {out_dir}: cannot create the folder ({exc.strerror}); choose a writable place") from None
    try:
        os.chmod(staging, 0o777 & ~_umask())
        with removed_if_terminated(staging):
            yield staging
            raise_if_interrupted()  # a Ctrl-C that Python swallowed must not replace the old dataset
            with signals_deferred():  # the old dataset is never left half-swapped
                old = None
                if out_dir.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                    os.replace(out_dir, old)
                try:
                    os.replace(staging, out_dir)
                except BaseException:
                    if old is not None:
                        os.replace(old, out_dir)  # the old dataset back where it was
                    raise
                if old is not None:
                    shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: Voxel sizes (mm, after the header's unit) a conversion accepts without a warning. Clinical CT and MRI voxels are
#: about 0.2-10 mm (ACDC: 0.7-1.9 mm in plane, 5-10 mm between slices); a size outside this wide range is most often
#: a unit error (metres or microns written as mm, or the unit code missing), and HD95 and ASD, reported in mm, scale
#: with it.
PLAUSIBLE_SPACING_MM = (0.01, 100.0)


def implausible_spacing_warning(spacings: Mapping[Path, Sequence[float]]) -> str | None:
    """The warning for the volumes whose voxel sizes (mm, (dz, dy, dx)) fall outside :data:`PLAUSIBLE_SPACING_MM`,
    naming the first and counting the rest; None when every size is inside it."""
    low, high = PLAUSIBLE_SPACING_MM
    odd = [(path, spacing) for path, spacing in spacings.items() if any(not low <= s <= high for s in spacing)]
    if not odd:
        return None
    path, spacing = odd[0]
    more = f" and {len(odd) - 1} more" if len(odd) > 1 else ""
    return (f"voxel sizes outside {low:g}-{high:g} mm: {path} has (dz, dy, dx) = "
            f"({', '.join(f'{s:g}' for s in spacing)}) mm{more} ({len(odd)} of {len(spacings)} volume(s)). HD95 and ASD are "
            "reported in mm and scale with these sizes: if the header's pixdim is in metres or microns, set its unit "
            "(xyzt_units), which the conversion reads and converts")


def preflight(sources: Sequence[CaseSource], num_classes: int, split: Split, warn: Log = _quiet) -> dict[str, np.ndarray]:
    """Checks of every pair before anything is written: readable headers, equal (D, H, W) shapes, voxel sizes and
    orientations (headers only), then every label's values (label files are small: a bad value in the last patient
    used to stop the conversion only after every other patient was converted). Voxel sizes outside
    :data:`PLAUSIBLE_SPACING_MM` are one ``warn`` line. Returns the label voxels per class (int64 (num_classes,)) of
    each part of ``split`` ("train", "val", "test")."""
    spacings = {}
    for src in sources:
        image = read_header(src.image)
        check_same_grid(image, read_header(src.label))
        spacings[src.image] = image.spacing
    message = implausible_spacing_warning(spacings)
    if message:
        warn(message)
    voxels = {part: np.zeros(num_classes, dtype=np.int64) for part in ("train", "val", "test")}
    for src in sources:
        voxels[split.of(src.patient)] += np.bincount(read_label(src.label, num_classes).ravel(), minlength=num_classes)
    return voxels


def _relative(path: Path, raw_dir: Path) -> str:
    """``path`` relative to ``raw_dir`` in POSIX form (what the manifest records)."""
    return Path(os.path.relpath(path, raw_dir)).as_posix()


def write_cases(
    root: Path,
    sources: Sequence[CaseSource],
    split: Split,
    raw_dir: Path,
    num_classes: int,
    log: Log,
) -> tuple[list[str], dict[str, dict]]:
    """Load, preprocess and write every case of ``split`` (train patients in order, then val, then test).

    Returns the training slice ids in ``train_slices.list`` order and the manifest facts per case.
    """
    by_patient: dict[str, list[CaseSource]] = {}
    for src in sources:
        by_patient.setdefault(src.patient, []).append(src)
    train_slices: list[str] = []
    facts: dict[str, dict] = {}
    for index, patient in enumerate(split.patients, 1):
        part = split.of(patient)
        notes = []
        for src in by_patient[patient]:
            raise_if_interrupted()
            case = load_pair(src.image, src.label, num_classes)
            train_slices += write_case(root, src.case, case.image, case.label, case.spacing, with_slices=part == "train")
            facts[src.case] = {
                "patient": patient,
                "split": part,
                "shape": list(case.image.shape),
                "spacing": list(case.spacing),
                "source_image": _relative(src.image, raw_dir),
                "source_label": _relative(src.label, raw_dir),
                **source_grid(src.image),  # affine, oriented: medseg predict writes NIfTI predictions on the source grid
                "intensity_range": list(case.intensity_range),
                **src.facts,
            }
            phase = f" {src.facts['phase']} frame {src.facts['frame']}" if "phase" in src.facts else ""
            notes.append(f"{src.case}{phase} {image_shape_text(case.image.shape)}")
        log(f"[{index}/{len(split.patients)}] {patient} ({part}): " + ", ".join(notes))
    return train_slices, facts


def _cases_of(patients: Sequence[str], sources: Sequence[CaseSource]) -> list[str]:
    """Case ids of ``patients`` in patient order, cases in source order."""
    order = {p: i for i, p in enumerate(patients)}
    chosen = [src for src in sources if src.patient in order]
    return [src.case for src in sorted(chosen, key=lambda s: order[s.patient])]


def run_conversion(
    raw_dir: Path,
    out_dir: Path,
    sources: Sequence[CaseSource],
    split: Split,
    source_info: Mapping[str, object],
    num_classes: int,
    log: Log,
    class_names: Sequence[str] | None = None,
    warn: Log = _quiet,
) -> ConversionResult:
    """Preflight, then write cases, lists and manifest (with ``class_names``) into staging and move it to ``out_dir``.
    A foreground class that no label holds is a ``warn`` line (most often a ``--num-classes`` above the data's)."""
    chosen = [src for src in sources if src.patient in set(split.patients)]
    voxels = preflight(chosen, num_classes, split, warn)
    # another split: another --seed of the random split; the published split has none (`--split random --seed N`)
    redraw = "--seed" if source_info.get("split") == "random" else "--split random --seed N"
    if not voxels["train"][1:].any():  # `medseg data check` and every trial would refuse the dataset
        raise DataError(f"{raw_dir}: the labels of the {len(split.train)} training patient(s) hold no foreground (every voxel is "
                        "background), so there is nothing to learn; check the label files and --label-suffix"
                        + (f", or draw another split ({redraw})" if any(v[1:].any() for v in voxels.values()) else ""))
    for part in ("val", "test"):
        if getattr(split, part) and not voxels[part][1:].any():
            warn(f"the labels of the {len(getattr(split, part))} {part} patient(s) hold no foreground: "
                 + ("validation Dice cannot tell models apart" if part == "val" else "the test metrics score no structure")
                 + f" (check the label files, or draw another split with {redraw})")
    total = sum(voxels.values())
    absent = [c for c in range(1, num_classes) if total[c] == 0]
    if absent:
        names = [class_names[c - 1] if class_names else f"class {c}" for c in absent]
        warn(f"{', '.join(f'label {c} ({name})' for c, name in zip(absent, names))}: in no label of the {len(chosen)} "
             f"volume(s): no trial learns to segment it. Check --num-classes {num_classes} (background included) if the data "
             "holds fewer classes")
    with staged_output(out_dir) as staging:
        train_slices, facts = write_cases(staging, chosen, split, raw_dir, num_classes, log)
        write_lists(staging, train_slices, _cases_of(split.val, chosen), _cases_of(split.test, chosen))
        write_manifest(staging, source_info, facts, class_names)
    log(f"wrote {out_dir}: {len(split.train)}/{len(split.val)}/{len(split.test)} train/val/test patients, "
        f"{len(train_slices)} training slices, {len(chosen)} volumes")
    return ConversionResult(out_dir, split, len(train_slices), len(chosen))


def _source_info(converter: str, raw_dir: Path, spec: SplitSpec, split: Split, num_classes: int) -> dict:
    """The manifest's ``source`` block (no absolute paths, so it is the same wherever the data lives)."""
    info: dict[str, object] = {
        "converter": f"medseg data {converter}",
        "version": __version__,
        "raw_dir": raw_dir.name,
        "split": spec.kind,
        "seed": spec.effective_seed(),
        "num_classes": num_classes,
        "patients": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "preprocessing": "per-volume min-max to [0,1] float32, no resampling; (D,H,W) = NIfTI (Z,Y,X), spacing (dz,dy,dx) mm",
    }
    if spec.kind == "random":
        info.update(val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                    val_count=spec.val_count, test_count=spec.test_count)
    return info


def _resolved_dirs(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """Absolute RAW_DIR (must be a folder) and OUT_DIR (checked by :func:`check_output_dir`)."""
    for flag, value in (("RAW_DIR", raw_dir), ("OUT_DIR", out_dir)):
        if not str(value).strip():
            raise ConfigError(f"{flag} '': give a folder path")
    raw = Path(raw_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if not raw.is_dir():
        raise DataError(f"{raw}: RAW_DIR does not exist or is not a folder")
    check_output_folder(out, "OUT_DIR", writes="beside")  # staged next to OUT_DIR, then renamed onto it
    check_output_dir(out, raw, overwrite)
    return raw, out


# ------------------------------------------------------------------------------------ public API
def convert_acdc(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: SplitSpec = SplitSpec(),
    overwrite: bool = False,
    log: Log = _quiet,
    warn: Log = _quiet,
    class_names: Sequence[str] = ACDC_CLASS_NAMES,
) -> ConversionResult:
    """Convert the ACDC release under ``raw_dir`` to the SSL4MIS layout in ``out_dir`` (docs/data.md,
    'ACDC layout').

    ``split.kind == "published"`` uses SSL4MIS's split and order restricted to the patients present (``warn``
    reports missing and extra patients; extras are not converted). ``class_names``: names of labels 1..3 for
    the manifest. Raises :class:`DataError`/:class:`ConfigError` with a one-line message naming the file for
    bad input; an existing ``out_dir`` is kept on failure.
    """
    class_names = check_class_names(class_names, ACDC_NUM_CLASSES, "--class-names")
    raw, out = _resolved_dirs(raw_dir, out_dir, overwrite)
    patient_dirs = find_acdc_patient_dirs(raw)
    chosen = make_split(list(patient_dirs), split)
    skipped = tuple(p for p in patient_dirs if p not in set(chosen.patients))
    if chosen.missing:
        warn(f"{len(chosen.missing)} of the 100 published patients are not in {raw} (converting the {len(chosen.patients)} present)")
    if skipped:
        warn(f"{len(skipped)} patient(s) are not in the published split and are skipped: {', '.join(skipped[:5])}"
             f"{', ...' if len(skipped) > 5 else ''} (use --split random to include them)")
    sources = [src for patient in chosen.patients for src in acdc_case_sources(patient_dirs[patient])]
    info = _source_info("convert-acdc", raw, split, chosen, ACDC_NUM_CLASSES)
    if split.kind == "published":
        info.update(missing_published=len(chosen.missing), skipped_patients=list(skipped))
    result = run_conversion(raw, out, sources, chosen, info, ACDC_NUM_CLASSES, log, class_names, warn)
    return ConversionResult(result.out_dir, result.split, result.num_slices, result.num_cases, skipped)


def convert_nifti(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_glob: str = "*.nii.gz",
    label_suffix: str = "_gt",
    num_classes: int = ACDC_NUM_CLASSES,
    split: SplitSpec = SplitSpec(kind="random"),
    overwrite: bool = False,
    log: Log = _quiet,
    class_names: Sequence[str] | None = None,
    warn: Log = _quiet,
) -> ConversionResult:
    """Convert a folder of image/label NIfTI pairs to the SSL4MIS layout with a seeded random patient split.

    Labels must be integers ``0..num_classes-1``; ``class_names`` names labels 1..num_classes-1 (default
    ``class 1``, ``class 2``, ...: a generic dataset is not assumed to be cardiac). Same preprocessing, axis
    convention, manifest and determinism as :func:`convert_acdc`. NIfTI files under ``raw_dir`` that are neither a
    matched image nor its label are left out, with one ``warn`` line (the default glob does not recurse).
    """
    if split.kind != "random":
        raise ConfigError(f"--split {split.kind}: convert-nifti supports only --split random (the published split is ACDC's)")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= 256:
        raise ConfigError(f"--num-classes {num_classes!r}: must be an integer from 2 to 256 (background included)")
    if class_names is None:
        class_names = [f"class {k}" for k in range(1, num_classes)]
    class_names = check_class_names(class_names, num_classes, "--class-names")
    raw, out = _resolved_dirs(raw_dir, out_dir, overwrite)
    sources = nifti_case_sources(raw, image_glob, label_suffix)
    left_out = nifti_files_left_out(raw, [path for src in sources for path in (src.image, src.label)])
    if left_out:
        warn(f"{len(left_out)} NIfTI file(s) under {raw} are not converted: neither an image that --image-glob "
             f"{image_glob!r} matches nor its label (e.g. {left_out[0].relative_to(raw)}); to include them, widen the glob "
             "('**/*.nii.gz' also reads subfolders)")
    chosen = make_split([src.patient for src in sources], split)
    info = _source_info("convert-nifti", raw, split, chosen, num_classes)
    info.update(image_glob=image_glob, label_suffix=label_suffix)
    return run_conversion(raw, out, sources, chosen, info, num_classes, log, class_names, warn)


# ------------------------------------------------------------------------------------------ CLI
def _add_split_options(parser: argparse.ArgumentParser, kinds: Sequence[str], default: str) -> None:
    group = parser.add_argument_group("split")
    group.add_argument("--split", choices=kinds, default=default, help=f"patient split (default: {default})")
    group.add_argument("--seed", type=int, default=None, help="seed of --split random (default: 0)")
    fractions = group.add_mutually_exclusive_group()
    fractions.add_argument("--val-fraction", type=float, default=None, help="share of patients for validation (default: 0.1)")
    fractions.add_argument("--val-count", type=int, default=None, help="number of validation patients (instead of --val-fraction)")
    tests = group.add_mutually_exclusive_group()
    tests.add_argument("--test-fraction", type=float, default=None, help="share of patients for test (default: 0.2)")
    tests.add_argument("--test-count", type=int, default=None, help="number of test patients (instead of --test-fraction)")


def split_spec_from_args(args: argparse.Namespace) -> SplitSpec:
    """A validated :class:`SplitSpec` from the split options; random-only options with ``published`` are errors."""
    random_only = {"--seed": args.seed, "--val-fraction": args.val_fraction, "--val-count": args.val_count,
                   "--test-fraction": args.test_fraction, "--test-count": args.test_count}
    given = [name for name, value in random_only.items() if value is not None]
    if args.split == "published" and given:
        raise ConfigError(f"{', '.join(given)}: only used with --split random (the published split is fixed)")
    defaults = SplitSpec()
    return SplitSpec(
        kind=args.split,
        seed=args.seed,
        val_fraction=defaults.val_fraction if args.val_fraction is None else args.val_fraction,
        test_fraction=defaults.test_fraction if args.test_fraction is None else args.test_fraction,
        val_count=args.val_count,
        test_count=args.test_count,
    )


def _print(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _run_convert_acdc(args: argparse.Namespace) -> int:
    names = ACDC_CLASS_NAMES if args.class_names is None else parse_class_names(args.class_names, ACDC_NUM_CLASSES)
    convert_acdc(args.raw_dir, args.out_dir, split_spec_from_args(args), args.overwrite, _print, _warn, names)
    return 0


def _run_convert_nifti(args: argparse.Namespace) -> int:
    names = None if args.class_names is None else parse_class_names(args.class_names, args.num_classes)
    convert_nifti(args.raw_dir, args.out_dir, args.image_glob, args.label_suffix, args.num_classes,
                  split_spec_from_args(args), args.overwrite, _print, class_names=names, warn=_warn)
    return 0


def add_cli(subparsers) -> None:
    """Add ``convert-acdc`` and ``convert-nifti`` to the ``medseg data`` group."""
    acdc = command_parser(
        subparsers,
        "convert-acdc",
        help="convert the raw ACDC release (patientNNN folders) to the SSL4MIS layout",
        example="medseg data convert-acdc ~/downloads/ACDC/database data/ACDC",
        description=(
            "Convert the raw ACDC release to the SSL4MIS layout (per-volume min-max to [0,1], no resampling).\n"
            "RAW_DIR is searched recursively for patientNNN folders; ED -> patientNNN_frame01, ES -> _frame02.\n"
            "Default: SSL4MIS's published 70/10/20 patient split and training order."
        ),
    )
    acdc.add_argument("raw_dir", metavar="RAW_DIR", help="folder holding the ACDC patientNNN folders (any depth)")
    acdc.add_argument("out_dir", metavar="OUT_DIR", help="output dataset root (created; must be empty unless --overwrite)")
    acdc.add_argument("--class-names", metavar="A,B,C", default=None,
                      help="comma-separated names of labels 1, 2, 3 for tables and plots (default: RV,Myo,LV)")
    _add_split_options(acdc, ("published", "random"), "published")
    acdc.add_argument("--overwrite", action="store_true", help="replace an existing converted dataset in OUT_DIR")
    acdc.set_defaults(func=_run_convert_acdc)

    nifti = command_parser(
        subparsers,
        "convert-nifti",
        help="convert a folder of image/label NIfTI pairs to the SSL4MIS layout",
        example="medseg data convert-nifti raw/ data/mine --image-glob '**/*.nii.gz' --label-suffix _gt --num-classes 3 --class-names liver,tumour --seed 1",
        description=(
            "Convert image/label NIfTI pairs (case.nii.gz + case<SUFFIX>.nii.gz) to the SSL4MIS layout with a\n"
            "seeded random patient split. Case id = image file stem; <patient>_frameNN cases share a patient."
        ),
    )
    nifti.add_argument("raw_dir", metavar="RAW_DIR", help="folder holding the NIfTI pairs")
    nifti.add_argument("out_dir", metavar="OUT_DIR", help="output dataset root (created; must be empty unless --overwrite)")
    nifti.add_argument("--image-glob", default="*.nii.gz", help="images relative to RAW_DIR, '**' recurses (default: '*.nii.gz')")
    nifti.add_argument("--label-suffix", default="_gt", help="label = image name with this before the extension (default: _gt)")
    nifti.add_argument("--num-classes", type=int, default=ACDC_NUM_CLASSES, help="classes incl. background; labels 0..N-1 (default: 4)")
    nifti.add_argument("--class-names", metavar="A,B,...", default=None,
                       help="comma-separated names of labels 1..N-1 for tables and plots (default: 'class 1', 'class 2', ...)")
    _add_split_options(nifti, ("random",), "random")
    nifti.add_argument("--overwrite", action="store_true", help="replace an existing converted dataset in OUT_DIR")
    nifti.set_defaults(func=_run_convert_nifti)
