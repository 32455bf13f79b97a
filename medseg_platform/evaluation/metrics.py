"""Overlap and surface-distance metrics per case and foreground class (docs/evaluation.md, 'Metrics').

Metrics of a prediction ``P`` against ground truth ``G`` (binary masks of equal shape, any ndim):

* ``dice``    = 2|P∩G| / (|P|+|G|)
* ``jaccard`` = |P∩G| / |P∪G|
* ``hd95``    = 95th percentile (linear interpolation, ``np.percentile``) of the concatenation of both
  directed surface-distance sets d(P→G) and d(G→P)
* ``asd``     = mean of d(P→G): medpy's ``asd(pred, gt)``, which is *directed* (prediction surface to
  ground-truth surface). This is what the released ``test_2D.py`` calls and what the papers report.
* ``assd``    = mean of the concatenation of d(P→G) and d(G→P): medpy 0.5's ``assd``, the symmetric variant
  (medpy 0.4's ``assd`` was the mean of the two directed means; the two differ when the surfaces differ in size).

Definitions follow medpy 0.5.2 (checked by experiment and by the tests): the surface of a mask is the mask
minus its binary erosion by the connectivity-1 cross, with everything outside the array counting as
background (``scipy.ndimage.binary_erosion``'s default ``border_value=0``), so mask voxels on the array
border are surface voxels. d(P→G) is, for each surface voxel of P, the Euclidean distance (axes scaled by
``spacing``) to the nearest surface voxel of G. Units: voxels when ``spacing`` is None, else the spacing's
unit (mm). A trial's ``eval.distance_units`` chooses between them (:func:`distance_spacing`; "voxel" is the
released evaluation's, docs/evaluation.md, 'Units').

Speed: distances are computed on the bounding box of P∪G only, one pass over the label volumes finds the
boxes of all classes, and one histogram gives all overlaps. Cropping changes nothing: every surface voxel
of both masks lies in the box, the erosion of the crop sees background outside the box exactly as the full
array does (no mask voxel is outside), and an exact EDT of the crop measures the same distances to the
same, complete set of surface voxels.

Empty masks (``empty_policy``), for each foreground class:

===================  ==================================  ==========================
case                 ``"nan"`` (default)                 ``"released"``
===================  ==================================  ==========================
both non-empty       computed                            computed
G empty, P empty     all NaN (undefined)                 dice=jaccard=0, distances 0
G empty, P non-empty dice=jaccard=0, distances NaN       dice=jaccard=1, distances 0
G non-empty, P empty dice=jaccard=0, distances NaN       dice=jaccard=0, distances 0
===================  ==================================  ==========================

NaN means "undefined, excluded from means and counted" (see :func:`summarize`; docs/evaluation.md, 'Empty
masks'). Under ``"nan"`` Dice and Jaccard are NaN only where they are 0/0 (both masks empty): a prediction of a class
the ground truth lacks is a false positive and scores 0 (it used to be NaN, which hid it from every mean); the
distances are NaN whenever a mask has no surface to measure from or to. No policy raises.
This module does not import torch or medpy (medpy is imported only for ``backend="medpy"``).
"""

from __future__ import annotations

import numbers
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medseg_platform.errors import ConfigError, DataError
from medseg_platform.stats import defined, nan_mean

METRICS = ("dice", "jaccard", "hd95", "asd", "assd")
"""Metric keys in every result row, in report order."""

EMPTY_POLICIES = ("nan", "released")
BACKENDS = ("ours", "medpy")
DISTANCE_UNITS = ("mm", "voxel")  # EvalConfig.distance_units

_NAN = float("nan")


# ------------------------------------------------------------------------------------ checks
def check_options(empty_policy: str, backend: str) -> None:
    """Raise :class:`ConfigError` for an unknown ``empty_policy`` or ``backend``."""
    if empty_policy not in EMPTY_POLICIES:
        raise ConfigError(f"empty_policy: unknown value {empty_policy!r} (use one of {', '.join(EMPTY_POLICIES)})")
    if backend not in BACKENDS:
        raise ConfigError(f"metric backend: unknown value {backend!r} (use one of {', '.join(BACKENDS)})")


def normalise_spacing(spacing: Sequence[float] | float | None, ndim: int, where: str = "spacing") -> tuple[float, ...] | None:
    """``spacing`` as a tuple of ``ndim`` positive finite floats (a scalar applies to all axes), or None."""
    if spacing is None:
        return None
    try:
        values = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected {ndim} positive numbers (one per array axis), got {spacing!r}") from None
    if values.size == 1 and ndim > 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise DataError(f"{where}: expected {ndim} positive numbers (one per array axis), got {spacing!r}")
    return tuple(float(v) for v in values)


def distance_spacing(spacing: Sequence[float] | float | None, units: str) -> Sequence[float] | float | None:
    """The spacing to measure HD95/ASD with under ``eval.distance_units``: ``spacing`` itself for ``"mm"`` (so
    volumes without one are measured in voxels anyway), None for ``"voxel"`` (the released evaluation passes no
    spacing; docs/evaluation.md, 'Units'). An unknown ``units`` is a :class:`ConfigError`."""
    if units not in DISTANCE_UNITS:
        raise ConfigError(f"eval.distance_units: unknown value {units!r} (use one of {', '.join(DISTANCE_UNITS)})")
    return spacing if units == "mm" else None


# ------------------------------------------------------------------------------- core (crops)
def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask (any ndim): ``mask & ~erosion(mask)``, cross structure, border = background.

    Same result as ``mask ^ scipy.ndimage.binary_erosion(mask, generate_binary_structure(ndim, 1))``
    (medpy's definition), computed with shifted views of a zero-padded copy.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = tuple(slice(1, -1) for _ in range(mask.ndim))
    eroded = mask.copy()
    for axis in range(mask.ndim):
        for lo, hi in ((0, -2), (2, None)):
            index = list(interior)
            index[axis] = slice(lo, hi)
            eroded &= padded[tuple(index)]
    return mask & ~eroded


def _directed_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(d(P→G), d(G→P))`` float64 1-D arrays for two non-empty boolean masks of equal shape (crop them first)."""
    surf_p = surface(pred)
    surf_g = surface(gt)
    d_pg = ndimage.distance_transform_edt(~surf_g, sampling=spacing)[surf_p]
    d_gp = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_g]
    return d_pg, d_gp


def _distance_metrics(d_pg: np.ndarray, d_gp: np.ndarray) -> tuple[float, float, float]:
    """``(hd95, asd, assd)`` from the two directed distance sets."""
    both = np.concatenate((d_pg, d_gp))
    return float(np.percentile(both, 95)), float(d_pg.mean()), float(both.mean())


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of a boolean mask as slices, or None when empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others)) if others else np.flatnonzero(mask)
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _empty_values(n_pred: int, n_gt: int, empty_policy: str) -> dict[str, float]:
    """Metric values when at least one mask is empty (see the module table)."""
    if empty_policy == "released":
        overlap = 1.0 if (n_pred > 0 and n_gt == 0) else 0.0
        return {"dice": overlap, "jaccard": overlap, "hd95": 0.0, "asd": 0.0, "assd": 0.0}
    if n_gt == 0 and n_pred == 0:  # 0/0: nothing to score
        return dict.fromkeys(METRICS, _NAN)
    # one mask empty: no overlap (a missed class, or a false positive of an absent one), no surface on one side
    return {"dice": 0.0, "jaccard": 0.0, "hd95": _NAN, "asd": _NAN, "assd": _NAN}


def _medpy_values(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None) -> dict[str, float]:
    """The five metrics from medpy itself (both masks non-empty)."""
    from medpy.metric import binary as mb

    return {
        "dice": float(mb.dc(pred, gt)),
        "jaccard": float(mb.jc(pred, gt)),
        "hd95": float(mb.hd95(pred, gt, voxelspacing=spacing)),
        "asd": float(mb.asd(pred, gt, voxelspacing=spacing)),
        "assd": float(mb.assd(pred, gt, voxelspacing=spacing)),
    }


def _class_values(pred_crop: np.ndarray, gt_crop: np.ndarray, inter: int, n_pred: int, n_gt: int,
                  spacing: tuple[float, ...] | None, empty_policy: str, backend: str) -> dict[str, float]:
    """Metrics of one class from its cropped boolean masks and precomputed counts."""
    if n_pred == 0 or n_gt == 0:
        return _empty_values(n_pred, n_gt, empty_policy)
    if backend == "medpy":
        return _medpy_values(pred_crop, gt_crop, spacing)
    d_pg, d_gp = _directed_distances(pred_crop, gt_crop, spacing)
    hd95, asd, assd = _distance_metrics(d_pg, d_gp)
    return {
        "dice": 2.0 * inter / float(n_pred + n_gt),
        "jaccard": float(inter) / float(n_pred + n_gt - inter),
        "hd95": hd95,
        "asd": asd,
        "assd": assd,
    }


# ---------------------------------------------------------------------------------- public API
def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None,
                   empty_policy: str = "nan", backend: str = "ours") -> dict[str, float]:
    """Dice, Jaccard, HD95, ASD (directed P→G) and ASSD of two binary masks (any ndim, non-zero = object).

    ``spacing``: one positive number per axis (or a scalar), or None for voxel units.
    ``backend="medpy"`` computes the non-empty case with medpy 0.5 on the full arrays.
    Returns floats keyed by :data:`METRICS` (NaN = undefined under ``empty_policy="nan"``).
    """
    check_options(empty_policy, backend)
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise DataError(f"binary_metrics: prediction shape {pred.shape} differs from ground truth {gt.shape} (resample to the same grid)")
    if pred.ndim == 0:
        pred, gt = pred.reshape(1), gt.reshape(1)
    spacing_t = normalise_spacing(spacing, pred.ndim)
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if backend == "medpy" or n_pred == 0 or n_gt == 0:
        return _class_values(pred, gt, 0, n_pred, n_gt, spacing_t, empty_policy, backend)
    box = _union_box(_bbox(pred), _bbox(gt))
    inter = int(np.count_nonzero(pred[box] & gt[box]))
    return _class_values(pred[box], gt[box], inter, n_pred, n_gt, spacing_t, empty_policy, backend)


def check_label_map(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """``labels`` as an integer array with values in ``[0, num_classes)``; one-line :class:`DataError` otherwise.

    Floating arrays are accepted when every value is integral (NIfTI label maps are often stored as float).
    Returns uint8 when ``num_classes <= 256`` (else int32).
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if labels.size and not (np.isfinite(labels).all() and np.array_equal(labels, np.rint(labels))):
            raise DataError(f"{where}: label map has non-integer values (expected class indices 0..{num_classes - 1})")
    elif labels.dtype.kind not in "iu":
        raise DataError(f"{where}: label map has dtype {labels.dtype} (expected integer class indices)")
    if labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{where}: label values must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                            f"found range [{lo:g}, {hi:g}] (pass the right --num-classes or fix the file)")
    return labels.astype(np.uint8 if num_classes <= 256 else np.int32, copy=False)


#: The most classes a label map is scored with: the confusion histogram holds ``num_classes**2`` counts (8 MiB here);
#: a mistyped ``--num-classes 50000`` asked for 18.6 GiB and failed with NumPy's memory error (the metrics review).
MAX_CLASSES = 1024


def check_num_classes(num_classes, where: str = "num_classes") -> int:
    """``num_classes`` as an int in ``[2, MAX_CLASSES]``, else a one-line :class:`ConfigError` naming ``where``."""
    if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Real) or int(num_classes) != num_classes
            or not 2 <= num_classes <= MAX_CLASSES):
        raise ConfigError(f"{where}: expected an integer in [2, {MAX_CLASSES}] (background + the foreground classes), "
                          f"got {num_classes!r}")
    return int(num_classes)


def _label_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked label maps and their confusion matrix ``confusion[p, g]`` = #voxels predicted p with ground truth g
    (one histogram for all classes); :class:`ConfigError` / :class:`DataError` naming ``where`` on bad input."""
    num_classes = check_num_classes(num_classes)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"{where}: prediction shape {pred.shape} differs from ground truth {gt.shape} (resample to the same grid)")
    pred = check_label_map(pred, num_classes, f"{where}: prediction")
    gt = check_label_map(gt, num_classes, f"{where}: ground truth")
    if pred.ndim == 0:
        pred, gt = pred.reshape(1), gt.reshape(1)
    flat = pred.astype(np.intp).ravel() * num_classes + gt.ravel()
    confusion = np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return pred, gt, confusion


def case_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int, empty_policy: str = "nan") -> list[float]:
    """Dice of every foreground class ``1..num_classes-1`` of one case: the ``"dice"`` values of
    :func:`evaluate_case`'s rows, equal to the last bit, from the confusion histogram alone.

    Validation selects the model by mean Dice only, so it skips the surface distances, which take about a third
    of a quick validation (``benchmarks/RESULTS.md``, 'Validation reads Dice only').
    """
    check_options(empty_policy, "ours")
    _, _, confusion = _label_confusion(pred, gt, num_classes, "case_dice")
    values = []
    for c in range(1, int(num_classes)):
        n_pred, n_gt = int(confusion[c].sum()), int(confusion[:, c].sum())
        if n_pred == 0 or n_gt == 0:
            values.append(_empty_values(n_pred, n_gt, empty_policy)["dice"])
        else:
            values.append(2.0 * int(confusion[c, c]) / float(n_pred + n_gt))  # as _class_values
    return values


def evaluate_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float] | float | None = None,
                  empty_policy: str = "nan", backend: str = "ours") -> list[dict]:
    """Metrics of every foreground class ``1..num_classes-1`` of one case.

    ``pred``, ``gt``: integer label maps of equal shape, typically (D, H, W) uint8 (any ndim works);
    ``spacing``: mm per axis in the arrays' axis order, or None (voxel units).
    Returns one dict per class: ``{"class": c, "dice", "jaccard", "hd95", "asd", "assd": float,
    "n_pred": int, "n_gt": int}`` (voxel counts of the class); add ``"case"`` and build a DataFrame.
    """
    check_options(empty_policy, backend)
    pred, gt, confusion = _label_confusion(pred, gt, num_classes, "evaluate_case")
    num_classes = int(num_classes)
    spacing_t = normalise_spacing(spacing, pred.ndim)
    pred_boxes = ndimage.find_objects(pred, max_label=num_classes - 1)
    gt_boxes = ndimage.find_objects(gt, max_label=num_classes - 1)

    rows = []
    for c in range(1, num_classes):
        n_pred = int(confusion[c].sum())
        n_gt = int(confusion[:, c].sum())
        box = _union_box(pred_boxes[c - 1], gt_boxes[c - 1])
        if n_pred == 0 or n_gt == 0:
            pred_c = gt_c = None  # the empty-mask values need no mask (a class absent from both built two whole volumes)
        elif backend == "medpy":
            pred_c, gt_c = pred == c, gt == c  # medpy sees the full arrays, as in the released code
        else:
            pred_c, gt_c = pred[box] == c, gt[box] == c
        values = _class_values(pred_c, gt_c, int(confusion[c, c]), n_pred, n_gt, spacing_t, empty_policy, backend)
        rows.append({"class": c, **values, "n_pred": n_pred, "n_gt": n_gt})
    return rows


# ------------------------------------------------------------------------------------- summary
def _nan_stats(values: np.ndarray) -> dict[str, float | int]:
    kept = defined(values)
    return {
        "mean": nan_mean(kept),
        "std": float(kept.std()) if kept.size else _NAN,
        "n_defined": int(kept.size),
        "n_undefined": int(values.size - kept.size),
    }


def summarize(rows: Iterable[Mapping], metrics: Sequence[str] = METRICS) -> dict:
    """NaN-aware summary of per-case, per-class rows (each with ``"case"``, ``"class"`` and the metrics).

    Returns ``{"classes": {c: {metric: stats}}, "mean": {metric: stats}, "num_cases": n}`` where stats is
    ``{"mean", "std", "n_defined", "n_undefined"}``; std is the population std (ddof=0) over defined values.

    * per class: over the cases where the metric is defined;
    * ``"mean"`` (class average): ``mean`` = mean over classes of the per-class means (the released code's
      order: cases first, then classes; classes with no defined value are skipped); ``std`` = std over cases
      of each case's mean over its defined classes; ``n_undefined`` = undefined (case, class) values in all.
    """
    if isinstance(metrics, str) or not set(metrics) <= set(METRICS):
        raise ConfigError(f"metrics {metrics!r}: give a list of names among {', '.join(METRICS)}")
    rows = list(rows)
    missing = sorted({key for r in rows for key in ("case", "class", *metrics) if key not in r})
    if missing:
        raise DataError(f"summarize: rows lack {', '.join(missing)} (rows come from evaluate_case / evaluate_cases)")
    classes = sorted({int(r["class"]) for r in rows})
    cases = list(dict.fromkeys(str(r["case"]) for r in rows))
    seen: set[tuple[str, int]] = set()
    for r in rows:  # a repeated pair overwrote the earlier value without a word (the metrics review)
        pair = (str(r["case"]), int(r["class"]))
        if pair in seen:
            raise DataError(f"summarize: case {pair[0]!r} class {pair[1]} appears in two rows (case ids are compared as "
                            "text; give each case one row per class)")
        seen.add(pair)
    case_index = {case: i for i, case in enumerate(cases)}
    class_index = {c: j for j, c in enumerate(classes)}
    summary: dict = {"num_cases": len(cases), "classes": {}, "mean": {}}
    for metric in metrics:
        table = np.full((len(cases), len(classes)), np.nan)
        for r in rows:
            table[case_index[str(r["case"])], class_index[int(r["class"])]] = float(r[metric])
        per_class = {c: _nan_stats(table[:, j]) for j, c in enumerate(classes)}
        for c, stats in per_class.items():
            summary["classes"].setdefault(c, {})[metric] = stats
        class_means = np.array([s["mean"] for s in per_class.values()], dtype=np.float64)
        case_means = np.asarray([nan_mean(row) for row in table], dtype=np.float64)
        case_stats = _nan_stats(case_means)
        summary["mean"][metric] = {
            "mean": nan_mean(class_means),
            "std": case_stats["std"],
            "n_defined": int(np.count_nonzero(~np.isnan(table))),
            "n_undefined": int(np.count_nonzero(np.isnan(table))),
        }
    return summary
