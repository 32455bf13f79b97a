"""The sparse representations' weighted row sums (``methods.pixel_reps.combine_rows``) inside training steps:
the device's default implementation against another one, alternated step by step in one process.

``combine_rows`` takes ``out[m] = Σ_t w[m, t] table[index[m, t]]`` through a CSR matrix on the CPU, through
``embedding_bag`` on a GPU, and as a chunked gather-multiply-sum elsewhere. This script times whole training
steps (``bench_methods.build``/``_timed_step``) of each method with the default and with ``--other``, switching
every step after a warm-up of each (the two are the same sums up to float rounding, which
``tests/methods/test_dense_equivalence.py`` checks; this script only times them).

Run:  python benchmarks/bench_row_sums.py [--device cuda] [--profile paper] [--methods action mona]
          [--amp off bf16] [--other gather] [--steps 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import REPO, _timed_step, build, device_arg, typical_steps  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_arg, default="cuda")
    parser.add_argument("--profile", choices=("quick", "paper"), default="paper",
                        help="problem size (the smoke profile trains 6 steps: too few to time)")
    parser.add_argument("--methods", nargs="+", choices=("mona", "arco_sg", "arco_sag", "action"), default=["action", "mona"])
    parser.add_argument("--amp", nargs="+", choices=("off", "bf16"), default=["off"])
    parser.add_argument("--other", choices=("gather", "bag", "csr"), default="gather", help="the implementation to compare with")
    parser.add_argument("--steps", type=count_at_least(1), default=10, help="timed steps of each implementation")
    parser.add_argument("--warmup", type=count_at_least(0), default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    import methods.pixel_reps as pixel_reps

    device = args.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training
    default = pixel_reps.combine_rows
    other = {"gather": pixel_reps._gathered_rows, "bag": pixel_reps._bag_rows, "csr": pixel_reps._csr_rows}[args.other]
    print(f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}); profile {args.profile}; "
          f"median of {args.steps} steps each, alternated; 'other' = {args.other}")
    for amp in args.amp:
        amp_dtype = {"off": None, "bf16": torch.bfloat16}[amp]
        for method in args.methods:
            bench = build(method, args.profile, "sparse", device=str(device))
            times: dict[str, list[float]] = {"default": [], "other": []}
            step = 0
            for name, rows in (("default", default), ("other", other)):  # each warms up (and autotunes) first
                pixel_reps.combine_rows = rows
                for _ in range(args.warmup):
                    _timed_step(bench.objective, bench.optimizer, bench.batch_of, step, bench.max_steps, amp_dtype)
                    step += 1
            # typical steps only: the NN pool's fill steps and the logged steps cost more (bench_methods.typical_steps)
            for i, timed in enumerate(typical_steps(bench, 2 * args.steps, first=step)):
                name = ("default", "other")[i % 2]
                pixel_reps.combine_rows = default if name == "default" else other
                times[name].append(_timed_step(bench.objective, bench.optimizer, bench.batch_of, timed, bench.max_steps, amp_dtype))
            pixel_reps.combine_rows = default
            a, b = statistics.median(times["default"]), statistics.median(times["other"])
            print(f"{method:<9} amp {amp:<4} default {1e3 * a:7.1f} ms   {args.other} {1e3 * b:7.1f} ms   "
                  f"default / other {a / b:5.2f}", flush=True)
            del bench


if __name__ == "__main__":
    main()
