"""The SSL4MIS/ACDC processed dataset layout: reader and writer (docs/data.md, 'ACDC layout').

A dataset root holds::

    train_slices.list          one slice id per line, e.g. ``patient099_frame01_slice_0``
    val.list, test.list        one case (volume) id per line, e.g. ``patient028_frame01``
    data/slices/<slice>.h5     ``image`` float32 H×W in [0, 1], ``label`` uint8 H×W
    data/<case>.h5             ``image`` float32 D×H×W in [0, 1], ``label`` uint8 D×H×W
    manifest.json              (optional, written by our converters) spacing per case, checksums, class names

Slices are for training, volumes for validation and test. A case id is ``<patient>_frame<NN>``
(SSL4MIS renames ACDC's ED/ES frames to ``frame01``/``frame02``); a case id without a ``_frame``
suffix is its own patient. Voxel spacing (mm, in D, H, W order) is stored as the ``spacing``
attribute of a volume file and in the manifest; files without it are evaluated in voxel units.
Class names (labels 1..N-1; 0 is background) belong to the dataset: the manifest's ``class_names``,
else :func:`default_class_names` (ACDC's RV/Myo/LV for 4 classes, ``class 1``, ... otherwise).

Writers produce byte-identical files for identical inputs (no HDF5 timestamps), so converting
twice gives the same checksums.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from medseg_platform.errors import ConfigError, DataError
from medseg_platform.io import atomic_path, sha256_file, write_json_atomic, write_text_atomic

SLICES_DIR = Path("data") / "slices"
VOLUMES_DIR = Path("data")
TRAIN_LIST = "train_slices.list"
VAL_LIST = "val.list"
TEST_LIST = "test.list"
MANIFEST = "manifest.json"
LAYOUT_FORMAT = "ssl4mis-acdc-h5/1"

ACDC_CLASS_NAMES = ("RV", "Myo", "LV")  # labels 1, 2, 3 of ACDC (0 is background)
RESERVED_CLASS_NAMES = ("Avg", "background")  # "Avg" is the tables' class-average column

_SLICE_RE = re.compile(r"^(?P<case>.+)_slice_(?P<k>\d+)$")
_FRAME_RE = re.compile(r"^(?P<patient>.+)_frame\d+$")


# ----------------------------------------------------------------------------------------- ids
def slice_id(case: str, k: int) -> str:
    """The id of slice ``k`` (0-based, along D) of volume ``case``."""
    return f"{case}_slice_{k}"


def case_of_slice(sid: str) -> str:
    """``patient099_frame01_slice_3`` -> ``patient099_frame01``."""
    match = _SLICE_RE.match(sid)
    if match is None:
        raise DataError(f"{sid!r}: not a slice id of the form <case>_slice_<k> (fix the list file)")
    return match["case"]


def patient_of_case(case: str) -> str:
    """``patient099_frame01`` -> ``patient099``; a case without ``_frameNN`` is its own patient."""
    match = _FRAME_RE.match(case)
    return match["patient"] if match else case


def unique_in_order(items: Iterable[str]) -> list[str]:
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))


# -------------------------------------------------------------------------------- class names
def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Names of labels 1..num_classes-1 for a dataset that records none: ACDC's for 4 classes, else ``class k``."""
    if int(num_classes) == len(ACDC_CLASS_NAMES) + 1:
        return ACDC_CLASS_NAMES
    return tuple(f"class {k}" for k in range(1, int(num_classes)))


def check_class_names(names: Sequence[object], num_classes: int, where: str) -> tuple[str, ...]:
    """``names`` as a tuple of stripped strings, one per foreground label 1..num_classes-1; else a one-line DataError.

    Names must be distinct, non-empty, without commas, line breaks or other control characters, not start with
    ``=+-@`` (a spreadsheet's formulas), and not ``Avg``/``background`` (letter case ignored in both rules).
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise DataError(f"{where}: class names must be a list of strings, got {names!r}")
    cleaned = tuple(str(name).strip() for name in names)
    if len(cleaned) != int(num_classes) - 1:
        raise DataError(f"{where}: {len(cleaned)} class name(s) {list(cleaned)} for {num_classes} classes "
                        f"(give one name per label 1..{int(num_classes) - 1}; background 0 has none)")
    for name in cleaned:
        if not name or "," in name or _has_control_character(name):
            raise DataError(f"{where}: class name {name!r} must be non-empty, without commas, line breaks or other control "
                            "characters")
        if name[0] in "=+-@":  # table.csv's class column: a spreadsheet runs such a cell as a formula (the security review)
            raise DataError(f"{where}: class name {name!r} must not start with '=', '+', '-' or '@' (a spreadsheet opening "
                            "table.csv would read it as a formula)")
        if name.casefold() in {reserved.casefold() for reserved in RESERVED_CLASS_NAMES}:
            raise DataError(f"{where}: class name {name!r} is reserved (the tables use 'Avg' and label 0 is 'background', in any "
                            "letter case); choose another")
    if len({name.casefold() for name in cleaned}) != len(cleaned):
        raise DataError(f"{where}: class names {list(cleaned)} repeat a name (each label needs its own; letter case does not count)")
    return cleaned


def _has_control_character(text: str) -> bool:
    """Whether ``text`` holds a control character (a carriage return rewrote the terminal and report lines)."""
    return any(ord(char) < 32 or 127 <= ord(char) < 160 for char in text)


def parse_class_names(text: str, num_classes: int, where: str = "--class-names") -> tuple[str, ...]:
    """``"RV,Myo,LV"`` -> ``("RV", "Myo", "LV")``, checked by :func:`check_class_names`."""
    return check_class_names(text.split(","), num_classes, f"{where} {text!r}")


def manifest_class_names(manifest: Mapping[str, object], num_classes: int, where: str) -> tuple[str, ...]:
    """The class names a manifest records (checked against ``num_classes``), else :func:`default_class_names`."""
    names = manifest.get("class_names")
    if names is None:
        return default_class_names(num_classes)
    return check_class_names(names, num_classes, f"{where}: 'class_names'")


#: The embedded phantom's cache folder name (``medseg_platform.data.phantom.phantom_cache_path``): its key hashes
#: the manifest's ``source`` (generator, version, patients, size, seed).
CACHED_PHANTOM_FOLDER = re.compile(r"phantom-([0-9a-f]{12})")


def phantom_source_key(source: Mapping) -> str:
    """The cache key (12 hex digits) of a phantom manifest's ``source`` entry."""
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def check_phantom_folder_name(root: Path, manifest: Mapping, key: str) -> None:
    """A one-line DataError when ``root``, named as the cached phantom of ``key``, holds a phantom of other parameters
    (written there by hand: its trials would be keyed and tabled as the other phantom's)."""
    source = manifest.get("source")
    if not (isinstance(source, dict) and source.get("generator") == "phantom"):
        return
    held = phantom_source_key(source)
    if held != key:
        params = source.get("params") if isinstance(source.get("params"), dict) else {}
        shown = ", ".join(f"{k}={params[k]}" for k in sorted(params, key=lambda k: (k != "patients", k != "size", k)))
        raise DataError(f"{root}: holds the phantom with {shown} (version {source.get('version')}), whose cache folder is "
                        f"phantom-{held}, not phantom-{key}: a phantom written into a folder named for another; move it to a "
                        "folder of its own name (or leave data.root out to train on the profile's phantom)")


def manifest_spacing(manifest: dict, case: str, root: str | os.PathLike) -> tuple[float, float, float] | None:
    """The (D, H, W) spacing ``manifest`` (:func:`read_manifest`'s, of ``root``) records for ``case``, or None; a single
    number applies to the three axes, as everywhere a spacing is read (``normalise_spacing``)."""
    from medseg_platform.evaluation.metrics import normalise_spacing

    spacing = manifest.get("cases", {}).get(case, {}).get("spacing")
    return normalise_spacing(spacing, 3, f"{Path(root) / MANIFEST}: cases[{case!r}].spacing") if spacing is not None else None


def read_manifest(root: str | os.PathLike) -> dict:
    """``<root>/manifest.json`` as a dict ({} when absent); one-line DataError when it is not a JSON object."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); re-create it with the converter") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-create it with the converter") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a JSON object; re-create it with the converter")
    cases = manifest.get("cases")
    if cases is not None and not (isinstance(cases, dict) and all(isinstance(v, dict) for v in cases.values())):
        raise DataError(f"{path}: 'cases' must map each case id to an object (it was a traceback in predict and evaluate); "
                        "re-create the manifest with the converter")
    for case, entry in (cases or {}).items():  # read as a volume's voxel size when its file has none
        if entry.get("spacing") is not None:
            from medseg_platform.evaluation.metrics import normalise_spacing

            normalise_spacing(entry["spacing"], 3, f"{path}: cases[{case!r}].spacing")
        _check_grid(entry, f"{path}: cases[{case!r}]")
    return manifest


def _check_grid(entry: dict, where: str) -> None:
    """A case's ``affine`` (4x4 finite numbers, invertible) and ``oriented`` (true/false), where recorded: medseg predict
    writes NIfTI predictions with them (a malformed affine failed there with a traceback after the first cases' files
    were written, the converter review)."""
    affine = entry.get("affine")
    if affine is not None:
        try:
            matrix = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) == 0:
            raise DataError(f"{where}.affine: expected a 4x4 voxel-to-world matrix of finite numbers with an invertible 3x3 "
                            "part, got " + repr(affine)[:80] + "; re-create the manifest with the converter")
    if not isinstance(entry.get("oriented", True), bool):
        raise DataError(f"{where}.oriented: expected true or false, got {entry['oriented']!r}; re-create the manifest "
                        "with the converter")


def changed_files(root: str | os.PathLike) -> list[str]:
    """Files of ``root`` whose SHA-256 differs from the one its manifest records (relative paths, sorted); files that
    are missing, and a manifest that is unreadable or records no checksums, are other checks' business ([])."""
    try:
        recorded = recorded_checksums(read_manifest(root))
    except (DataError, OSError):
        return []
    root = Path(root)
    return sorted(rel for rel, digest in recorded.items() if (root / rel).is_file() and sha256_file(root / rel) != digest)


def recorded_checksums(manifest: Mapping[str, object]) -> dict[str, str]:
    """A manifest's ``sha256`` entries (relative path -> digest) whose paths stay inside the dataset root (no ``..``,
    not absolute); {} when it records none."""
    recorded = manifest.get("sha256")
    if not isinstance(recorded, dict):
        return {}
    return {rel: digest for rel, digest in recorded.items()
            if not Path(rel).is_absolute() and ".." not in Path(rel).parts}


def dataset_class_names(root: str | os.PathLike, num_classes: int) -> tuple[str, ...]:
    """Names of labels 1..num_classes-1 of the dataset at ``root`` (its manifest, else the defaults)."""
    return manifest_class_names(read_manifest(root), num_classes, str(Path(root) / MANIFEST))


# ------------------------------------------------------------------------------------- writers
def _h5_write(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object] | None = None) -> None:
    """Write arrays (gzip, no timestamps) to an HDF5 file atomically and deterministically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as fh:
            for key, arr in arrays.items():
                fh.create_dataset(key, data=arr, compression="gzip", compression_opts=4, track_times=False)
            for key, value in (attrs or {}).items():
                fh.attrs[key] = value


def _checked_pair(image: np.ndarray, label: np.ndarray, ndim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != ndim or image.shape != label.shape:
        raise DataError(f"{where}: image {image.shape} and label {label.shape} must both be {ndim}-D and equal")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all() or image.min(initial=0.0) < 0.0 or image.max(initial=0.0) > 1.0:
        raise DataError(f"{where}: image must be finite and in [0, 1] (normalise it first)")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise DataError(f"{where}: label values must fit uint8, got range [{label.min()}, {label.max()}]")
    return image, label.astype(np.uint8, copy=False)


def write_slice(root: str | os.PathLike, case: str, k: int, image: np.ndarray, label: np.ndarray) -> Path:
    """Write one training slice (``image`` H×W float32 in [0,1], ``label`` H×W uint8); returns its path."""
    path = Path(root) / SLICES_DIR / f"{slice_id(case, k)}.h5"
    image, label = _checked_pair(image, label, 2, str(path))
    _h5_write(path, {"image": image, "label": label})
    return path


def write_volume(
    root: str | os.PathLike,
    case: str,
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write one volume (``image`` D×H×W float32 in [0,1], ``label`` D×H×W uint8; ``spacing`` mm as D,H,W)."""
    path = Path(root) / VOLUMES_DIR / f"{case}.h5"
    image, label = _checked_pair(image, label, 3, str(path))
    attrs = {}
    if spacing is not None:
        if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
            raise DataError(f"{path}: spacing must be three positive numbers (D, H, W), got {spacing!r}")
        attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
    _h5_write(path, {"image": image, "label": label}, attrs)
    return path


def write_case(
    root: str | os.PathLike,
    case: str,
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | None = None,
    with_slices: bool = True,
) -> list[str]:
    """Write a volume and (if ``with_slices``) its D slices; returns the slice ids in order."""
    write_volume(root, case, image, label, spacing)
    if not with_slices:
        return []
    for k in range(image.shape[0]):
        write_slice(root, case, k, image[k], label[k])
    return [slice_id(case, k) for k in range(image.shape[0])]


def write_lists(root: str | os.PathLike, train_slices: Sequence[str], val_cases: Sequence[str], test_cases: Sequence[str]) -> None:
    """Write ``train_slices.list``, ``val.list`` and ``test.list`` (order is kept: it is the published ordering)."""
    root = Path(root)
    for name, items in ((TRAIN_LIST, train_slices), (VAL_LIST, val_cases), (TEST_LIST, test_cases)):
        write_text_atomic(root / name, "".join(f"{item}\n" for item in items))


def write_manifest(root: str | os.PathLike, source: Mapping[str, object], cases: Mapping[str, Mapping[str, object]],
                   class_names: Sequence[str] | None = None) -> Path:
    """Write ``manifest.json``: the layout format, how it was made, per-case facts, class names and a SHA-256 per file.

    ``cases`` maps a case id to JSON-able facts (at least ``patient``; ``spacing`` when known).
    ``class_names``: names of labels 1..N-1 (tables, plots and reports read them; omitted when None).
    Checksums cover the list files and every ``.h5`` under ``data/``, keyed by POSIX relative path.
    """
    root = Path(root)
    files = [root / TRAIN_LIST, root / VAL_LIST, root / TEST_LIST]
    files += sorted((root / VOLUMES_DIR).rglob("*.h5"))
    manifest = {
        "format": LAYOUT_FORMAT,
        "source": dict(source),
        "cases": {case: dict(facts) for case, facts in sorted(cases.items())},
        "sha256": {p.relative_to(root).as_posix(): sha256_file(p) for p in files if p.exists()},
    }
    if class_names is not None:
        manifest["class_names"] = list(class_names)
    path = root / MANIFEST
    write_json_atomic(path, manifest)
    return path


# -------------------------------------------------------------------------------------- reader
def read_list(path: Path, slices: bool = False, problems: list[str] | None = None) -> list[str]:
    """The ids a list file names, in order. Each is a file name under ``data/`` (or ``data/slices/`` for ``slices``,
    then of the form ``<case>_slice_<k>``); an id with a folder part would read outside the dataset, and one starting
    with ``= + - @`` would be a formula in a spreadsheet of per_case.csv. One-line
    :class:`DataError` naming the file and line otherwise. Repeated ids are kept (``medseg data check`` reports them)."""
    if not path.is_file():
        raise DataError(f"{path}: list file is missing (is this an SSL4MIS/ACDC dataset root? Raw ACDC patient folders are "
                        "converted with `medseg data convert-acdc RAW OUT`, NIfTI pairs with `medseg data convert-nifti`)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-create it with the converter") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        bad = None
        if "/" in item or "\\" in item or item in (".", "..") or _has_control_character(item):
            bad = (f"{path}: line {lineno} {item!r} is not an id (ids are file names without a folder or control "
                   "characters; fix the list)")
        elif item[0] in "=+-@":  # per_case.csv's case column: a spreadsheet runs such a cell as a formula (the security
            bad = (f"{path}: line {lineno} {item!r} starts with {item[0]!r}; a spreadsheet opening a trial's per_case.csv "
                   "would read the id as a formula: rename the case (its files and list lines)")  # review, as class names)
        elif slices and _SLICE_RE.match(item) is None:
            bad = f"{path}: line {lineno} {item!r} is not a slice id of the form <case>_slice_<k> (fix the list)"
        if bad is not None and problems is None:
            raise DataError(bad)
        if bad is not None:  # ``problems``: told there and the line skipped (medseg data check goes on past it)
            problems.append(bad)
            continue
        ids.append(item)
    return ids


def read_h5_pair(path: Path, ndim: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read ``image``/``label`` (and attributes) from an h5 file; one-line :class:`DataError` on any problem."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing (the list names it; re-run the converter or fix the list)")
    try:
        with h5py.File(path, "r") as fh:
            missing = [key for key in ("image", "label") if key not in fh]
            if missing:
                raise DataError(f"{path}: missing dataset key(s) {missing} (expected 'image' and 'label')")
            groups = [key for key in ("image", "label") if not isinstance(fh[key], h5py.Dataset)]
            if groups:
                raise DataError(f"{path}: {groups} hold(s) a group, not an array (expected 'image' and 'label' datasets)")
            for key in ("image", "label"):  # from the header, before anything is read
                _check_declared(path, key, fh[key].shape, fh[key].dtype.itemsize)
            image = fh["image"][()]
            label = fh["label"][()]
            attrs = {key: fh.attrs[key] for key in fh.attrs}
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable HDF5 file ({first_line}); the file is truncated or corrupt, re-create it") from None
    if image.ndim != ndim or image.shape != label.shape:
        raise DataError(f"{path}: expected {ndim}-D 'image' and 'label' of equal shape, got {image.shape} and {label.shape}")
    if "spacing" in attrs and ndim == 3:  # read as the volume's voxel size (mm) by training, scoring and predictions
        from medseg_platform.evaluation.metrics import normalise_spacing

        normalise_spacing(attrs["spacing"], 3, f"{path}: attribute 'spacing'")
    return image, label, attrs


#: The largest array an h5 file of a dataset may declare (bytes): a header that declares more (a corrupt or hostile
#: file) is an error before the read tries to allocate it (the security audit: a 1.6 KB file declaring 4000^3 floats).
MAX_ARRAY_BYTES = 4 << 30


def _check_declared(path: Path, key: str, shape: tuple, itemsize: int) -> None:
    """One-line :class:`DataError` for an array the header declares empty or larger than :data:`MAX_ARRAY_BYTES`."""
    if not shape or 0 in shape:
        raise DataError(f"{path}: '{key}' is empty (shape {tuple(shape)}); re-create the file from a scan with voxels")
    size = int(np.prod(shape, dtype=np.float64)) * itemsize
    if size > MAX_ARRAY_BYTES:
        raise DataError(f"{path}: '{key}' declares a {'x'.join(map(str, shape))} array of {size / (1 << 30):.1f} GiB, more than the "
                        f"{MAX_ARRAY_BYTES >> 30} GiB an array of a dataset may hold (a corrupt header, or a volume to crop or "
                        "resample first)")


def mixed_spacing_text(with_spacing: int, cases: int, example: str) -> str:
    """Why evaluated cases of which some have a voxel spacing and others none are refused in mm, and what to do."""
    without = cases - with_spacing
    return (f"{with_spacing} of {cases} evaluated cases have a voxel spacing but {without} {'has' if without == 1 else 'have'} "
            f"none (e.g. {example}), so HD95 and ASD in mm would average mm with voxels; add the missing spacing (the "
            "volume's 'spacing' attribute or the manifest's), or score in voxels (--set eval.distance_units=voxel)")


@dataclass(frozen=True)
class Volume:
    """A whole case: ``image`` float32 D×H×W, ``label`` uint8 D×H×W, ``spacing`` (mm, D,H,W) or None."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float] | None


class AcdcLayout:
    """Read access to one dataset root in the SSL4MIS/ACDC layout.

    Opening validates only that the root and its three list files exist (cheap); ``medseg data check``
    validates every file. Attributes:

    * ``train_slices``: slice ids of ``train_slices.list`` in file order.
    * ``train_cases`` / ``train_patients``: distinct cases / patients in order of first appearance; this
      order is the *published ordering* from which "the first n labelled patients" is taken.
    * ``val_cases``, ``test_cases``: volume ids.
    """

    def __init__(self, root: str | os.PathLike, num_classes: int = 4, list_problems: list[str] | None = None):
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ConfigError(f"dataset root {root!r}: give a folder path")
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ConfigError(f"num_classes {num_classes!r}: a whole number >= 2 (background + at least one class)")
        try:
            self.root = Path(root).expanduser().resolve()
        except (RuntimeError, OSError) as exc:  # a symbolic link loop, an unknown ~user
            raise DataError(f"{root}: dataset root cannot be resolved to a folder ({exc})") from None
        cached_phantom = CACHED_PHANTOM_FOLDER.fullmatch(self.root.name)
        if not self.root.is_dir() and cached_phantom and not self.root.exists():
            # a config from another machine or $MEDSEG_CACHE: 'medseg data phantom --out' wrote the default phantom
            # there, under this phantom's name, and training ran on it without a word (the engine review)
            raise DataError(f"{self.root}: dataset root does not exist; it is named as a cached embedded phantom (phantom-<key>: "
                            "a hash of its patients, size and seed) of another machine or $MEDSEG_CACHE. To train on this "
                            "machine's phantom, leave data.root out (or drop --data-root): the profile's phantom is generated "
                            "on first use; 'medseg data phantom --out' would write the default phantom, not this one")
        if not self.root.is_dir():
            problem = "is a file, not a dataset root folder" if self.root.exists() else "dataset root does not exist"
            raise DataError(f"{self.root}: {problem} (create one with 'medseg data phantom --out DIR' or 'medseg data convert-acdc')")
        self.num_classes = int(num_classes)
        # list_problems: a malformed line is told there and skipped (medseg data check), not an error
        self.train_slices = read_list(self.root / TRAIN_LIST, slices=True, problems=list_problems)
        self.val_cases = read_list(self.root / VAL_LIST, problems=list_problems)
        self.test_cases = read_list(self.root / TEST_LIST, problems=list_problems)
        self.train_cases = unique_in_order(case_of_slice(s) for s in self.train_slices)
        self.train_patients = unique_in_order(patient_of_case(c) for c in self.train_cases)
        self.manifest = read_manifest(self.root)
        if cached_phantom:
            check_phantom_folder_name(self.root, self.manifest, cached_phantom.group(1))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of labels 1..num_classes-1: the manifest's, else :func:`default_class_names`; DataError on a mismatch."""
        return manifest_class_names(self.manifest, self.num_classes, str(self.root / MANIFEST))

    # paths
    def slice_path(self, sid: str) -> Path:
        return self.root / SLICES_DIR / f"{sid}.h5"

    def volume_path(self, case: str) -> Path:
        return self.root / VOLUMES_DIR / f"{case}.h5"

    # splits
    def slices_of_patients(self, patients: Iterable[str]) -> list[str]:
        """Training slice ids (file order) that belong to the given patients."""
        wanted = set(patients)
        return [s for s in self.train_slices if patient_of_case(case_of_slice(s)) in wanted]

    def cases(self, split: str) -> list[str]:
        """Volume ids of ``split`` in file order: ``train`` (distinct cases of the slices), ``val`` or ``test``."""
        if split == "train":
            return list(self.train_cases)
        if split == "val":
            return list(self.val_cases)
        if split == "test":
            return list(self.test_cases)
        raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")

    # data
    def read_slice(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 H×W, label uint8 H×W)`` of a training slice."""
        image, label, _ = read_h5_pair(self.slice_path(sid), 2)
        return image.astype(np.float32, copy=False), label.astype(np.uint8, copy=False)

    def read_volume(self, case: str) -> Volume:
        """The whole volume of ``case`` with its spacing (h5 attribute, else manifest, else None)."""
        path = self.volume_path(case)
        image, label, attrs = read_h5_pair(path, 3)
        from medseg_platform.evaluation.metrics import normalise_spacing

        spacing = attrs.get("spacing")  # read_h5_pair checked it; a single number applies to the three axes
        spacing_t = (normalise_spacing(spacing, 3, f"{path}: attribute 'spacing'") if spacing is not None
                     else manifest_spacing(self.manifest, case, self.root))
        return Volume(case, image.astype(np.float32, copy=False), label.astype(np.uint8, copy=False), spacing_t)

    def has_spacing(self, case: str) -> bool | None:
        """Whether :meth:`read_volume` gives ``case`` a spacing (the h5 attribute, else the manifest's), from the file's
        attributes only (cheap: no voxel is read); None when the file is missing or unreadable, or its spacing is not
        three positive numbers (reading it names that problem)."""
        from medseg_platform.evaluation.metrics import normalise_spacing

        if self.manifest.get("cases", {}).get(case, {}).get("spacing") is not None:
            return True
        try:
            with h5py.File(self.volume_path(case), "r") as fh:
                if "spacing" not in fh.attrs:
                    return False
                normalise_spacing(fh.attrs["spacing"], 3, "spacing")
                return True
        except (OSError, DataError, ConfigError):
            return None

    def mixed_spacing(self, cases: Sequence[str]) -> str | None:
        """A problem text when some of ``cases`` have a spacing and others none (their HD95 and ASD would average mm
        with voxels: docs/evaluation.md, 'Units'); None when all or none of the readable ones have one."""
        known = {case: self.has_spacing(case) for case in cases}
        known = {case: spaced for case, spaced in known.items() if spaced is not None}
        without = [case for case, spaced in known.items() if not spaced]
        if not without or len(without) == len(known):
            return None
        return f"{self.root}: " + mixed_spacing_text(len(known) - len(without), len(known), without[0])

    def __repr__(self) -> str:
        return (
            f"AcdcLayout({str(self.root)!r}: {len(self.train_slices)} train slices of "
            f"{len(self.train_patients)} patients, {len(self.val_cases)} val, {len(self.test_cases)} test volumes)"
        )
