"""Metrics against medpy 0.5 itself, the empty-mask policies, spacing, cropping and the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy import ndimage

from medseg_platform.errors import ConfigError, DataError
from medseg_platform.evaluation.metrics import METRICS, binary_metrics, case_dice, distance_spacing, evaluate_case, summarize, surface

TOL = 1e-6


def medpy_values(pred, gt, spacing=None) -> dict:
    return {
        "dice": mb.dc(pred, gt),
        "jaccard": mb.jc(pred, gt),
        "hd95": mb.hd95(pred, gt, voxelspacing=spacing),
        "asd": mb.asd(pred, gt, voxelspacing=spacing),
        "assd": mb.assd(pred, gt, voxelspacing=spacing),
    }


def assert_close(ours: dict, ref: dict, tol: float = TOL) -> None:
    for key in METRICS:
        assert abs(ours[key] - ref[key]) <= tol, (key, ours[key], ref[key])


def blob_pair(rng, shape):
    """Two overlapping smooth blobs (realistic) or sparse random masks (adversarial), both non-empty."""
    if rng.random() < 0.5:
        a = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
        b = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
    else:
        a = rng.random(shape) < rng.uniform(0.02, 0.6)
        b = rng.random(shape) < rng.uniform(0.02, 0.6)
    a.flat[rng.integers(a.size)] = True
    b.flat[rng.integers(b.size)] = True
    return a, b


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_surface_is_medpy_surface(ndim):
    rng = np.random.default_rng(ndim)
    for _ in range(20):
        shape = tuple(rng.integers(1, 9, size=ndim))
        mask = rng.random(shape) < 0.6
        expected = mask ^ ndimage.binary_erosion(mask, ndimage.generate_binary_structure(ndim, 1))
        np.testing.assert_array_equal(surface(mask), expected)
    # voxels on the array border count as surface (scipy's border_value=0): a full array's surface is its frame
    frame = np.ones((3, 4), bool)
    frame[1, 1:3] = False
    np.testing.assert_array_equal(surface(np.ones((3, 4), bool)), frame)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("with_spacing", [False, True])
def test_random_grid_equals_medpy(ndim, with_spacing):
    rng = np.random.default_rng(10 * ndim + with_spacing)
    for _ in range(25):
        shape = tuple(int(s) for s in rng.integers(1, 14 if ndim == 3 else 30, size=ndim))
        pred, gt = blob_pair(rng, shape)
        spacing = tuple(rng.uniform(0.3, 6.0, size=ndim)) if with_spacing else None
        assert_close(binary_metrics(pred, gt, spacing), medpy_values(pred, gt, spacing))


def test_single_voxels_and_known_distances():
    pred = np.zeros((6, 7), bool)
    gt = np.zeros((6, 7), bool)
    pred[0, 0] = True
    gt[3, 4] = True
    out = binary_metrics(pred, gt)
    assert out["dice"] == 0.0 and out["jaccard"] == 0.0
    assert out["hd95"] == pytest.approx(5.0) and out["asd"] == pytest.approx(5.0)
    out = binary_metrics(pred, gt, spacing=(2.0, 0.5))
    assert out["hd95"] == pytest.approx(math.hypot(6.0, 2.0))
    assert_close(out, medpy_values(pred, gt, (2.0, 0.5)))
    same = binary_metrics(gt, gt, spacing=(3.0, 1.0))
    assert same == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}


def test_masks_touching_the_border():
    gt = np.zeros((4, 9, 8), bool)
    gt[:, :5, :] = True            # touches five faces of the array
    pred = np.zeros_like(gt)
    pred[1:, 2:, 3:] = True        # touches other faces
    for spacing in (None, (10.0, 1.5, 1.25)):
        assert_close(binary_metrics(pred, gt, spacing), medpy_values(pred, gt, spacing))
    full = np.ones((3, 5, 5), bool)
    assert_close(binary_metrics(full, gt[:3, :5, :5]), medpy_values(full, gt[:3, :5, :5]))


def test_asd_is_directed_prediction_to_truth():
    gt = np.zeros((12, 12), bool)
    gt[2:10, 2:10] = True
    pred = gt.copy()
    pred[0, 11] = True  # one far outlier in the prediction
    ab, ba = binary_metrics(pred, gt), binary_metrics(gt, pred)
    assert ab["asd"] > ba["asd"]
    assert ab["asd"] == pytest.approx(mb.asd(pred, gt)) and ba["asd"] == pytest.approx(mb.asd(gt, pred))
    assert ab["assd"] == pytest.approx(ba["assd"])


def test_cropping_does_not_change_values():
    rng = np.random.default_rng(3)
    pred, gt = blob_pair(rng, (5, 12, 11))
    big_pred = np.zeros((9, 40, 33), bool)
    big_gt = np.zeros_like(big_pred)
    big_pred[2:7, 20:32, 5:16] = pred
    big_gt[2:7, 20:32, 5:16] = gt
    spacing = (4.0, 1.1, 0.7)
    small, big = binary_metrics(pred, gt, spacing), binary_metrics(big_pred, big_gt, spacing)
    assert_close(big, medpy_values(big_pred, big_gt, spacing))
    # the small pair touches its array border, the embedded pair does not; surfaces and distances agree
    assert_close(small, big, tol=1e-12)


def test_evaluate_case_multiclass_equals_medpy_per_class():
    rng = np.random.default_rng(5)
    shape = (6, 30, 26)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for c in (1, 2, 3):
        a, b = blob_pair(rng, shape)
        gt[a] = c
        pred[b] = c
    gt[:, :4] = 0  # class areas shift, some classes at the border
    for spacing in (None, (8.0, 1.4, 1.4)):
        rows = evaluate_case(pred, gt, 4, spacing)
        assert [r["class"] for r in rows] == [1, 2, 3]
        for r in rows:
            c = r["class"]
            assert r["n_pred"] == np.count_nonzero(pred == c) and r["n_gt"] == np.count_nonzero(gt == c)
            assert_close(r, medpy_values(pred == c, gt == c, spacing))
        via_medpy = evaluate_case(pred, gt, 4, spacing, backend="medpy")
        for ours, ref in zip(rows, via_medpy):
            assert_close(ours, ref)


# --------------------------------------------------------------------------------- empty policy
_FULL = np.zeros((3, 6, 6), np.uint8)
_FULL[1, 2:4, 2:4] = 1
_EMPTY = np.zeros((3, 6, 6), np.uint8)
NAN = float("nan")


@pytest.mark.parametrize("backend", ["ours", "medpy"])
@pytest.mark.parametrize(
    "pred, gt, nan_expected, released_expected",
    [
        (_EMPTY, _EMPTY, (NAN, NAN, NAN, NAN), (0.0, 0.0, 0.0, 0.0)),
        # a prediction of a class the case lacks: Dice 2*0 / (|P| + 0) = 0 is defined (it used to be NaN, which left
        # such false positives out of every mean: the evaluation probe)
        (_FULL, _EMPTY, (0.0, 0.0, NAN, NAN), (1.0, 1.0, 0.0, 0.0)),
        (_EMPTY, _FULL, (0.0, 0.0, NAN, NAN), (0.0, 0.0, 0.0, 0.0)),
    ],
    ids=["both-empty", "gt-empty", "pred-empty"],
)
def test_empty_policies(pred, gt, nan_expected, released_expected, backend):
    for policy, expected in (("nan", nan_expected), ("released", released_expected)):
        (row,) = evaluate_case(pred, gt, 2, (2.0, 1.0, 1.0), empty_policy=policy, backend=backend)
        got = tuple(row[m] for m in ("dice", "jaccard", "hd95", "asd"))
        np.testing.assert_array_equal(np.array(got), np.array(expected))
        out = binary_metrics(pred, gt, empty_policy=policy, backend=backend)
        np.testing.assert_array_equal(np.array([out[m] for m in ("dice", "jaccard", "hd95", "asd")]), np.array(expected))


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(DataError, match=r"prediction: label values must lie in \[0, 3\].*found range \[0, 4\]"):
        evaluate_case(np.eye(3, dtype=np.uint8)[None] * 4, np.zeros((1, 3, 3), np.uint8), 4)
    with pytest.raises(DataError, match="shape"):
        evaluate_case(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), 4)
    with pytest.raises(DataError, match="non-integer"):
        evaluate_case(np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2)), 4)
    with pytest.raises(DataError, match="3 positive numbers"):
        evaluate_case(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8), 4, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="empty_policy"):
        evaluate_case(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8), 4, empty_policy="zero")
    with pytest.raises(ConfigError, match="backend"):
        binary_metrics(np.ones(3), np.ones(3), backend="monai")
    # a notebook's slips are the project's one-line errors, not a bare TypeError / ValueError / KeyError
    with pytest.raises(ConfigError, match=r"num_classes: expected an integer in \[2, "):
        evaluate_case(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8), None)
    with pytest.raises(DataError, match="spacing: expected 3 positive numbers .* got '1,1,1'"):
        evaluate_case(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8), 4, spacing="1,1,1")
    row = {"case": "a", "class": 1, "dice": 1.0}
    with pytest.raises(ConfigError, match=r"metrics \['dsc'\]: give a list of names among dice"):
        summarize([row], metrics=["dsc"])
    with pytest.raises(ConfigError, match="metrics 'dice': give a list"):
        summarize([row], metrics="dice")
    with pytest.raises(DataError, match="summarize: rows lack case"):
        summarize([{"class": 1, "dice": 1.0}], metrics=["dice"])
    # integral floats (NIfTI label maps) are fine
    rows = evaluate_case(np.ones((1, 2, 2), np.float32), np.ones((1, 2, 2), np.float64), 2)
    assert rows[0]["dice"] == 1.0


# ------------------------------------------------------------------------------------- summary
def test_summarize_nan_aware():
    rows = [
        {"case": "a", "class": 1, "dice": 0.8, "jaccard": 0.6, "hd95": 2.0, "asd": 1.0, "assd": 1.0},
        {"case": "a", "class": 2, "dice": 0.6, "jaccard": 0.4, "hd95": NAN, "asd": NAN, "assd": NAN},
        {"case": "b", "class": 1, "dice": 0.4, "jaccard": 0.2, "hd95": 4.0, "asd": 3.0, "assd": 2.0},
        {"case": "b", "class": 2, "dice": NAN, "jaccard": NAN, "hd95": NAN, "asd": NAN, "assd": NAN},
    ]
    s = summarize(rows)
    assert s["num_cases"] == 2
    assert s["classes"][1]["dice"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.2), "n_defined": 2, "n_undefined": 0}
    assert s["classes"][2]["dice"]["mean"] == pytest.approx(0.6) and s["classes"][2]["dice"]["n_undefined"] == 1
    assert s["classes"][2]["hd95"]["n_undefined"] == 2 and math.isnan(s["classes"][2]["hd95"]["mean"])
    # class average: mean of class means; std over per-case means (a: 0.7, b: 0.4)
    assert s["mean"]["dice"]["mean"] == pytest.approx(0.6)
    assert s["mean"]["dice"]["std"] == pytest.approx(0.15)
    assert s["mean"]["dice"]["n_undefined"] == 1
    # class 2 has no defined hd95: the class average uses class 1 only
    assert s["mean"]["hd95"]["mean"] == pytest.approx(3.0) and s["mean"]["hd95"]["n_undefined"] == 2


def test_distance_units_choose_mm_or_voxels():
    # a 2 x 10 x 10 volume, anisotropic spacing: "mm" keeps it, "voxel" drops it as the released evaluation does
    gt = np.zeros((2, 10, 10), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = np.roll(gt, 2, axis=2)
    spacing = (5.0, 1.5, 1.5)
    assert distance_spacing(spacing, "mm") == spacing and distance_spacing(None, "mm") is None
    assert distance_spacing(spacing, "voxel") is None
    mm = evaluate_case(pred, gt, 2, distance_spacing(spacing, "mm"))[0]
    voxel = evaluate_case(pred, gt, 2, distance_spacing(spacing, "voxel"))[0]
    assert voxel == evaluate_case(pred, gt, 2, None)[0]
    assert mm["dice"] == voxel["dice"] and mm["hd95"] == pytest.approx(1.5 * voxel["hd95"]) and voxel["hd95"] == 2.0
    with pytest.raises(ConfigError, match="eval.distance_units: unknown value 'px'"):
        distance_spacing(spacing, "px")


@pytest.mark.parametrize("empty_policy", ["nan", "released"])
def test_case_dice_is_evaluate_cases_dice_to_the_last_bit(empty_policy):
    """Validation's Dice-only path: the same floats as the full metrics, also for classes missing from the
    prediction, the ground truth or both (each policy's empty cases)."""
    rng = np.random.default_rng(11)
    shape = (5, 24, 20)
    for trial in range(6):
        gt = rng.integers(0, 4, shape).astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.3, rng.integers(0, 4, shape), gt).astype(np.uint8)
        if trial % 3 == 1:
            gt[gt == 2] = 0  # class 2 absent from the ground truth
        if trial % 3 == 2:
            pred[pred == 3] = 1  # class 3 absent from the prediction
            gt[gt == 2], pred[pred == 2] = 0, 0  # class 2 absent from both
        expected = [row["dice"] for row in evaluate_case(pred, gt, 4, (8.0, 1.4, 1.4), empty_policy=empty_policy)]
        got = case_dice(pred, gt, 4, empty_policy=empty_policy)
        assert np.array_equal(np.array(got), np.array(expected), equal_nan=True), (trial, got, expected)
    assert math.isnan(case_dice(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), 4)[0])


def test_case_dice_rejects_what_evaluate_case_rejects():
    with pytest.raises(DataError, match="case_dice: prediction shape"):
        case_dice(np.zeros((3, 4), np.uint8), np.zeros((3, 5), np.uint8), 4)
    with pytest.raises(ConfigError, match="num_classes"):
        case_dice(np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), 1)
    with pytest.raises(ConfigError, match="empty_policy"):
        case_dice(np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), 4, empty_policy="zero")
