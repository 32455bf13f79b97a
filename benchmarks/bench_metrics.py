"""Benchmark: our per-case metrics vs medpy on ACDC-like synthetic volumes (docs/evaluation.md, 'Metrics').

Each case is a (10, H, W) uint8 label volume, H×W drawn around 220×250, with three classes shaped like a
short-axis cine-MRI stack: LV blood pool (3, filled ellipse), myocardium (2, ring around it), RV (1, crescent
beside the ring); structures shrink towards the apex and their radii wobble with random low-frequency
harmonics. The prediction is the same anatomy with other radii, a shifted centre, other wobbles, a few
false-positive blobs, and sometimes a missed apex class. Timed per case:

* medpy: what the released ``test_2D.py`` calls, ``dc, jc, hd95, asd`` on the full volume per class;
* ours:  :func:`medseg_platform.evaluation.metrics.evaluate_case` (all classes, plus ``assd``).

Printed: seconds per case (median and mean), speed-up, and the max |ours - medpy| over every value where
both masks are non-empty, with and without voxel spacing.

Run:  .venv/bin/python benchmarks/bench_metrics.py [--cases 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.evaluation.metrics import evaluate_case
from medseg_platform.study_flags import count_at_least  # noqa: E402

SPACING = (10.0, 1.5, 1.5)  # mm, (D, H, W): ACDC-like slice thickness and in-plane pixel size


def _radius(theta: np.ndarray, base: float, rng: np.random.Generator, wobble: float) -> np.ndarray:
    """``base`` times a smooth random function of the angle (harmonics 2..4)."""
    r = np.ones_like(theta)
    for k in (2, 3, 4):
        r += wobble / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return base * r


def _anatomy(shape: tuple[int, int, int], centre: tuple[float, float], lv: float, rng: np.random.Generator,
             wobble: float, drop_apex: bool) -> np.ndarray:
    depth, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(depth):
        scale = 1.0 - 0.55 * k / max(depth - 1, 1)
        cy, cx = centre[0] + rng.normal(0, 1.0), centre[1] + rng.normal(0, 1.0)
        dy, dx = yy - cy, xx - cx
        rho, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        r_lv = _radius(theta, lv * scale, rng, wobble)
        r_myo = r_lv + _radius(theta, 7.0 * (0.6 + 0.4 * scale), rng, wobble)
        rv_dy, rv_dx = yy - cy + 4, xx - (cx - 1.1 * lv * scale - 10)
        r_rv = _radius(np.arctan2(rv_dy, rv_dx), 1.25 * lv * scale + 8, rng, wobble)
        rv = (np.hypot(rv_dy, rv_dx) < r_rv) & (rho >= r_myo + 1)
        if not (drop_apex and k == depth - 1):
            label[k][rv] = 1
        label[k][(rho >= r_lv) & (rho < r_myo)] = 2
        label[k][rho < r_lv] = 3
    return label


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` uint8 (10, H, W) label volumes of one synthetic ACDC-like case."""
    shape = (10, int(rng.integers(200, 241)), int(rng.integers(224, 265)))
    centre = (shape[1] / 2 + rng.normal(0, 8), shape[2] / 2 + rng.normal(0, 8))
    lv = rng.uniform(20, 30)
    gt = _anatomy(shape, centre, lv, rng, wobble=0.06, drop_apex=False)
    pred_centre = (centre[0] + rng.normal(0, 1.5), centre[1] + rng.normal(0, 1.5))
    pred = _anatomy(shape, pred_centre, lv * rng.uniform(0.92, 1.08), rng, wobble=0.08, drop_apex=rng.random() < 0.3)
    for _ in range(int(rng.integers(0, 4))):  # small false-positive blobs
        k, y, x = rng.integers(0, shape[0]), rng.integers(5, shape[1] - 5), rng.integers(5, shape[2] - 5)
        pred[k, y - 2:y + 2, x - 2:x + 2] = rng.integers(1, 4)
    return pred, gt


def medpy_case(pred: np.ndarray, gt: np.ndarray, spacing) -> list[dict]:
    """The released loop: medpy dc/jc/hd95/asd per foreground class on the full volume (non-empty only)."""
    from medpy.metric import binary as mb

    rows = []
    for c in (1, 2, 3):
        p, g = pred == c, gt == c
        if p.any() and g.any():
            rows.append({"class": c, "dice": mb.dc(p, g), "jaccard": mb.jc(p, g),
                         "hd95": mb.hd95(p, g, voxelspacing=spacing), "asd": mb.asd(p, g, voxelspacing=spacing)})
        else:
            rows.append({"class": c})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=count_at_least(1), default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from medpy.metric import binary as mb

    rng = np.random.default_rng(args.seed)
    cases = [make_case(rng) for _ in range(args.cases)]
    sizes = np.array([c[1].shape for c in cases])  # the range of each axis, not the first and last shape
    shapes = "(" + ", ".join(f"{lo}..{hi}" if lo != hi else f"{lo}" for lo, hi in zip(sizes.min(0), sizes.max(0))) + ")"
    print(f"{len(cases)} cases, shapes {shapes}, "
          f"voxels per class (gt, mean): {[int(np.mean([np.count_nonzero(g == c) for _, g in cases])) for c in (1, 2, 3)]}")
    for spacing in (None, SPACING):
        ours_t, medpy_t, worst, worst_assd = [], [], 0.0, 0.0
        evaluate_case(*cases[0], 4, spacing)  # warm-up (imports, caches)
        medpy_case(*cases[0], spacing)
        for pred, gt in cases:
            t0 = time.perf_counter()
            ours = evaluate_case(pred, gt, 4, spacing)
            t1 = time.perf_counter()
            ref = medpy_case(pred, gt, spacing)
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            medpy_t.append(t2 - t1)
            for o, r in zip(ours, ref):
                if "dice" in r:
                    worst = max(worst, *(abs(o[m] - r[m]) for m in ("dice", "jaccard", "hd95", "asd")))
                    c = o["class"]
                    worst_assd = max(worst_assd, abs(o["assd"] - mb.assd(pred == c, gt == c, voxelspacing=spacing)))
        units = "voxel" if spacing is None else f"mm, spacing {spacing}"
        print(f"[{units}] per case: ours median {statistics.median(ours_t):.4f} s (mean {statistics.mean(ours_t):.4f}), "
              f"medpy median {statistics.median(medpy_t):.4f} s (mean {statistics.mean(medpy_t):.4f}), "
              f"speed-up x{statistics.median(medpy_t) / statistics.median(ours_t):.1f}; "
              f"max |ours - medpy| dice/jaccard/hd95/asd {worst:.3g}, assd {worst_assd:.3g}")


if __name__ == "__main__":
    main()
