"""ACTION's head read at many points (its relation-graph keys): each projected-first level summed at the points vs on
the whole output grid (``methods.pixel_reps.SparseActionReps``; ``docs/methods.md``, "Sparse representations").

For each size, a random pyramid of 8 images with the profile's UNet widths, the head at the profile's width, and
``--points`` random flat positions (deduplicated, as ``rows`` does); per level, the median time of both orders
(``--repeats``), their largest relative difference, and which one the cost model (``_grid_is_cheaper``) picks.
Then the whole ``rows`` call under ``torch.no_grad`` (as for the keys). One torch thread.

    python benchmarks/bench_action_head.py [--sizes quick paper] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

#: (patch, UNet widths fine to coarse, head width, random points): the quick and paper profiles' sizes; the points
#: are about what ACTION's keys give there (8 960 and 226 700 distinct pixels per step, measured in training).
SIZES = {"quick": (48, (4, 8, 16, 32, 64), 64, 12_000), "paper": (256, (16, 32, 64, 128, 256), 512, 300_000)}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["quick", "paper"])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (paper: at most 3)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from methods.heads import ActionProjectionHead
    from methods.pixel_reps import SparseActionReps, _decode, interpolate_rows

    torch.set_num_threads(1)
    for name in args.sizes:
        size, widths, dim, draws = SIZES[name]
        repeats = args.repeats if name == "quick" else min(args.repeats, 3)
        torch.manual_seed(0)
        channels = tuple(reversed(widths))
        pyramid = [torch.randn(8, c, size // 2 ** (4 - i), size // 2 ** (4 - i)) for i, c in enumerate(channels)]
        head = ActionProjectionHead(channels, dim)
        positions = torch.unique(torch.randint(0, 8 * size * size, (draws,)))
        reps = SparseActionReps(pyramid, head, (size, size))
        image, pixel = _decode(positions, size, size)
        print(f"{name}: {size}x{size}, 8 images, head {sum(channels)} -> {dim}, {positions.numel()} distinct points")
        with torch.no_grad():
            for i, level in enumerate(pyramid[:3]):
                kernel = reps._kernel([i]).permute(2, 3, 0, 1).reshape(-1, level.shape[1])
                table = F.linear(reps.level_rows()[i], kernel).view(-1, dim)
                at_points = interpolate_rows(table, reps.ops, i, image, pixel, kind="footprint")
                on_grid = reps._footprint_grid(i, table, image, pixel)
                error = float((at_points - on_grid).abs().max() / at_points.abs().max())
                points_ms = _median_ms(lambda: interpolate_rows(table, reps.ops, i, image, pixel, kind="footprint"), repeats)
                grid_ms = _median_ms(lambda: reps._footprint_grid(i, table, image, pixel), repeats)
                first = reps._projects_first(level, reps.ops.row_taps[i].k * reps.ops.col_taps[i].k, positions.numel())
                print(f"  level {i} ({level.shape[2]}x{level.shape[3]}, {level.shape[1]} ch): at the points {points_ms:8.2f} ms, "
                      f"on the grid {grid_ms:8.2f} ms, max rel diff {error:.1e}; model picks "
                      f"{'grid' if reps._grid_is_cheaper(i, positions.numel()) else 'points'}"
                      f"{'' if first else ' (level not projected first: neither is used)'}")
            rows_ms = _median_ms(lambda: SparseActionReps(pyramid, head, (size, size)).rows(positions), repeats)
        print(f"  rows() without gradient: {rows_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
