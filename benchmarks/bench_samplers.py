"""Benchmark: the ARCO samplers (docs/arco.md, 'Sampler interface') at the released sizes: time per call and
variance reduction.

Timed per call (median over ``--repeats`` calls after a warm-up), for each strategy (NS/SG/SAG) and grouping
(flat = as released, spatial = as in the paper):

* anchors: ``N = 50 000`` candidate pixels, ``n = 256`` (spatial: their pixel positions in 8 images of 256 x 256);
* negatives: ``N = 30 000`` bank entries, ``n = 256 * 512 = 131 072`` (spatial timing only as a what-if: the
  released bank stores no positions; positions are taken on a 174 x 174 grid).

Variance reduction: ``Var(sample mean)`` over ``--reps`` independent draws, reported as ``Var NS / Var SG`` and
``Var NS / Var SAG`` (higher is better; 1 = no gain), on two synthetic populations:

* ``grid``: ``N = 224^2``, candidate i at pixel (i // 224, i % 224) of a 224 x 224 image, value = linear trend +
  a random offset per 4 x 4 cell + noise. Flat blocks and spatial cells coincide here.
* ``anchor-like``: the pixels of a class (a ring, randomly shifted in each of 8 images of 256 x 256) listed in
  (image, row, column) raster order, as the released anchor pool is; value = smooth field of the pixel
  position + a per-image offset + noise. Here flat blocks are runs of the raster list, spatial cells are image
  cells pooled over the 8 images.

Run:  .venv/bin/python benchmarks/bench_samplers.py [--device cpu|cuda] [--repeats 30] [--reps 1000] [--reps-negatives 100]
      [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from methods.samplers import GROUPINGS, SAMPLERS, sample_indices  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import device_arg  # noqa: E402

SHORT = {"uniform": "NS", "stratified": "SG", "stratified_antithetic": "SAG"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _anchor_like(gen: torch.Generator, images: int = 8, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) positions in (image, row, col) raster order and (N,) values; N ≈ 50 000 with the defaults."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    positions, values = [], []
    for _ in range(images):
        cy, cx = (torch.rand(2, generator=gen, dtype=torch.float64) * 80 + 88).tolist()
        radius = torch.hypot(rows - cy, cols - cx)
        mask = (radius > 40) & (radius < 64)
        pos = torch.stack([rows[mask], cols[mask]], 1)
        field = torch.sin(pos[:, 0] / 40) + torch.cos(pos[:, 1] / 30) + 0.01 * pos[:, 0]
        offset = torch.randn(1, generator=gen, dtype=torch.float64)
        positions.append(pos)
        values.append(field + offset + 0.3 * torch.randn(pos.shape[0], generator=gen, dtype=torch.float64))
    return torch.cat(positions), torch.cat(values)


def _grid_population(gen: torch.Generator, edge: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(edge * edge)
    rows, cols = (i // edge).double(), (i % edge).double()
    cell = (rows * 4 / edge).long() * 4 + (cols * 4 / edge).long()
    offsets = torch.randn(16, generator=gen, dtype=torch.float64)
    values = 0.01 * rows + 0.005 * cols + offsets[cell] + 0.3 * torch.randn(edge * edge, generator=gen, dtype=torch.float64)
    return torch.stack([rows, cols], 1), values


def _variance(values, positions, grid, strategy, grouping, n, reps, device) -> float:
    gen = torch.Generator().manual_seed(1234)
    values = values.to(device)
    kwargs = dict(grouping=grouping, positions=positions.to(device), grid_shape=grid) if grouping == "spatial" else {}
    means = torch.stack([values[sample_indices(values.numel(), n, strategy, generator=gen, device=device, **kwargs)].mean()
                         for _ in range(reps)])
    return float(means.var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=count_at_least(1), default=30, help="timed calls per configuration")
    parser.add_argument("--reps", type=count_at_least(2), default=1000, help="independent draws per variance estimate (n = 256)")
    parser.add_argument("--reps-negatives", type=count_at_least(2), default=100, help="independent draws per variance estimate (n = 131 072)")
    parser.add_argument("--threads", type=count_at_least(1), default=1, help="torch CPU threads (1: on a shared, loaded machine more threads spin)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device  # device_arg's torch.device (argparse converts a string default too)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device))

    anchor_pos, anchor_values = _anchor_like(gen)
    keep = torch.randperm(anchor_pos.shape[0], generator=gen)[:50_000].sort().values
    anchor_pos, anchor_values = anchor_pos[keep].to(device), anchor_values[keep]
    bank_rows, bank_cols = torch.meshgrid(torch.arange(174.0), torch.arange(174.0), indexing="ij")
    bank_pos = torch.stack([bank_rows, bank_cols], -1).reshape(-1, 2)[:30_000].to(device)
    cases = [("anchors", 50_000, 256, anchor_pos, (256, 256)), ("negatives", 30_000, 256 * 512, bank_pos, (174, 174))]

    print("\n== time per call (median, ms); generator on CPU, output on", device)
    print(f"{'case':<10} {'N':>7} {'n':>7} " + " ".join(f"{SHORT[s] + '/' + g:>14}" for g in GROUPINGS for s in SAMPLERS))
    for name, num, n, pos, grid in cases:
        cells = []
        for grouping in GROUPINGS:
            for strategy in SAMPLERS:
                kwargs = dict(grouping=grouping, positions=pos, grid_shape=grid) if grouping == "spatial" else {}
                sampler_gen = torch.Generator().manual_seed(1)

                def call(strategy=strategy, kwargs=kwargs, sampler_gen=sampler_gen):
                    return sample_indices(num, n, strategy, generator=sampler_gen, device=device, **kwargs)

                cells.append(f"{1e3 * _time_call(call, device, args.repeats):>14.3f}")
        print(f"{name:<10} {num:>7} {n:>7} " + " ".join(cells))

    print(f"\n== variance of the sample mean over R draws (R = {args.reps} for n = 256, {args.reps_negatives} for n = 131 072):"
          " ratios Var NS / Var X (higher = better); sampling error of a ratio ≈ ±2/sqrt(R) relative")
    grid_pos, grid_values = _grid_population(gen)
    populations = [("grid", grid_pos, grid_values, (224, 224)), ("anchor-like", anchor_pos.cpu(), anchor_values, (256, 256))]
    for pop_name, pos, values, grid in populations:
        for n, reps in ((256, args.reps), (256 * 512, args.reps_negatives)):
            for grouping in GROUPINGS:
                var = {s: _variance(values, pos, grid, s, grouping, n, reps, device) for s in SAMPLERS}
                print(f"{pop_name:<12} N={values.numel():>6} n={n:>6} {grouping:<8} Var NS={var['uniform']:.3e}  "
                      f"NS/SG={var['uniform'] / var['stratified']:6.2f}  NS/SAG={var['uniform'] / var['stratified_antithetic']:6.2f}")


if __name__ == "__main__":
    main()
