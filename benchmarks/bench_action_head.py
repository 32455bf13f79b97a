"""ACTION's head read at many points, as its relation-graph keys are each step (``methods.pixel_reps.SparseActionReps``;
``docs/methods.md``, "Sparse representations"): the time of one ``rows`` call with and without a gradient.

For each size, a random pyramid of 8 images with the profile's UNet widths, the head at the profile's width and
the distinct pixels among a fixed number of random draws (``SIZES``; about the distinct key pixels of a training
step there: 8 960 at quick, 226 700 at the paper size); the median of ``--repeats`` calls. Without a gradient (the keys) the im2col chunks'
products are added into their rows in place; with one (the anchors' path, here at the keys' size) they are
concatenated. One torch thread.

    python benchmarks/bench_action_head.py [--sizes quick paper] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medseg_platform.study_flags import count_at_least  # noqa: E402

#: (patch, UNet widths fine to coarse, head width, random draws): the quick and paper profiles' sizes.
SIZES = {"quick": (48, (4, 8, 16, 32, 64), 64, 12_000), "paper": (256, (16, 32, 64, 128, 256), 512, 300_000)}


def _median_ms(fn, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one untimed call (the first call of a size is several times slower:
    allocations, lazy kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["quick", "paper"])
    parser.add_argument("--repeats", type=count_at_least(1), default=5, help="timed calls per measurement (paper: at most 3)")
    args = parser.parse_args(argv)

    import torch

    from methods.heads import ActionProjectionHead
    from methods.pixel_reps import SparseActionReps

    torch.set_num_threads(1)
    for name in args.sizes:
        size, widths, dim, draws = SIZES[name]
        repeats = args.repeats if name == "quick" else min(args.repeats, 3)
        torch.manual_seed(0)
        channels = tuple(reversed(widths))
        pyramid = [torch.randn(8, c, size // 2 ** (4 - i), size // 2 ** (4 - i)) for i, c in enumerate(channels)]
        head = ActionProjectionHead(channels, dim)
        positions = torch.unique(torch.randint(0, 8 * size * size, (draws,)))

        def without_gradient():
            with torch.no_grad():
                SparseActionReps(pyramid, head, (size, size)).rows(positions)

        def with_gradient():
            SparseActionReps(pyramid, head, (size, size)).rows(positions).sum().backward()

        print(f"{name}: {size}x{size}, 8 images, head {sum(channels)} -> {dim}, {positions.numel()} distinct points: "
              f"rows() without gradient {_median_ms(without_gradient, repeats):.1f} ms, "
              f"with gradient (forward + backward) {_median_ms(with_gradient, repeats):.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
