"""Evaluate a folder of predicted volumes against ground truth (the engine of ``medseg evaluate``;
docs/evaluation.md, 'Evaluating outside a study').

Inputs
------
Predictions: a folder of label volumes, one per case: ``.h5`` (dataset ``pred``, else ``label``) or NIfTI
``.nii``/``.nii.gz`` (read with nibabel). Ground truth: either a folder of the same kinds (``.h5`` dataset
``label``) or a dataset root in the SSL4MIS layout (``root/data/<case>.h5``; spacing from the file's
``spacing`` attribute, else ``manifest.json``).

Case matching is by file stem (``.h5``/``.nii``/``.nii.gz`` removed); against a ground-truth folder, a prediction
without a file of its own stem takes the one file whose stem the converters turn into its id (characters outside
``[A-Za-z0-9_-]`` become ``_``), so ``medseg predict``'s ``case_02`` matches a raw ``case 02.nii.gz``. The released ``test_2D.py`` writes
``<case>_pred.nii.gz``, ``<case>_gt.nii.gz`` and ``<case>_img.nii.gz`` into one folder, so: in the
prediction folder a ``_pred`` suffix is removed and ``*_gt``/``*_img`` files are ignored; in a ground-truth
folder a ``_gt`` suffix is removed and ``*_pred``/``*_img`` files are ignored, a case with both ``<case>`` and
``<case>_gt`` (the image and label of a ``medseg data convert-nifti`` raw folder) is scored against the ``_gt`` file,
and beside ``_gt`` files a 4-D NIfTI file (ACDC's cine) is an image, not a ground-truth case.
The same folder can therefore be given as ``--pred`` and ``--gt``. Two files naming the same case are an error. Only the folder's top level
is read (the default output folder ``<pred>/evaluation`` is never mistaken for input), except that a ground-truth folder
without label files there is read one level down, its subfolders' ``*_gt`` files (:func:`ground_truth_files`: the raw
ACDC release's ``training/`` folder of ``patientNNN/`` folders).

Axis order and spacing
----------------------
h5 arrays are (D, H, W) with spacing in the same order. NIfTI arrays are kept in nibabel's order (x, y, z)
with spacing ``header.get_zooms()`` in that order, as long as both sides are NIfTI. When one side is h5 and
the other NIfTI, the NIfTI array and zooms are reversed to (z, y, x): that is how SimpleITK (used by SSL4MIS
preprocessing and by the released code to write NIfTI) maps a (D, H, W) numpy array to a file, so both sides
then share the (D, H, W) order. Distance units are the ground truth's spacing (mm) with
``spacing_from="gt"`` when the ground truth has one, else voxels; the units are written next to every value.

Validation happens before metrics: matching and shapes (from file headers) for all cases first; label
values (integers in ``[0, num_classes)``) per case as it is read; nothing is written unless every case passes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from medseg_platform.data.nifti import (is_time_series, orientation_mismatch, sanitize_case_id, voxel_sizes_mm, world_mm,
                                         xyz_shape)
from medseg_platform.errors import ConfigError, DataError, MedsegError
from medseg_platform.evaluation.cli import LABEL_SUFFIX, PREDICTION_SUFFIX
from medseg_platform.evaluation.metrics import (METRICS, check_label_map, check_num_classes, check_options, evaluate_case,
                                                summarize)
from medseg_platform.io import write_texts_atomic

SPACING_SOURCES = ("gt", "none")
_SUFFIXES = (".nii.gz", ".nii", ".h5")
_IMAGE_SUFFIX = "_img"
PER_CASE_COLUMNS = ("case", "class", *METRICS, "units", "n_pred", "n_gt")


# ---------------------------------------------------------------------------------- file lists
@dataclass(frozen=True)
class LabelFile:
    """One label volume on disk: ``kind`` is ``"h5"`` or ``"nifti"``; ``key`` the h5 dataset (None for NIfTI)."""

    case: str
    path: Path
    kind: str
    key: str | None = None
    layout_spacing: tuple[float, ...] | None = None  # spacing from a dataset root's manifest (h5 attr wins)


def _split_name(name: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], ("h5" if suffix == ".h5" else "nifti")
    return None


def list_label_files(folder: Path, role: str, label_suffix: str = LABEL_SUFFIX) -> dict[str, LabelFile]:
    """Label volumes at the top level of ``folder`` keyed by case (see the module doc for the naming rules; ground-truth
    labels are named ``<case><label_suffix>``, ``_gt`` by default)."""
    own = PREDICTION_SUFFIX if role == "pred" else label_suffix
    # a prediction folder ignores _gt files whatever --label-suffix names (the released test_2D.py writes them there)
    companions = (PREDICTION_SUFFIX, label_suffix, _IMAGE_SUFFIX) + ((LABEL_SUFFIX,) if role == "pred" else ())
    found: dict[str, list[Path]] = {}
    kinds: dict[Path, str] = {}
    suffixed: set[Path] = set()  # files named with the role's own suffix (<case>_gt, <case>_pred)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        split = _split_name(path.name)
        if split is None:
            continue
        stem, kind = split
        companion = next((s for s in companions if stem.endswith(s)), None)
        if companion is not None and companion != own:
            continue
        case = stem[: -len(own)] if companion == own else stem
        found.setdefault(case, []).append(path)
        kinds[path] = kind
        if companion == own:
            suffixed.add(path)
    for case, paths in found.items():  # a raw NIfTI folder holds <case> (the image) beside <case>_gt: the label is the _gt one
        labelled = [p for p in paths if p in suffixed]
        if role == "gt" and len(paths) > 1 and len(labelled) == 1:
            found[case] = labelled
    if role == "gt" and suffixed:  # beside _gt labels, a 4-D file (ACDC's cine) is an image, never a label
        found = {case: paths for case, paths in found.items()
                 if len(paths) > 1 or paths[0] in suffixed or kinds[paths[0]] != "nifti" or not _more_than_3d(paths[0])}
    duplicates = {case: paths for case, paths in found.items() if len(paths) > 1}
    if duplicates:
        case, paths = next(iter(sorted(duplicates.items())))
        names = ", ".join(p.name for p in paths)
        raise DataError(f"{folder}: {len(duplicates)} case(s) have several files, e.g. {case}: {names} (keep one file per case)")
    return {case: LabelFile(case, paths[0], kinds[paths[0]]) for case, paths in sorted(found.items())}


def _more_than_3d(path: Path) -> bool:
    """:func:`medseg_platform.data.nifti.is_time_series`; False for an unreadable file (its own error comes where it is
    read)."""
    try:
        return is_time_series(path)
    except DataError:
        return False


def ground_truth_files(folder: Path, label_suffix: str = LABEL_SUFFIX) -> dict[str, LabelFile]:
    """The label volumes of a ground-truth folder keyed by case: its top level (:func:`list_label_files`), or, where that
    holds none, the ``*<label_suffix>`` files of its subfolders, one level down (the raw ACDC release's
    ``training/patientNNN/patientNNN_frameXX_gt.nii.gz``; their images and 4-D files are not labels). A case found in
    two subfolders is a one-line :class:`DataError`."""
    top = list_label_files(folder, "gt", label_suffix)
    if top:
        return top
    found: dict[str, LabelFile] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for case, file in list_label_files(sub, "gt", label_suffix).items():
            if not _split_name(file.path.name)[0].endswith(label_suffix):
                continue
            if case in found:
                raise DataError(f"{folder}: case {case} has a label file in two subfolders, {found[case].path} and {file.path} "
                                "(keep one file per case)")
            found[case] = file
    return found


def acdc_converted_ids(folder: Path) -> dict[str, dict[str, str]]:
    """Per raw ACDC patient folder one level below ``folder`` (its ``training/patientNNN/``): the ids ``medseg data
    convert-acdc`` gives its frames, to their raw stems. The ED frame becomes ``<patient>_frame01`` and the ES frame
    ``<patient>_frame02`` whatever their numbers (docs/data.md), read from the folder's ``Info.cfg``. A folder without
    a readable Info.cfg, or whose ED and ES are one frame (convert-acdc refuses it), gives none: its files match by
    their own stems."""
    from medseg_platform.data.convert import ACDC_PHASES, info_frame, read_info_cfg

    patients: dict[str, dict[str, str]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "Info.cfg").is_file()):
        try:
            info = read_info_cfg(sub / "Info.cfg")
            frames = {phase: info_frame(info, phase, sub / "Info.cfg") for phase, _ in ACDC_PHASES}
        except DataError:
            continue
        if frames["ED"] != frames["ES"]:
            patients[sub.name] = {f"{sub.name}_{new_frame}": f"{sub.name}_frame{frames[phase]:02d}"
                                  for phase, new_frame in ACDC_PHASES}
    return patients


def _with_acdc_ids(gts: dict[str, LabelFile], preds: Mapping[str, LabelFile], patients: Mapping[str, Mapping[str, str]],
                   gt: Path) -> dict[str, LabelFile]:
    """A raw ACDC ground-truth folder's files under convert-acdc's ids where a patient's predictions are named so
    (:func:`acdc_converted_ids`; the platform's ``patient001_frame02`` met no ``patient001_frame12_gt``: the evaluation
    review). A patient's predictions are named by the raw frames when one of them is a raw frame no converted id names
    (``medseg predict --images`` of the raw release), and by the converted ids when one of them is a converted id no raw
    frame has; with neither (an Info.cfg with ED at frame 2, and only ``_frame02`` predicted: ED raw, ES converted) a
    one-line :class:`DataError`, not the other phase's score."""
    out = dict(gts)
    for patient, mapping in patients.items():
        raw = set(mapping.values())
        mine = [case for case in preds if case in mapping or case in raw]
        if not mine or any(case in raw and case not in mapping for case in mine):
            continue  # none, or named by the raw frames: their own stems
        if not any(case not in raw for case in mine):
            if all(mapping.get(case) == case for case in mine):
                continue  # the converted ids are the raw frames' own names (ED at frame 1, ES at frame 2)
            clash = next(case for case in mine if mapping.get(case) != case)
            raise DataError(f"--gt {gt}: prediction {clash} could be either frame: {patient}'s Info.cfg makes it a raw "
                            f"frame of its own, while convert-acdc names the other phase ({mapping[clash]}) so; score "
                            "predictions of a converted dataset against its root (--gt CONVERTED_ROOT)")
        used = {case: gts[mapping[case]] for case in mine if mapping.get(case) in gts}
        for case in used:
            out.pop(mapping[case], None)
        out.update(used)
    return out


def _with_converted_ids(gts: dict[str, LabelFile], preds: dict[str, LabelFile]) -> dict[str, LabelFile]:
    """A ground-truth folder's files keyed by their stems, plus, for a prediction without a file of its own stem, the one
    file whose stem the converters turn into its id (``case 02_gt.nii.gz`` for ``medseg predict``'s ``case_02``:
    characters outside ``[A-Za-z0-9_-]`` become ``_``). Exact stems always win; an id two stems share is not guessed."""
    by_id: dict[str, list[str]] = {}
    for stem in gts:
        by_id.setdefault(sanitize_case_id(stem), []).append(stem)
    out = dict(gts)
    for case in preds:
        stems = by_id.get(case, [])
        if case not in gts and len(stems) == 1 and stems[0] not in preds:
            out[case] = out.pop(stems[0])  # under the prediction's name (its cases without a prediction stay as they are)
    return out


def is_dataset_root(folder: Path) -> bool:
    return (folder / "data").is_dir() and any((folder / name).is_file() for name in ("test.list", "val.list", "train_slices.list", "manifest.json"))


def _root_label_files(root: Path, cases: list[str]) -> dict[str, LabelFile]:
    """Ground-truth files ``root/data/<case>.h5`` of the given cases (those that exist), with manifest spacing (checked
    and normalised as training reads it: a single number applies to the three axes)."""
    from medseg_platform.data.layout import manifest_spacing, read_manifest

    manifest = read_manifest(root)
    files = {}
    for case in cases:
        path = root / "data" / f"{case}.h5"
        if path.is_file():
            files[case] = LabelFile(case, path, "h5", "label", manifest_spacing(manifest, case, root))
    return files


def first_few(names: list[str], limit: int = 5) -> str:
    """``names`` for a message: the first ``limit``, then how many there are in all."""
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def unpredicted_cases(gt: Path, root_mode: bool, gts: dict, preds: dict) -> str:
    """A warning naming the ground-truth cases without a prediction ("" when there are none): a prediction run that
    stopped halfway would otherwise score as a whole test set. A folder's cases are its label files; a dataset root's
    are those of ``test.list`` or ``val.list``, whichever holds every prediction (the split that was predicted). When
    neither does, the warning says how the predicted cases spread over the root's splits instead: a summary over
    training cases too (``medseg predict --split all``) is no test result."""
    if root_mode:
        from medseg_platform.data.layout import TEST_LIST, VAL_LIST, read_list

        expected, where, splits = [], "", {}
        for name in (TEST_LIST, VAL_LIST):
            try:
                cases = read_list(gt / name)
            except (DataError, OSError):  # missing or unreadable: that split is not the predicted one
                continue
            splits[name] = set(cases)
            if set(preds) <= set(cases):
                expected, where = cases, f"{gt / name}"
                break
        else:
            return mixed_splits(gt, preds, splits)
    else:
        expected, where = list(gts), str(gt)
    missing = [case for case in dict.fromkeys(expected) if case not in preds]
    if not missing:
        return ""
    shown = first_few(missing)
    return (f"{len(missing)} of the {len(set(expected))} cases of {where} have no prediction and are not scored: {shown} "
            "(the summary covers the predicted cases only)")


def mixed_splits(gt: Path, preds: Mapping[str, object], splits: Mapping[str, set[str]]) -> str:
    """The warning for predicted cases of a dataset root that no one of its ``splits`` ({list file name: cases}) holds:
    how many are in each, and how many in none (training cases); "" when there are no splits to compare with."""
    if not splits:
        return ""
    counts = [(len(set(preds) & cases), name.removesuffix(".list")) for name, cases in splits.items()]
    others = len(set(preds) - set().union(*splits.values()))
    spread = ", ".join([f"{n} {split}" for n, split in counts if n] + ([f"{others} in neither (training cases)"] if others else []))
    return (f"the {len(preds)} predicted cases are not those of {gt}'s test or val split alone: {spread}; a summary over "
            "them is no test result (score one split's predictions, e.g. medseg predict --split test)")


# -------------------------------------------------------------------------------------- reading
def _h5_key(path: Path, role: str) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            keys = ("pred", "label") if role == "pred" else ("label",)
            for key in keys:
                if key in fh and isinstance(fh[key], h5py.Dataset):
                    return key
            present = sorted(fh.keys())
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable HDF5 file ({first}); re-create it") from None
    wanted = "'pred' or 'label'" if role == "pred" else "'label'"
    raise DataError(f"{path}: no {wanted} dataset (found {present}); write the label map under that key")


def _reverse(shape_or_spacing: tuple) -> tuple:
    return tuple(reversed(shape_or_spacing))


def _header(file: LabelFile, role: str, reverse: bool) -> tuple[LabelFile, tuple[int, ...], tuple[float, ...] | None]:
    """The file with its h5 key resolved, its array shape and spacing (same axis order), without reading voxels."""
    if file.kind == "h5":
        import h5py

        key = file.key or _h5_key(file.path, role)
        try:
            with h5py.File(file.path, "r") as fh:
                if key not in fh:
                    raise DataError(f"{file.path}: no '{key}' dataset (found {sorted(fh.keys())}); write the label map under that key")
                shape = tuple(int(s) for s in fh[key].shape)
                spacing = fh.attrs.get("spacing")
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{file.path}: unreadable HDF5 file ({first}); re-create it") from None
        if spacing is None:
            spacing = file.layout_spacing
        try:
            spacing_t = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=np.float64))) if spacing is not None else None
        except (TypeError, ValueError):  # an attribute of text: it was a traceback
            raise DataError(f"{file.path}: spacing {spacing!r} is not numbers (fix the spacing or pass --spacing-from none)") from None
        if spacing_t is not None and len(spacing_t) == 1 and len(shape) > 1:  # one number for every axis, as training reads it
            spacing_t = spacing_t * len(shape)
        return LabelFile(file.case, file.path, file.kind, key, file.layout_spacing), shape, spacing_t
    img = _nifti(file.path)
    shape = _nifti_shape(img.shape, file.path, as_volume=reverse)
    spacing_t = (voxel_sizes_mm(img, file.path) + tuple(float(z) for z in img.header.get_zooms()[3:]))[: len(shape)]
    if reverse:
        shape, spacing_t = _reverse(shape), _reverse(spacing_t)
    return file, shape, spacing_t


def _nifti_shape(shape: tuple, path: Path, as_volume: bool) -> tuple[int, ...]:
    """A NIfTI label's array shape in storage order; ``as_volume``: (x, y, z) as the converters store it (trailing
    singleton axes dropped, a 2-D file one slice), for comparing with h5."""
    return xyz_shape(shape, path) if as_volume else tuple(int(s) for s in shape)


def _without_trailing_ones(shape: tuple) -> tuple[int, ...]:
    """``(40, 36, 1)`` -> ``(40, 36)``: two NIfTI files that differ only there hold the same grid (a (x, y, 1) prediction
    of a 2-D label); the pair is then scored in the shorter shape."""
    dims = list(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _world(file: LabelFile):
    """A NIfTI file's voxel-to-world map in mm (None for h5, or a header without orientation)."""
    return world_mm(_nifti(file.path), file.path) if file.kind == "nifti" else None


def _nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable NIfTI file ({first}); re-create it") from None


def read_label_volume(file: LabelFile, reverse: bool = False, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The label array of a file (h5 dataset ``file.key``, or NIfTI data); ``reverse`` flips NIfTI axes to (z, y, x)."""
    if file.kind == "h5":
        import h5py

        from medseg_platform.data.layout import _check_declared

        try:
            with h5py.File(file.path, "r") as fh:
                dataset = fh[file.key or _h5_key(file.path, "pred")]
                _check_declared(file.path, dataset.name.lstrip("/"), dataset.shape, dataset.dtype.itemsize)  # before the read
                return dataset[()]
        except (OSError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{file.path}: unreadable HDF5 file ({first}); re-create it") from None
    img = _nifti(file.path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{file.path}: unreadable NIfTI data ({first}); re-create it") from None
    data = data.reshape(shape or _nifti_shape(data.shape, file.path, as_volume=reverse))  # shape: set for NIfTI pairs only
    if reverse:
        data = np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1]))
    return data


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class FolderEvaluation:
    """Result of :func:`evaluate_folder`: per-case rows (dicts of :data:`PER_CASE_COLUMNS`) and the summary."""

    rows: list[dict]
    summary: dict
    units: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # printed by the CLI, e.g. classes no volume contains


def evaluate_folder(pred_dir: str | Path, gt: str | Path, num_classes: int = 4, spacing_from: str = "gt",
                    backend: str = "ours", empty_policy: str = "nan",
                    progress: Callable[[int, int, str], None] | None = None,
                    label_suffix: str = LABEL_SUFFIX, class_names: Mapping[int, str] | None = None) -> FolderEvaluation:
    """Evaluate every prediction in ``pred_dir`` against ``gt`` (a folder or an SSL4MIS dataset root; in a folder the
    labels are named ``<case><label_suffix>``, ``_gt`` by default).

    Raises :class:`DataError`/:class:`ConfigError` (one line) for missing folders, predictions without
    ground truth, shape mismatches, label values outside ``[0, num_classes)``; ``progress(i, n, case)`` is
    called before each case. Foreground classes that no volume contains are named in ``warnings`` (with their
    ``class_names``, label -> name, where given).
    """
    check_options(empty_policy, backend)
    if spacing_from not in SPACING_SOURCES:
        raise ConfigError(f"--spacing-from: unknown value {spacing_from!r} (use one of {', '.join(SPACING_SOURCES)})")
    num_classes = check_num_classes(num_classes, "--num-classes")
    pred_dir = Path(pred_dir).expanduser()
    gt = Path(gt).expanduser()
    if not pred_dir.is_dir():
        problem = "is a file, not a folder" if pred_dir.exists() else "folder does not exist"
        raise DataError(f"--pred {pred_dir}: {problem} (give the folder holding the predicted volumes)")
    if not gt.is_dir():
        problem = "is a file, not a folder" if gt.exists() else "folder does not exist"
        raise DataError(f"--gt {gt}: {problem} (give a ground-truth folder or a dataset root)")
    preds = list_label_files(pred_dir, "pred", label_suffix)
    if not preds:
        raise DataError(f"--pred {pred_dir}: no prediction volumes (.h5, .nii, .nii.gz) found at its top level")
    root_mode = is_dataset_root(gt)
    if root_mode and label_suffix != LABEL_SUFFIX:  # it went unused (the review); predict refuses it with --data-root too
        raise ConfigError(f"--label-suffix {label_suffix}: names the label files of a ground-truth folder; the dataset root "
                          f"{gt} keeps its labels in data/<case>.h5 (drop --label-suffix)")
    if root_mode:
        gts = _root_label_files(gt, list(preds))
    else:
        gts = _with_converted_ids(_with_acdc_ids(ground_truth_files(gt, label_suffix), preds, acdc_converted_ids(gt), gt), preds)
    missing = [case for case in preds if case not in gts]
    if missing:
        where = f"{gt}/data/<case>.h5" if root_mode else str(gt)
        shown = first_few(missing)
        raise DataError(f"--gt {where}: no ground truth for {len(missing)} prediction(s): {shown} (check the case names or the folder)")

    unpredicted = unpredicted_cases(gt, root_mode, gts, preds)

    # pass 1: headers only (cheap), so a bad case fails before any metric is computed
    plan = []
    for case, pfile in preds.items():
        gfile = gts[case]
        mixed = pfile.kind != gfile.kind
        pfile, pshape, _ = _header(pfile, "pred", reverse=mixed and pfile.kind == "nifti")
        gfile, gshape, gt_spacing = _header(gfile, "gt", reverse=mixed and gfile.kind == "nifti")
        shape = None
        if pshape != gshape and not mixed and pfile.kind == "nifti" and _without_trailing_ones(pshape) == _without_trailing_ones(gshape):
            shape = pshape = gshape = _without_trailing_ones(gshape)
            gt_spacing = gt_spacing[: len(shape)] if gt_spacing is not None else None
        if pshape != gshape:
            raise DataError(f"{case}: prediction {pfile.path.name} has shape {pshape} but ground truth {gfile.path.name} has {gshape} "
                            "(predictions must be at native resolution and in the same axis order)")
        mismatch = orientation_mismatch(_world(pfile), _world(gfile)) if pfile.kind == gfile.kind == "nifti" else ""
        if mismatch:
            raise DataError(f"{case}: prediction {pfile.path.name} is stored in another orientation than ground truth "
                            f"{gfile.path.name} (by their affines, voxel {mismatch}: e.g. reoriented to a canonical frame); "
                            "voxels are compared by index, so write the prediction in the ground truth's voxel order")
        spacing = gt_spacing if spacing_from == "gt" else None
        if spacing is not None and (len(spacing) != len(gshape) or not all(math.isfinite(v) and v > 0 for v in spacing)):
            raise DataError(f"{gfile.path}: spacing {spacing} is not {len(gshape)} positive numbers for a {len(gshape)}-D volume "
                            "(fix the spacing or pass --spacing-from none)")
        plan.append((case, pfile, gfile, mixed, spacing, shape))
    with_spacing = [case for case, _, _, _, spacing, _ in plan if spacing is not None]
    if with_spacing and len(with_spacing) != len(plan):
        without = next(case for case, _, _, _, spacing, _ in plan if spacing is None)
        raise DataError(f"--gt {gt}: {len(with_spacing)} of {len(plan)} cases have a spacing but e.g. {without} has none "
                        "(units would mix mm and voxels; add the spacing or pass --spacing-from none)")
    units = "mm" if with_spacing else "voxel"

    # pass 2: read, validate, score
    start = time.perf_counter()
    rows: list[dict] = []
    present = np.zeros(int(num_classes), dtype=bool)  # classes seen in any prediction or ground truth
    for i, (case, pfile, gfile, mixed, spacing, shape) in enumerate(plan, 1):
        if progress is not None:
            progress(i, len(plan), case)
        pred = read_label_volume(pfile, reverse=mixed and pfile.kind == "nifti", shape=shape)
        truth = read_label_volume(gfile, reverse=mixed and gfile.kind == "nifti", shape=shape)
        pred = check_label_map(pred, num_classes, str(pfile.path))
        try:
            truth = check_label_map(truth, num_classes, str(gfile.path))
        except DataError as exc:
            if root_mode or _split_name(gfile.path.name)[0].endswith(label_suffix):
                raise
            # an unsuffixed file read as the label: often the image, its label named otherwise (the walkthrough)
            raise DataError(f"{exc}; if it is an image and its label is named otherwise, pass --label-suffix "
                            f"(e.g. _seg; now {label_suffix})") from None
        present |= (np.bincount(pred.ravel(), minlength=present.size) > 0) | (np.bincount(truth.ravel(), minlength=present.size) > 0)
        for row in evaluate_case(pred, truth, num_classes, spacing, empty_policy=empty_policy, backend=backend):
            rows.append({"case": case, "units": units, **row})
    warnings = []
    if not present[1:].all():
        from medseg_platform.data.check import manifest_num_classes

        settable = not root_mode or manifest_num_classes(gt) is None  # a root's manifest fixes them (medseg evaluate)
        warnings.append(absent_classes_warning(present, len(plan), empty_policy, classes_settable=settable,
                                               class_names=class_names))
    warnings += [unpredicted] if unpredicted else []
    settings = {
        "pred": str(pred_dir.resolve()),
        "gt": str(gt.resolve()),
        "gt_kind": "dataset-root" if root_mode else "folder",
        "num_classes": int(num_classes),
        "spacing_from": spacing_from,
        "metric_backend": backend,
        "empty_policy": empty_policy,
    }
    return FolderEvaluation(rows, summarize(rows), units, settings, time.perf_counter() - start, warnings)


def absent_classes_warning(present: np.ndarray, n_cases: int, empty_policy: str, classes_settable: bool = True,
                           class_names: Mapping[int, str] | None = None) -> str:
    """The warning for foreground classes that no prediction and no ground truth contains (``present[c]`` False):
    their rows measure nothing. A class is named by its label and, where ``class_names`` has it, its name ("3 (LV)",
    as the printed table names it). When they are the top classes, ``--num-classes`` is probably too large: said only
    where it is ``classes_settable`` (not for ground truth in a dataset root whose manifest records the classes)."""
    absent = [int(c) for c in np.flatnonzero(~present) if c > 0]
    names = class_names or {}
    shown = [f"{c} ({names[c]})" if c in names else str(c) for c in absent]
    rows = "NaN" if empty_policy == "nan" else "the released empty-mask scores"
    message = (f"class(es) {', '.join(shown)} appear in no prediction and no ground truth of the {n_cases} "
               f"case(s), so their rows hold {rows}, not a measurement")
    highest = int(np.flatnonzero(present).max(initial=0))
    if classes_settable and highest >= 1 and all(c > highest for c in absent):
        message += f"; if the data has {highest + 1} classes, pass --num-classes {highest + 1}"
    return message


# --------------------------------------------------------------------------------------- output
def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def summary_table(result: FolderEvaluation) -> tuple[list[str], list[list]]:
    """Header and rows of ``summary.csv``: one row per class and a ``mean`` row; per metric mean, std, undefined."""
    header = ["class", "n_cases"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "undefined")] + ["units"]
    rows = []
    groups = [(str(c), stats) for c, stats in result.summary["classes"].items()] + [("mean", result.summary["mean"])]
    for name, stats in groups:
        row = [name, result.summary["num_cases"]]
        for m in METRICS:
            row += [stats[m]["mean"], stats[m]["std"], stats[m]["n_undefined"]]
        rows.append(row + [result.units])
    return header, rows


def write_results(result: FolderEvaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.csv`` and ``summary.json`` into ``out_dir`` as one set: each is written to a
    temporary file first and the three replace the earlier ones only when all three are written (a full disk used to
    leave two files of the new run beside the old run's ``summary.json``: the security audit). Returns their paths;
    one-line :class:`MedsegError` when they cannot be written (the earlier files are then intact)."""
    out_dir = Path(out_dir).expanduser()
    paths = {"per_case": out_dir / "per_case.csv", "summary_csv": out_dir / "summary.csv", "summary_json": out_dir / "summary.json"}
    per_case = [[row[col] for col in PER_CASE_COLUMNS] for row in result.rows]
    header, rows = summary_table(result)
    document = {
        **result.settings,
        "units": result.units,
        "num_cases": result.summary["num_cases"],
        "metrics": list(METRICS),
        "notes": "asd is directed (prediction surface to ground truth), as medpy.asd(pred, gt); null = undefined "
                 "(excluded from means, counted in n_undefined); std is the population std over cases",
        "classes": result.summary["classes"],
        "mean": result.summary["mean"],
    }
    texts = {paths["per_case"]: _csv(list(PER_CASE_COLUMNS), per_case), paths["summary_csv"]: _csv(header, rows),
             paths["summary_json"]: json.dumps(_json_safe(document), indent=2, sort_keys=True, allow_nan=True) + "\n"}
    try:
        write_texts_atomic(texts)
    except OSError as exc:
        raise MedsegError(f"--out {out_dir}: the results could not be written ({exc.strerror or exc}); the files of an earlier "
                          "evaluation there are intact: free space (or fix the folder) and run it again") from None
    return paths


def format_table(result: FolderEvaluation, names: Mapping[int, str] | None = None) -> str:
    """A short text table: per class (its label, or ``names[label]``) and mean, Dice/Jaccard in %, distances in the
    result's units."""
    names = names or {}
    width = max([6, *(len(n) for n in names.values())])
    lines = [f"{'class':>{width}} {'Dice %':>14} {'Jaccard %':>14} {'HD95 ' + result.units:>16} {'ASD ' + result.units:>16}  undefined d/j/h/a"]
    groups = [(names.get(int(c), str(c)), stats) for c, stats in result.summary["classes"].items()] + [("mean", result.summary["mean"])]
    for name, stats in groups:
        cells = []
        for metric, scale in (("dice", 100.0), ("jaccard", 100.0), ("hd95", 1.0), ("asd", 1.0)):
            mean, std = stats[metric]["mean"], stats[metric]["std"]
            cells.append(f"{mean * scale:.2f}±{std * scale:.2f}" if not math.isnan(mean) else "n/a")
        undefined = "/".join(str(stats[m]["n_undefined"]) for m in ("dice", "jaccard", "hd95", "asd"))
        lines.append(f"{name:>{width}} {cells[0]:>14} {cells[1]:>14} {cells[2]:>16} {cells[3]:>16}  {undefined}")
    return "\n".join(lines)
