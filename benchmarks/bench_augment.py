"""Time the batched augmentations (docs/data.md, 'Strong view') on CPU: ms per batch of 8 slices of 256×256.

Usage: python benchmarks/bench_augment.py [--batch 8] [--size 256] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.data.augment import strong_augment, weak_augment  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402


def _time_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and minimum wall time of ``fn()`` in ms after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=count_at_least(1), default=8)
    parser.add_argument("--size", type=count_at_least(8), default=256)
    parser.add_argument("--repeats", type=count_at_least(1), default=30)
    parser.add_argument("--threads", type=count_at_least(1), default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    image = torch.rand(b, 1, s, s, generator=g)
    label = torch.randint(0, 4, (b, s, s), generator=g)
    conf = torch.rand(b, s, s, generator=g)

    cases = {
        "weak (p_rot90_flip=0.5, p_rotate=0.25)": lambda: weak_augment(image, label, g),
        "weak (all samples rotated)": lambda: weak_augment(image, label, g, p_rot90_flip=0.0, p_rotate=1.0),
        "strong (cutmix, p=0.5/0.5, 8-bit)": lambda: strong_augment(image, label, conf, g, num_classes=4),
        "strong (cutmix, 8-bit, no value check)": lambda: strong_augment(image, label, conf, g, num_classes=4,
                                                                          check_values=False),
        "strong (classmix, 8-bit)": lambda: strong_augment(image, label, conf, g, mix="classmix", num_classes=4),
        "strong (cutmix, continuous)": lambda: strong_augment(image, label, conf, g, num_classes=4,
                                                               quantise_8bit=False),
    }
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch {b}×1×{s}×{s}, CPU")
    for name, fn in cases.items():
        median, best = _time_ms(fn, args.repeats)
        print(f"{name:42s} median {median:7.2f} ms/batch   min {best:7.2f} ms")


if __name__ == "__main__":
    main()
