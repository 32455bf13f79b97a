"""A finished trial's selected weights applied to a dataset: ``medseg predict`` and a study's ``--test-root``.

The weights are those the trial tested (``eval.selection``: the best validation's, or the final iteration's under
``--protocol released``; the ``best_state`` of ``<trial>/checkpoint/checkpoint.pt``,
:func:`medseg_platform.engine.load_selected_model`; ``prediction.json``'s ``best_step`` is that state's step), the network is rebuilt from the trial's ``config.json``, and
every volume is predicted exactly as the trial's own test evaluation predicts it
(:func:`medseg_platform.engine.predict_case`: slice-wise at the trial's patch size, its ``eval.resize`` policy), so
a prediction of the trial's own test split scores what its ``per_case.csv`` holds.

``medseg predict --trial DIR [--data-root ROOT] --out OUT [--split test|val|all]`` writes per case (``--data-root``
defaults to the dataset the trial trained on, its ``config.json``'s ``data.root``):

* ``OUT/<case>.h5``: dataset ``pred`` (uint8 D×H×W label map at the volume's native size) and, when known, the
  ``spacing`` attribute (mm, D, H, W). ``medseg evaluate --pred OUT --gt ROOT`` scores the folder as it is.
* ``OUT/nifti/<case>.nii.gz``: for cases converted from NIfTI (``medseg data convert-nifti`` / ``convert-acdc``
  record each source image's affine in the manifest), the label map in the source file's storage order (x, y, z)
  with its affine, so it overlays the original scan. Datasets converted before the affine was recorded, the
  phantom and SSL4MIS downloads have no affine: h5 only (the command says so).
* ``OUT/prediction.json``: the trial, data root, split, cases and selected step (no timestamps); written first with
  ``complete`` false, so a rerun after a stop replaces the files of its cases, and again at the end. A file of a case
  that no ``prediction.json`` there lists (an original scan kept in ``OUT/nifti``, say) is never replaced.

``medseg predict --trial DIR --images PATH [PATH ...] --out OUT`` predicts NIfTI scans that were never converted
(:func:`predict_images`; no labels, no list files): each file, or every NIfTI file directly in each folder (label
files ``*_gt`` and earlier predictions ``*_pred`` left out), is preprocessed as the converters preprocess
(``docs/data.md``, 'Preprocessing': per-volume min-max to [0, 1], no resampling) and written as above, ``OUT/<case>.h5``
and ``OUT/nifti/<case>.nii.gz`` with the scan's own header (both transforms and their codes, units, shape; uint8),
with the case ids ``medseg data convert-nifti`` would give. ``--label-suffix`` names the label files (default ``_gt``).

``--test-root ROOT2`` of a study (:func:`evaluate_on_test_root`) scores the selected weights of each trial on ROOT2's
test split right after the trial's own test evaluation and records it in the trial folder
(:func:`medseg_platform.results.write_test_root_results`). A trial that finished before the flag was given (or
with another root) is evaluated at the next run of the study command from its checkpoint, without training.

Both refuse, with one line, an unfinished trial and a dataset whose classes differ from the trial's
(:func:`check_same_classes`). Module import is light (no torch): the CLI parser imports it.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from medseg_platform.errors import DataError, MedsegError
from medseg_platform.evaluation.cli import EVALUATION_DIR, LABEL_SUFFIX, PREDICTION_SUFFIX, label_suffix

SPLITS = ("test", "val", "all")
NIFTI_DIR = "nifti"
PREDICTION_FILE = "prediction.json"


# ------------------------------------------------------------------------------------------ checks
def finished_trial(trial_dir: str | Path):
    """``(TrialRecord, TrialConfig)`` of a finished trial folder; one-line :class:`MedsegError` otherwise."""
    from medseg_platform.config import TrialConfig
    from medseg_platform.results import (CONFIG_FILE, ERROR_FILE, RESULT_FILE, STUDY_FILE, CorruptResult, read_trial,
                                         read_trial_config)

    trial_dir = Path(trial_dir).expanduser().resolve()
    if not trial_dir.is_dir():
        what = "a file, not a folder" if trial_dir.exists() else "no such folder"
        raise MedsegError(f"--trial {trial_dir}: {what} (give a trial folder, <results>/<study>/trials/<key>)")
    try:
        record = read_trial(trial_dir, in_its_study=False)  # a trial folder may be copied or moved to be predicted from
    except CorruptResult as exc:
        raise MedsegError(f"--trial: {exc}; rerun the study command to finish the trial") from None
    if record is None:
        if (trial_dir / STUDY_FILE).is_file():
            raise MedsegError(f"--trial {trial_dir}: a study folder, not a trial; give one of its trials, {trial_dir}/trials/<key>")
        if not (trial_dir / CONFIG_FILE).is_file():
            raise MedsegError(f"--trial {trial_dir}: not a trial folder (no {CONFIG_FILE} or {RESULT_FILE}); give "
                              "<results>/<study>/trials/<key>")
        reason = _recorded_error(trial_dir / ERROR_FILE)
        if reason:
            raise MedsegError(f"--trial {trial_dir}: the trial errored ({reason}); fix the cause and rerun its study command")
        if _stopped_early(trial_dir):
            raise MedsegError(f"--trial {trial_dir}: a search sample that ASHA stopped early (search_history.csv): it was never "
                              "tested and a rerun does not finish it; give a completed sample (best_config.json names the best "
                              "one's trial_key)")
        raise MedsegError(f"--trial {trial_dir}: unfinished trial (no {RESULT_FILE}); rerun its study command to finish it first")
    try:
        config = read_trial_config(trial_dir)
    except (OSError, ValueError, KeyError, TypeError):
        config = record.result["config"]  # written by the same call as config.json
    return record, TrialConfig.from_dict(config)


def _stopped_early(trial_dir: Path) -> bool:
    """Whether the search history of the trial's study (two folders up) lists it as stopped early by ASHA."""
    from medseg_platform.results import search_history_statuses

    return search_history_statuses(trial_dir.parent.parent).get(trial_dir.name) == "stopped early"


def _recorded_error(path: Path) -> str:
    """The ``error`` of a trial's ``error.json`` (its first line, at most 300 characters); "" when there is none."""
    import json

    try:
        error = json.loads(path.read_text(encoding="utf-8")).get("error")
    except (OSError, ValueError, AttributeError):
        return ""
    lines = str(error).strip().splitlines() if error else []
    return lines[0][:300] if lines else ""


def check_prediction_folder(out: Path, trial_dir: Path, cases: Sequence[str]) -> None:
    """``--out`` may not lie in the trial folder (it would mix predictions into the trial's result files) and may not
    hold predictions of other cases (``medseg evaluate --pred OUT`` scores every file there, so a mixed folder scores
    something else than this prediction): one-line :class:`MedsegError`. Files of the same cases are replaced."""
    if out == trial_dir or trial_dir in out.parents:
        raise MedsegError(f"--out {out}: inside the trial folder {trial_dir}; write predictions somewhere else")
    from medseg_platform.evaluation.scoring import list_label_files

    if not out.is_dir():
        return
    ours = set(cases)
    others = set(name for name in list_label_files(out, "pred") if name not in ours)
    if (out / NIFTI_DIR).is_dir():  # a case's NIfTI beside its h5 is the same case, counted once
        others |= set(name for name in list_label_files(out / NIFTI_DIR, "pred") if name not in ours)
    if others:
        names = sorted(others)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise MedsegError(f"--out {out}: already holds predictions of {len(names)} other case(s) ({shown}), which medseg evaluate "
                          "would score with these; use an empty folder, or delete them")


def note_replaced_trial(out: Path, trial_dir: Path, log: Callable[[str], None]) -> None:
    """Log a line when ``out``'s ``prediction.json`` names another trial than ``trial_dir``: its predictions of these
    cases are about to be replaced (it happened without a word: the workflow probe)."""
    import json

    try:
        earlier = json.loads((out / PREDICTION_FILE).read_text(encoding="utf-8")).get("trial")
    except (OSError, ValueError, AttributeError):
        return
    if earlier and Path(earlier) != Path(trial_dir):
        log(f"note: {out} holds predictions of trial {earlier}; those of these cases are replaced by trial {Path(trial_dir).name}'s")


def check_same_classes(root: str | Path, num_classes: int, class_names: Sequence[str], what: str, reference: str):
    """The :class:`~medseg_platform.data.layout.AcdcLayout` of ``root`` if its classes are ``class_names`` (labels
    1..num_classes-1); else one-line :class:`DataError` naming ``what`` (the flag) and ``reference`` (whose classes).

    The number of classes is known from the manifest (its ``class_names``, or the converter's ``num_classes``); a
    dataset without a manifest gets the default names of ``num_classes`` (its label values are checked when read).
    """
    from medseg_platform.data.check import manifest_num_classes
    from medseg_platform.data.layout import AcdcLayout

    try:
        layout = AcdcLayout(root, num_classes)
    except DataError as exc:  # a missing root or list: name the flag that gave it
        raise DataError(f"{what}: {exc}") from None
    ours = f"{num_classes} classes ({', '.join(class_names)} and background)"
    counted = manifest_num_classes(layout.root)
    if counted is not None and counted != num_classes:
        raise DataError(f"{what} {layout.root}: a dataset of {counted} classes, but {reference} has {ours} "
                        "(use a dataset labelled with the same classes)")
    names = layout.class_names
    if tuple(names) != tuple(class_names):
        raise DataError(f"{what} {layout.root}: class names {', '.join(names)} differ from {', '.join(class_names)} of {reference} "
                        "(labels must mean the same classes; if only the names differ, convert it again with --class-names)")
    return layout


def check_test_root(root: str | Path, datasets: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """A study's ``--test-root`` against its datasets (``(root, num_classes)`` of its trials): the same classes as each,
    else one-line :class:`DataError`; returns the ``(test root, num_classes)`` pairs for the data preflight."""
    from medseg_platform.data.layout import dataset_class_names

    out = []
    for data_root, num_classes in datasets:
        names = dataset_class_names(data_root, num_classes)
        layout = check_same_classes(root, num_classes, names, "--test-root", f"the study's data {data_root}")
        if not layout.test_cases:
            raise DataError(f"--test-root {layout.root}: its test.list names no case (nothing to evaluate)")
        out.append((str(layout.root), num_classes))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------- predicting
def split_cases(layout, split: str) -> list[str]:
    """Case ids of ``split``: ``test``, ``val`` or ``all`` (training cases, then val, then test; file order)."""
    if split == "all":
        return list(dict.fromkeys([*layout.cases("train"), *layout.cases("val"), *layout.cases("test")]))
    return layout.cases(split)


def _nifti_bytes(prediction_dhw, affine, oriented: bool = True) -> bytes:
    """A gzipped NIfTI-1 of a (D, H, W) label map in storage order (x, y, z) = (W, H, D) with ``affine``; the gzip
    header carries no time, so equal predictions give equal bytes. ``oriented`` False (a source without orientation,
    ``medseg_platform.data.nifti.source_grid``): both transform codes 0, the voxel sizes in ``pixdim``, as the source."""
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(prediction_dhw, (2, 1, 0))).astype(np.uint8),
                            np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(np.uint8)
    code = 2 if oriented else 0
    image.set_sform(image.affine, code=code)
    image.set_qform(image.affine, code=code)  # both transforms (nibabel writes the sform only): every viewer reads the grid
    image.header.set_xyzt_units("mm")  # the manifest's affines are in mm (medseg_platform.data.nifti.source_affine)
    return gzip.compress(image.to_bytes(), mtime=0)


def _check_volumes_predictable(layout, cases: Sequence[str], split: str) -> None:
    """A :class:`DataError` naming the first volume of ``cases`` that cannot be read or holds a non-finite voxel, and how
    many do, before anything is written (the evaluation review: one found after the first cases' predictions left a
    partial folder, and a NaN voxel's error named no file). Reads every volume once more than predicting does."""
    import numpy as np

    from medseg_platform.data.layout import read_h5_pair

    problems = []
    for case in cases:
        path = layout.volume_path(case)
        try:
            image, _, _ = read_h5_pair(path, 3)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
            problems.append(f"{path}: 'image' holds NaN/inf or non-numbers (normalise it to [0, 1])")
    if problems:
        raise DataError(f"--data-root {layout.root}: {len(problems)} of the {split} split's {len(cases)} volume(s) cannot be "
                        f"predicted, e.g. {problems[0]} ('medseg data check {layout.root}' lists every problem)")


def predict_trial(trial_dir: str | Path, data_root: str | Path, out: str | Path, split: str = "test",
                  log: Callable[[str], None] = print) -> dict:
    """Write the predictions of a finished trial for ``split`` of ``data_root`` into ``out`` (see the module docstring);
    returns what ``prediction.json`` records."""
    import numpy as np

    from medseg_platform.data.layout import _h5_write  # the layout's deterministic, atomic h5 writer
    from medseg_platform.data.nifti import with_voxel_sizes
    from medseg_platform.engine import load_selected_model, pick_device, predict_case
    from medseg_platform.engine.conv_kernels import recorded_conv_kernels, using_conv_kernels
    from medseg_platform.io import atomic_path, check_output_folder, folder_lock, write_json_atomic
    from medseg_platform.results import recorded_class_names

    if split not in SPLITS:
        raise MedsegError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    record, cfg = finished_trial(trial_dir)
    names = recorded_class_names(record.result)
    layout = check_same_classes(data_root, cfg.data.num_classes, names, "--data-root", f"trial {record.path.name}")
    cases = split_cases(layout, split)
    if not cases:
        raise DataError(f"--data-root {layout.root}: the {split} split names no case")
    absent = [case for case in cases if not layout.volume_path(case).is_file()]
    if absent:  # before the model is loaded and any prediction written (a partial folder without prediction.json)
        raise DataError(f"--data-root {layout.root}: {len(absent)} of the {split} split's {len(cases)} volume(s) are missing, e.g. "
                        f"{layout.volume_path(absent[0])} ('medseg data check {layout.root}' lists every problem)")
    out = Path(out).expanduser().resolve()
    if out == layout.root or layout.root in out.parents:
        raise MedsegError(f"--out {out}: inside the dataset {layout.root}; write predictions somewhere else")
    check_output_folder(out, "--out")
    _check_volumes_predictable(layout, cases, split)
    facts = {case: (layout.manifest.get("cases") or {}).get(case, {}) for case in cases}  # read_manifest checked them
    affines = {case: facts[case].get("affine") for case in cases}

    def refusals() -> None:  # before the lock (a refused run creates nothing) and again under it
        check_prediction_folder(out, record.path.resolve(), cases)
        check_own_outputs(out, own_outputs(out, cases, [case for case in cases if affines[case] is not None]))

    refusals()
    with folder_lock(out, "medseg predict", keep=False):  # two runs into one --out mixed their cases (the security audit)
        refusals()
        device = pick_device()
        model = load_selected_model(cfg, record.path, device, best_step=record.result.get("best_step"),
                                    best_val_dice=record.result.get("best_val_dice"))
        kernels = recorded_conv_kernels(record.result, cfg, device.type)  # the CPU kernels of the trial's own test
        summary = {"trial": str(record.path), "data_root": str(layout.root), "split": split, "cases": cases,
                   "best_step": record.result.get("best_step"), "num_classes": cfg.data.num_classes, "class_names": list(names),
                   "nifti": [case for case in cases if affines[case] is not None], "distance_units": cfg.eval.distance_units,
                   "empty_policy": cfg.eval.empty_policy}
        note_replaced_trial(out, record.path, log)
        write_json_atomic(out / PREDICTION_FILE, {**summary, "complete": False})  # its cases are this run's to replace
        with_affine = []
        for i, case in enumerate(cases, 1):
            volume = layout.read_volume(case)
            with using_conv_kernels(kernels):
                prediction = predict_case(model, volume.image, cfg, device)
            attrs = {"spacing": np.asarray(volume.spacing, dtype=np.float64)} if volume.spacing is not None else {}
            _h5_write(out / f"{case}.h5", {"pred": prediction}, attrs)
            affine = affines[case]
            if affine is not None and volume.spacing is not None:  # a manifest of earlier code: a unit-scale sform kept
                affine = with_voxel_sizes(affine, list(volume.spacing)[::-1])
            if affine is not None:
                with atomic_path(out / NIFTI_DIR / f"{case}.nii.gz") as tmp:
                    tmp.write_bytes(_nifti_bytes(prediction, affine, facts[case].get("oriented", True)))
                with_affine.append(case)
            log(f"[{i}/{len(cases)}] {case}")
        summary["nifti"] = with_affine
        write_json_atomic(out / PREDICTION_FILE, {**summary, "complete": True})
        return summary


# ------------------------------------------------------------------------------- scans never converted
def _nifti_name(path: Path) -> bool:
    from medseg_platform.data.nifti import NIFTI_EXTENSIONS

    return any(path.name.lower().endswith(ext) and len(path.name) > len(ext) for ext in NIFTI_EXTENSIONS)


def labels_by_another_name(images: Sequence[Path]) -> str:
    """A note when some of a folder's ``images`` are named as another of them plus a suffix (``a_seg.nii.gz`` beside
    ``a.nii.gz``): most likely label files named otherwise than ``--label-suffix``, which would be predicted as scans
    (the walkthrough); "" otherwise. Names the most common such suffix and one pair."""
    from collections import Counter

    from medseg_platform.data.nifti import split_nifti_name

    stems = {split_nifti_name(p)[0]: p for p in images}
    pairs = {}
    for stem in stems:
        parts = stem.split("_")
        for cut in range(1, len(parts)):
            base = "_".join(parts[:cut])
            if base in stems:
                pairs.setdefault("_" + "_".join(parts[cut:]), []).append((stems[base].name, stems[stem].name))
                break
    if not pairs:
        return ""
    suffix, count = Counter({suffix: len(found) for suffix, found in pairs.items()}).most_common(1)[0]
    base, named = pairs[suffix][0]
    return (f"{count} file(s) are named as another plus {suffix!r} (e.g. {named} beside {base}) and are predicted as scans; "
            f"if they are labels, rerun with --label-suffix {suffix}")


def image_files(paths: Sequence[str | Path], label_suffix: str = LABEL_SUFFIX) -> tuple[dict[str, Path], list[str]]:
    """``({case id: NIfTI file}, notes)`` of ``--images``: each file as given, and every ``.nii``/``.nii.gz`` file directly
    in each folder (sorted by name) except label files (names ending in ``label_suffix``), predictions (``_pred``) and
    4-D files, which the notes count per folder.
    Case ids are the converters' (:func:`medseg_platform.data.nifti.sanitize_case_id` of the name without extension).
    One-line :class:`DataError` for a path that does not exist, a file without a NIfTI name, a label or prediction file
    named on its own, a folder without images and two files of one case id."""
    from medseg_platform.data.nifti import is_time_series, sanitize_case_id, split_nifti_name

    not_images = (label_suffix, PREDICTION_SUFFIX)
    found: dict[str, Path] = {}
    told: list[str] = []
    for given in paths:
        # '..' removed, links not followed: a link is named as given (git-annex, DVC checkouts)
        path = Path(os.path.abspath(Path(given).expanduser()))
        if path.is_dir():
            names = sorted(p for p in path.iterdir() if p.is_file() and _nifti_name(p) and not p.name.startswith("."))
            labels = [p for p in names if split_nifti_name(p)[0].endswith(not_images)]
            series = [p for p in names if p not in labels and is_time_series(p)]
            chosen = [p for p in names if p not in labels and p not in series]
            notes = ([f"{len(labels)} label or prediction file(s) (names ending in {' or '.join(not_images)})"] if labels else []) + \
                ([f"{len(series)} 4-D file(s), e.g. {series[0].name} (give its 3-D frames)"] if series else [])
            if not chosen:
                left_out = f"; left out {' and '.join(notes)}" if notes else ""
                below = sorted(p.name for p in path.iterdir() if p.is_dir() and any(_nifti_name(f) for f in p.iterdir() if f.is_file()))
                hint = (f"its subfolders {', '.join(below[:3])}{' ...' if len(below) > 3 else ''} hold some: give them, e.g. "
                        f"--images {path}/*/" if below else "give the files, or the folder that holds them")
                raise DataError(f"--images {path}: no NIfTI image (.nii or .nii.gz) directly in this folder{left_out} ({hint})")
            told += [f"{path}: left out {note}" for note in notes]
            told += [f"{path}: {note}" for note in [labels_by_another_name(chosen)] if note]
        elif path.is_file():
            if not _nifti_name(path):
                raise DataError(f"--images {path}: not a NIfTI file name (expected .nii or .nii.gz)")
            if split_nifti_name(path)[0].endswith(not_images):
                raise DataError(f"--images {path}: a label or prediction file by its name (ending in {' or '.join(not_images)}); "
                                "give the image, or --label-suffix if your labels are named otherwise")
            chosen = [path]
        else:
            raise DataError(f"--images {path}: no such file or folder")
        for image in chosen:
            case = sanitize_case_id(split_nifti_name(image)[0])
            if case in found and found[case].resolve() != image.resolve():
                raise DataError(f"--images: {found[case]} and {image} are both case {case!r} (predictions are named by case; "
                                "give them in separate runs)")
            found[case] = image
    return found, told


def _nifti_like(prediction_dhw, source: Path) -> bytes:
    """A gzipped NIfTI of a (D, H, W) label map with the header of the scan it was predicted from: its qform and sform
    with their codes, its units and its shape, the data type uint8 without scaling, so the prediction lands on the
    scan in every viewer whatever the scan's header says (the converters record one affine: :func:`_nifti_bytes`).
    The scan's display window (``cal_min``/``cal_max``), intent, description and extensions are not copied: the intent is
    "label". The gzip header carries no time."""
    import nibabel as nib
    import numpy as np

    from medseg_platform.data.nifti import _load

    scan = _load(source)
    data = np.ascontiguousarray(np.transpose(prediction_dhw, (2, 1, 0))).astype(np.uint8)
    data = data.reshape(scan.shape) if data.size == int(np.prod(scan.shape)) else data  # a 2-D or (x, y, z, 1) scan
    kind = nib.Nifti2Image if isinstance(scan, nib.Nifti2Image) else nib.Nifti1Image
    header = scan.header.copy() if isinstance(scan, (nib.Nifti1Image, nib.Nifti2Image)) else None
    if header is None:  # another format nibabel reads (Analyze): the affine as read, in both transforms
        image = nib.Nifti1Image(data, scan.affine)
        image.set_qform(scan.affine, code=2)
    else:
        image = kind(data, None, header=header)  # no affine given: nibabel keeps the header's qform and sform as they are
    image.set_data_dtype(np.uint8)
    header = image.header
    header.set_slope_inter(1.0, 0.0)
    # what described the scan's intensities does not describe a label map: display window, intent, notes, extensions
    header["cal_min"], header["cal_max"] = 0, 0
    header.set_intent("label")
    header["descrip"], header["aux_file"] = b"medseg predict: labels", b""
    header.extensions.clear()
    return gzip.compress(image.to_bytes(), mtime=0)


def own_outputs(out: Path, cases: Iterable[str], nifti: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(case, path)`` of the files a prediction of ``cases`` writes: ``OUT/<case>.h5``, and ``OUT/nifti/<case>.nii.gz``
    for the cases in ``nifti``."""
    return [(case, out / f"{case}.h5") for case in cases] + [(case, out / NIFTI_DIR / f"{case}.nii.gz") for case in nifti]


def check_own_outputs(out: Path, writes: Sequence[tuple[str, Path]], inputs: Sequence[Path] = ()) -> None:
    """Refuse, with one line, a prediction that would replace a file it reads, or a file that no earlier prediction of the
    same folder wrote (its ``prediction.json`` lists the case, and for a NIfTI file among its ``nifti``): a scan folder
    named ``nifti`` under ``--out`` lost its scans to their predictions (the data-flow probe). ``writes``:
    :func:`own_outputs`."""
    import json

    resolved_inputs = {Path(p).resolve() for p in inputs}
    listed: dict = {}
    try:
        listed = json.loads((out / PREDICTION_FILE).read_text(encoding="utf-8"))
        listed = listed if isinstance(listed, dict) else {}
    except (OSError, ValueError):
        pass
    cases = set(listed.get("cases") or []) if isinstance(listed.get("cases"), list) else set()
    nifti = set(listed.get("nifti") or []) if isinstance(listed.get("nifti"), list) else cases
    for case, path in writes:
        if path.resolve() in resolved_inputs:
            raise MedsegError(f"--out {out}: the prediction {path} would replace the scan it is made from; write predictions "
                              "somewhere else")
        wrote = nifti if path.parent.name == NIFTI_DIR and path.parent.parent == out else cases
        if path.exists() and case not in wrote:
            raise MedsegError(f"--out {out}: {path} exists and is not a prediction of an earlier medseg predict here (its "
                              f"{PREDICTION_FILE} does not list it for {case}), e.g. an original scan; use another --out or "
                              "move it")


def predict_images(trial_dir: str | Path, images: Sequence[str | Path], out: str | Path,
                   log: Callable[[str], None] = print, label_suffix: str = LABEL_SUFFIX) -> dict:
    """Write the predictions of a finished trial for NIfTI scans never converted (see the module docstring). Every
    header and every scan's voxels are read and checked before the model is loaded and anything is written; the
    folder's ``prediction.json`` is written first (``complete`` false) and again at the end. Returns what
    ``prediction.json`` records: ``images`` ({case: file}) in place of ``data_root`` and ``split``."""
    import numpy as np

    from medseg_platform.data.layout import _h5_write
    from medseg_platform.data.nifti import _voxels, minmax_normalise, read_header, to_dhw
    from medseg_platform.engine import load_selected_model, pick_device, predict_case
    from medseg_platform.engine.conv_kernels import recorded_conv_kernels, using_conv_kernels
    from medseg_platform.io import atomic_path, check_output_folder, folder_lock, write_json_atomic
    from medseg_platform.results import recorded_class_names

    def scan(path: Path) -> np.ndarray:
        return minmax_normalise(to_dhw(np.asarray(_voxels(path, lambda img: img.get_fdata(dtype=np.float64)))), path)

    record, cfg = finished_trial(trial_dir)
    files, notes = image_files(images, label_suffix)
    headers = {case: read_header(path) for case, path in files.items()}  # a broken header stops here, before any work
    out = Path(out).expanduser().resolve()
    if any(out == path.parent or out in path.parents or out == path.resolve().parent for path in files.values()):
        # (one folder above: `medseg evaluate --gt` would then read the predictions there as the labels)
        raise MedsegError(f"--out {out}: the folder of the scans, or one they lie in; write predictions somewhere else")
    check_output_folder(out, "--out")

    def refusals() -> None:  # before the lock (a refused run creates nothing) and again under it
        check_prediction_folder(out, record.path.resolve(), list(files))
        check_own_outputs(out, own_outputs(out, files, files), list(files.values()))

    refusals()
    for path in files.values():  # NaN or constant voxels stop here too: a half-written folder helps nobody
        scan(path)
    with folder_lock(out, "medseg predict", keep=False):  # two runs into one --out mixed their cases (the security audit)
        refusals()
        device = pick_device()
        model = load_selected_model(cfg, record.path, device, best_step=record.result.get("best_step"),
                                    best_val_dice=record.result.get("best_val_dice"))
        kernels = recorded_conv_kernels(record.result, cfg, device.type)
        summary = {"trial": str(record.path), "images": {case: str(path) for case, path in files.items()}, "cases": list(files),
                   "best_step": record.result.get("best_step"), "num_classes": cfg.data.num_classes,
                   "class_names": list(recorded_class_names(record.result)), "nifti": list(files),
                   "distance_units": cfg.eval.distance_units, "empty_policy": cfg.eval.empty_policy}
        note_replaced_trial(out, record.path, log)
        write_json_atomic(out / PREDICTION_FILE, {**summary, "complete": False})  # its cases are this run's to replace
        for note in notes:  # after every check: an error is the only line
            log(note)
        for i, (case, path) in enumerate(files.items(), 1):
            image = scan(path)
            with using_conv_kernels(kernels):
                prediction = predict_case(model, image, cfg, device)
            _h5_write(out / f"{case}.h5", {"pred": prediction}, {"spacing": np.asarray(headers[case].spacing, dtype=np.float64)})
            with atomic_path(out / NIFTI_DIR / f"{case}.nii.gz") as tmp:
                tmp.write_bytes(_nifti_like(prediction, path))
            log(f"[{i}/{len(files)}] {case} ({path.name}, {'x'.join(map(str, image.shape))})")
        write_json_atomic(out / PREDICTION_FILE, {**summary, "complete": True})
        return summary


def label_folder(summary: dict, label_suffix: str = LABEL_SUFFIX) -> Path | None:
    """The folder ``medseg evaluate --gt`` can score ``--images`` predictions in: where every scan has its label file
    ``<name><label_suffix>`` beside it, their one folder, or the one folder above their folders (read one level down,
    :func:`medseg_platform.evaluation.scoring.ground_truth_files`: the raw ACDC release's ``training/``). None
    otherwise."""
    from medseg_platform.data.nifti import label_path_for
    from medseg_platform.evaluation.scoring import ground_truth_files

    paths = [Path(p) for p in summary.get("images", {}).values()]
    if not paths or not all(label_path_for(p, label_suffix).is_file() for p in paths):
        return None
    folders = {p.parent for p in paths}
    candidates = folders if len(folders) == 1 else {f.parent for f in folders}
    if len(candidates) != 1:
        return None
    folder = candidates.pop()
    try:
        found = ground_truth_files(folder, label_suffix)
    except (DataError, OSError):
        return None
    labels = {file.path for file in found.values()}
    return folder if all(label_path_for(p, label_suffix) in labels for p in paths) else None


# ------------------------------------------------------------------------------- external test set
def test_split_fingerprint(layout) -> str:
    """SHA-256 over the bytes of a dataset's ``test.list`` and manifest and the sizes of its test volumes (an
    ``AcdcLayout``): what an external test set evaluation scored. Cheap (no volume is read) and the same on every node
    holding a copy of the dataset (no file times). A dataset converted or generated again gets another one through its
    manifest, which records each file's checksum; a volume edited in place to the same size, in a dataset without a
    manifest, is not noticed."""
    import hashlib
    import os

    from medseg_platform.data.layout import MANIFEST, TEST_LIST

    digest = hashlib.sha256()
    for path in (layout.root / TEST_LIST, layout.root / MANIFEST):
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(none)") + b"\0")
    for case in layout.test_cases:
        path = layout.volume_path(case)
        digest.update(f"{path.name}:{os.path.getsize(path) if path.is_file() else None}\0".encode())
    return digest.hexdigest()


def has_test_root_evaluation(trial_dir: str | Path, root: str | Path) -> bool:
    """True when the finished trial in ``trial_dir`` holds a complete evaluation on the test root ``root``, of the test
    split as it is now (its recorded fingerprint; an evaluation recorded before fingerprints were kept counts by path)."""
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.results import CorruptResult, read_test_root, read_trial

    try:
        record = read_trial(Path(trial_dir))
    except CorruptResult:
        return False
    found = read_test_root(record) if record is not None else None
    if found is None or found[0] != str(Path(root).expanduser().resolve()):
        return False
    recorded = record.result["test_root"].get("fingerprint")
    if recorded is None:
        return True
    try:
        return recorded == test_split_fingerprint(AcdcLayout(found[0]))
    except MedsegError:
        return False  # unreadable now: scoring it again gives the clear error


def needs_test_root_evaluation(trial_dir: str | Path, root: str | Path) -> bool:
    """True for a finished trial without an evaluation on ``root`` that can still make one (its checkpoint exists);
    a trial whose checkpoint is gone is reported as missing from the external block instead of being retried."""
    from medseg_platform.results import CorruptResult, checkpoint_path, read_trial

    try:
        finished = read_trial(Path(trial_dir)) is not None
    except CorruptResult:
        return False  # run again as a whole, which evaluates the test root too
    return (finished and not has_test_root_evaluation(trial_dir, root)
            and checkpoint_path(trial_dir).is_file())


def evaluate_on_test_root(trial_dir: str | Path, root: str | Path, device=None) -> dict:
    """Score a finished trial's selected weights on the test split of ``root`` (per case and class, as its own test
    evaluation) and record it (``per_case_test_root.csv``, ``result.json``'s ``test_root``); returns that block."""
    from medseg_platform.engine import evaluate_volumes, load_selected_model, pick_device
    from medseg_platform.engine.conv_kernels import recorded_conv_kernels, using_conv_kernels
    from medseg_platform.results import recorded_class_names, write_test_root_results

    record, cfg = finished_trial(trial_dir)
    names = recorded_class_names(record.result)
    layout = check_same_classes(root, cfg.data.num_classes, names, "--test-root", f"trial {record.path.name}")
    fingerprint = test_split_fingerprint(layout)  # of the files as they are before they are read
    device = device or pick_device()
    model = load_selected_model(cfg, record.path, device, best_step=record.result.get("best_step"),
                                best_val_dice=record.result.get("best_val_dice"))
    with using_conv_kernels(recorded_conv_kernels(record.result, cfg, device.type)):  # the kernels of its own test
        rows = evaluate_volumes(model, (layout.read_volume(case) for case in layout.test_cases), cfg, device)
    return write_test_root_results(record.path, layout.root, rows, fingerprint)


# ------------------------------------------------------------------------------------------------ CLI
def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "predict",
        help="apply the weights a finished trial tested to a dataset or to NIfTI scans; one label file per case",
        example="medseg predict --trial results/ablation_tailness-quick/trials/KEY --data-root data/acdc --out preds "
                "&& medseg evaluate --pred preds --gt data/acdc\n"
                "  medseg predict --trial results/ablation_tailness-quick/trials/KEY --images scans/ new.nii.gz --out preds",
        description=(
            "Apply the weights a finished trial tested (the best validation's, or the final iteration's under --protocol\n"
            "released: its eval.selection; the network rebuilt from its config.json) slice-wise to every volume of a\n"
            "split, exactly as the trial's test evaluation does.\n"
            "Writes OUT/<case>.h5 (dataset 'pred', uint8, native size; 'medseg evaluate --pred OUT' reads it),\n"
            "OUT/nifti/<case>.nii.gz with the source affine for cases converted from NIfTI, and OUT/prediction.json.\n"
            "The dataset must have the trial's classes. Exit code 2 for bad input (unfinished trial, other classes).\n"
            "--images instead predicts NIfTI scans that were never converted: no labels needed; each is preprocessed as\n"
            "the converters do (per-volume min-max to [0, 1], no resampling) and gets its NIfTI on its own grid."
        ),
    )
    parser.add_argument("--trial", required=True, metavar="DIR", help="a finished trial folder (<results>/<study>/trials/<key>)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-root", metavar="ROOT",
                        help="dataset root in the SSL4MIS/ACDC layout (all three list files present, even for --split test; "
                             "medseg data convert-nifti writes them); default: the dataset the trial trained on (its "
                             "config.json's data.root, e.g. the embedded phantom)")
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="NIfTI scans never converted: .nii/.nii.gz files, or folders (every NIfTI file directly in "
                             "them but *_gt/*_pred label or prediction files and 4-D files); case ids as convert-nifti's")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created; an earlier prediction's files of the same cases are replaced; one "
                             "holding other cases' predictions, or files no earlier prediction there wrote, is refused)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="cases of --data-root to predict: test (default), val, or all")
    parser.add_argument("--label-suffix", default=None, metavar="SUFFIX", type=label_suffix,
                        help=f"with --images: label files are named <image>SUFFIX (default {LABEL_SUFFIX}, as convert-nifti's); "
                             "a folder's label files are left out")
    parser.set_defaults(func=run)


def trained_data_root(trial_dir: str | Path) -> str:
    """The dataset root a trial trained on (its ``config.json``'s ``data.root``): ``medseg predict``'s default
    ``--data-root``. :class:`MedsegError` (one line, naming what to pass) when the trial folder has no readable config or
    the dataset is no longer there."""
    import json

    path = Path(trial_dir).expanduser() / "config.json"
    try:
        root = json.loads(path.read_text())["config"]["data"]["root"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MedsegError(f"--data-root: not given, and {path} does not say which dataset the trial trained on "
                          f"({type(err).__name__}); pass --data-root ROOT or --images") from None
    if not root or not Path(root).is_dir():
        raise MedsegError(f"--data-root: not given, and the dataset the trial trained on, {root}, is not there any more; "
                          "pass --data-root ROOT (or --images)")
    return str(root)


def evaluate_command(out: Path, summary: dict, label_suffix: str = LABEL_SUFFIX) -> str:
    """The ``medseg evaluate`` line that scores a prediction folder with the trial's own evaluation settings (distance
    units and empty-mask policy: ``eval.distance_units`` -> ``--spacing-from``, ``eval.empty_policy`` -> ``--empty-policy``),
    against labels named ``<case><label_suffix>`` in a folder."""
    import shlex

    words = ["medseg", "evaluate", "--pred", str(out), "--gt", summary["data_root"], "--num-classes", str(summary["num_classes"])]
    if label_suffix != LABEL_SUFFIX:
        words += ["--label-suffix", label_suffix]
    if summary.get("distance_units") == "voxel":
        words += ["--spacing-from", "none"]
    if summary.get("empty_policy", "nan") != "nan":
        words += ["--empty-policy", summary["empty_policy"]]
    return " ".join(shlex.quote(w) for w in words)


def run(args) -> int:
    """``medseg predict``; a Ctrl-C or a kill (SIGTERM, which exited 143 without a word: the data walkthrough) leaves the
    folder marked unfinished and says how to finish it."""
    from medseg_platform.study.ray_runtime import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return _predict(args)
    except KeyboardInterrupt:
        import json

        record = Path(args.out).expanduser().resolve() / PREDICTION_FILE
        try:
            unfinished = json.loads(record.read_text(encoding="utf-8")).get("complete") is False
        except (OSError, ValueError, AttributeError):
            unfinished = False
        started = (f"{record.parent} is unfinished ({record.name} says so; medseg evaluate warns)" if unfinished else
                   f"no prediction was written to {record.parent}")
        print(f"stopped by a signal: {started}; rerun the same command to predict", file=sys.stderr)
        return 130


def _predict(args) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = Path(args.out).expanduser().resolve()
    earlier_scores = (out / EVALUATION_DIR).is_dir()  # medseg evaluate's default output, of the predictions replaced here
    stale = (f"note: {out / EVALUATION_DIR} holds the scores of the predictions this run replaced; the command above "
             "scores these anew")
    if args.images is not None:
        if args.split is not None:
            raise MedsegError("--split: chooses cases of --data-root; with --images every scan given is predicted (drop --split)")
        suffix = LABEL_SUFFIX if args.label_suffix is None else args.label_suffix
        summary = predict_images(args.trial, args.images, args.out, log=progress, label_suffix=suffix)
        print(f"wrote {len(summary['cases'])} prediction(s) to {out}, NIfTI on each scan's grid in {out / NIFTI_DIR}")
        labels = label_folder(summary, suffix)
        if labels is not None:
            command = evaluate_command(out, {**summary, "data_root": str(labels)}, suffix)
            print(f"score them against the label files beside the scans: {command}")
        if earlier_scores:
            print(stale if labels is not None else stale.replace("the command above scores", "medseg evaluate scores"))
        return 0
    if args.label_suffix is not None:
        raise MedsegError("--label-suffix: names the label files beside --images scans; a --data-root dataset knows its own")
    split = args.split or "test"
    if args.data_root is None:
        finished_trial(args.trial)  # a wrong --trial is named as such, not as a dataset it does not record (the walkthrough)
    data_root = args.data_root if args.data_root is not None else trained_data_root(args.trial)
    if args.data_root is None:
        progress(f"--data-root: the trial's own dataset, {data_root}")
    summary = predict_trial(args.trial, data_root, args.out, split, log=progress)
    nifti = (f"; NIfTI with the source affine for {len(summary['nifti'])} of them in {out / NIFTI_DIR}" if summary["nifti"]
             else "; h5 only (the dataset's manifest records no source NIfTI affine)")
    print(f"wrote {len(summary['cases'])} prediction(s) of the {split} split to {out}{nifti}")
    print(f"score them as the trial did: {evaluate_command(out, summary)}")
    if earlier_scores:
        print(stale)
    return 0
