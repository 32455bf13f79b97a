"""MONA/ARCO's bank negatives gathered into the banks' reused buffer (``ClassMemoryBank.gather_transient``, the
default) against a fresh block per gather (``ClassMemoryBank.gather``), in whole training steps alternated step
by step in one process (docs/methods.md, 'Bank negatives are gathered into a reused buffer').

Both read the same rows, so one step's loss terms must be equal bit for bit; the script checks that first.

Run:  python benchmarks/bench_bank_gather.py [--profile quick|paper] [--methods mona arco_sg] [--steps 40]
          [--device cpu]
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
    parser.add_argument("--profile", choices=("quick", "paper"), default="quick",
                        help="problem size (the smoke profile trains 6 steps: too few to time)")
    parser.add_argument("--methods", nargs="+", choices=("mona", "arco_sg", "arco_sag"), default=["mona", "arco_sg"])
    parser.add_argument("--steps", type=count_at_least(1), default=40, help="timed steps of each way (paper: try 3)")
    parser.add_argument("--device", type=device_arg, default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from methods.memory_bank import ClassMemoryBank

    ways = {"reused buffer": ClassMemoryBank.gather_transient, "fresh blocks": ClassMemoryBank.gather}
    print(f"profile {args.profile}, {args.device}, 1 thread; median of {args.steps} steps each way, alternated")
    try:
        for method in args.methods:
            terms = []
            for gather in ways.values():  # the same first step both ways, from the same weights: equal terms
                ClassMemoryBank.gather_transient = gather
                bench = build(method, args.profile, "sparse", device=str(args.device))
                terms.append({})
                _timed_step(bench.objective, bench.optimizer, bench.batch_of, 0, bench.max_steps, terms=terms[-1], kernels=bench.kernels)
            if terms[0] != terms[1]:
                raise SystemExit(f"{method}: the two ways gave different loss terms: {terms[0]} vs {terms[1]}")
            times = {name: [] for name in ways}
            # typical steps only: the NN pool's fill steps and the logged steps cost more (bench_methods.typical_steps)
            for i, step in enumerate(typical_steps(bench, 2 * args.steps, first=1)):
                name = list(ways)[(i + 1) % 2]
                ClassMemoryBank.gather_transient = ways[name]
                times[name].append(_timed_step(bench.objective, bench.optimizer, bench.batch_of, step, bench.max_steps, kernels=bench.kernels))
            medians = {name: statistics.median(t) for name, t in times.items()}
            print(f"{method:9s} " + "  ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in medians.items())
                  + f"  ratio {medians['reused buffer'] / medians['fresh blocks']:.3f}  (loss terms equal: {sorted(terms[0])})",
                  flush=True)
    finally:
        ClassMemoryBank.gather_transient = ways["reused buffer"]


if __name__ == "__main__":
    main()
