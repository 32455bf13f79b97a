"""Loader benchmark: is reading training data ever the bottleneck of a training step?

Writes an ACDC-sized synthetic dataset (native slices ~232×256, like ACDC's 150-430 px) with the layout
writers into a temporary folder, then measures:

1. reading one slice file (h5py, gzip) -- the cost of a naive per-step file read;
2. building a :class:`SliceBank` (read + resize to 256×256 once), per slice;
3. drawing a 4+4 batch from the bank (index + gather), the per-step cost in training;
4. the same batch through a ``torch.utils.data.DataLoader`` over the bank (no workers);
5. a second bank of the same slices at 48×48 in the same process, built from the process cache
   (``medseg_platform.data.bank_cache``: what every trial after a worker's first pays), against the first.

Run:  python benchmarks/bench_loader.py [--patients 20] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medseg_platform.data import layout  # noqa: E402
from medseg_platform.data.datasets import SliceBank  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402


def write_dataset(root: Path, patients: int, depth: int = 10, shape=(232, 256)) -> None:
    rng = np.random.default_rng(0)
    slices = []
    for p in range(patients):
        for frame in ("frame01", "frame02"):
            label = np.zeros((depth, *shape), np.uint8)
            yy, xx = np.mgrid[: shape[0], : shape[1]]
            r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
            label[:, r < 40] = 2
            label[:, r < 28] = 3
            image = np.clip(label / 3 + rng.normal(0, 0.1, label.shape), 0, None).astype(np.float32)
            image /= image.max()
            slices += layout.write_case(root, f"patient{p + 1:03d}_{frame}", image, label)
    layout.write_lists(root, slices, [], [])


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=count_at_least(1), default=20)
    parser.add_argument("--repeats", type=count_at_least(1), default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.patients)
        ds = layout.AcdcLayout(root)
        n = len(ds.train_slices)
        read = timed(lambda: ds.read_slice(ds.train_slices[np.random.randint(n)]), args.repeats)
        bank = SliceBank(ds, ds.train_slices, (256, 256))
        gen = torch.Generator().manual_seed(0)

        def draw():
            return bank.batch(bank.sample_indices(4, gen)), bank.batch(bank.sample_indices(4, gen))

        batch = timed(draw, args.repeats)
        loader = torch.utils.data.DataLoader(bank, batch_size=4, shuffle=True, drop_last=True)
        it = iter(loader)

        def draw_loader():
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader)
                return next(it)

        dl = timed(draw_loader, args.repeats)
        small_first = SliceBank(ds, ds.train_slices, (48, 48))
        small_again = SliceBank(ds, ds.train_slices, (48, 48))
        if not small_again.from_cache:
            raise SystemExit("bench_loader: the second 48x48 bank was not served from the process cache")
    print(f"dataset: {n} slices of 232x256 -> 256x256, torch threads {torch.get_num_threads()}")
    print(f"read one slice file (h5py, gzip):        median {1e3 * statistics.median(read):7.3f} ms")
    print(f"SliceBank build (read + resize), /slice: {1e3 * bank.load_seconds / n:7.3f} ms  (total {bank.load_seconds:.2f} s)")
    print(f"4+4 batch from SliceBank:                median {1e3 * statistics.median(batch):7.3f} ms")
    print(f"4-batch via DataLoader(num_workers=0):   median {1e3 * statistics.median(dl):7.3f} ms")
    print(f"SliceBank 48x48, first in the process:   {small_first.load_seconds:7.3f} s")
    print(f"SliceBank 48x48, again (process cache):  {small_again.load_seconds:7.3f} s  "
          f"({small_first.load_seconds / small_again.load_seconds:.0f}x faster)")


if __name__ == "__main__":
    main()
