"""Benchmark: sampled ranks to pixel positions, and distinct pixels, on the CPU (``methods.pixel_reps``).

The contrastive losses draw *ranks* within a mask (the i-th candidate pixel) and read representations at the pixels
they name; ACTION reads its keys once per distinct pixel. Two ways each, the same integers either way:

* ranks -> positions (:class:`methods.pixel_reps.MaskRanks`): a binary search in the mask's cumsum (no host sync:
  the accelerators' path) or indexing the mask's ``nonzero`` list (the CPU's path);
* distinct positions and each draw's index among them (``_SparseReps._distinct``): ``torch.unique(...,
  return_inverse=True)`` (a sort) or a mark per pixel of the (N, H, W) grid (the path used everywhere).

Timed at ACTION's quick sizes (8 images of 48 x 48, 4 classes, 4 x 64 x 128 negative draws), 1 thread, median of
``--repeats``; then whole ACTION and ARCO-SG quick steps (``bench_methods.build``) with the two old ways and the two
new ones, alternated step by step in one process, median of ``--steps``.

Run:  python benchmarks/bench_positions.py [--repeats 50] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from medseg_platform.study_flags import count_at_least  # noqa: E402


def _median_us(fn, repeats: int) -> float:
    """Median of ``repeats`` calls after a warm-up call, in microseconds."""
    from bench_contrast import median_time

    return median_time(fn, repeats) * 1e6


def micro(repeats: int) -> None:
    import torch

    from methods.pixel_reps import MaskRanks

    generator = torch.Generator().manual_seed(0)
    images, side, classes, draws = 8, 48, 4, 4 * 64 * 128
    grid = images * side * side
    mask = torch.rand(classes * grid, generator=generator) < 0.3  # the concatenated class pools
    ranks = torch.randint(0, int(mask.sum()), (draws,), generator=generator)
    search, listed = MaskRanks(mask, search=True), MaskRanks(mask, search=False)
    assert torch.equal(search.positions(ranks), listed.positions(ranks))
    print(f"ranks -> positions, {draws} draws in a {mask.numel()}-entry mask: "
          f"binary search {_median_us(lambda: MaskRanks(mask, search=True).positions(ranks), repeats):.0f} us, "
          f"nonzero list {_median_us(lambda: MaskRanks(mask, search=False).positions(ranks), repeats):.0f} us (each with its set-up)")

    points = torch.randint(0, grid, (draws,), generator=generator)

    def marks():
        used = torch.zeros(grid, dtype=torch.bool)
        used[points] = True
        unique = used.nonzero().squeeze(1)
        slot = torch.empty(grid, dtype=torch.int64)
        slot[unique] = torch.arange(unique.shape[0])
        return unique, slot[points]

    print(f"distinct pixels of {draws} draws on an {images} x {side} x {side} grid: "
          f"torch.unique {_median_us(lambda: torch.unique(points, return_inverse=True), repeats):.0f} us, "
          f"per-pixel marks {_median_us(marks, repeats):.0f} us")


def steps(method: str, count: int) -> None:
    import torch

    import bench_methods
    import methods.pixel_reps as pixel_reps

    bench = bench_methods.build(method, "quick", "sparse")
    new_init, new_distinct = pixel_reps.MaskRanks.__init__, pixel_reps._SparseReps._distinct

    def old_init(self, mask, search=None):
        new_init(self, mask, search=True)

    def old_distinct(self, flat_positions):
        return torch.unique(flat_positions, return_inverse=True)

    times = {"old": [], "new": []}
    try:
        for step in range(count + 1):  # the first round warms up
            for name in ("old", "new"):
                pixel_reps.MaskRanks.__init__ = old_init if name == "old" else new_init
                pixel_reps._SparseReps._distinct = old_distinct if name == "old" else new_distinct
                times[name].append(bench_methods._timed_step(bench.objective, bench.optimizer, bench.batch_of, step % 20,
                                                             bench.max_steps, kernels=bench.kernels))
    finally:
        pixel_reps.MaskRanks.__init__, pixel_reps._SparseReps._distinct = new_init, new_distinct
    old, new = statistics.median(times["old"][1:]), statistics.median(times["new"][1:])
    print(f"{method} quick step: search + unique {old * 1e3:.1f} ms, nonzero list + marks {new * 1e3:.1f} ms "
          f"({new / old:.3f}x), median of {count}, alternated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=count_at_least(1), default=50)
    parser.add_argument("--steps", type=count_at_least(1), default=60)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    micro(args.repeats)
    for method in ("action", "arco_sg"):
        steps(method, args.steps)


if __name__ == "__main__":
    main()
