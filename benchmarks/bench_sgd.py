"""SGD on torch's per-tensor loop vs its multi-tensor kernels (``foreach``), the CPU training step's optimiser update.

Run:  python benchmarks/bench_sgd.py [--profile quick] [--steps 300] [--methods supervised mona action]

For each method, its objective's trainable parameters at the profile's sizes (the UNet, and MONA/ARCO's or ACTION's
heads) with the released SGD settings (momentum 0.9, weight decay 1e-4), two optimisers on two copies from the same
weights, updated with the same random gradients; steps alternate between them. Prints the median update time of
each and whether the parameters and momentum buffers end bit for bit equal (``medseg_platform.engine.loop.make_sgd``
relies on it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medseg_platform.recipes import METHODS  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    parser.add_argument("--steps", type=count_at_least(1), default=300)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["supervised", "mona", "action"])
    args = parser.parse_args()

    import torch

    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import method_overrides
    from methods.registry import build_model, build_objective

    torch.set_num_threads(1)
    profile = PROFILES[args.profile]
    print(f"profile {args.profile}, 1 thread, median of {args.steps} updates each, alternating")
    for method in args.methods:
        overrides = method_overrides(method, profile)
        torch.manual_seed(0)
        model = build_model("unet", num_classes=4, channels=profile.trial.model.channels)
        objective = build_objective(overrides["objective"], model, overrides["objective_params"])
        copies = [copy.deepcopy(objective), copy.deepcopy(objective)]
        params = [list(c.trainable_parameters()) for c in copies]
        optimizers = [torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=multi) for p, multi in zip(params, (False, True))]
        generator = torch.Generator().manual_seed(1)
        times: list[list[float]] = [[], []]
        for _ in range(args.steps):
            grads = [torch.randn(p.shape, generator=generator) for p in params[0]]
            for k in (0, 1):
                for p, g in zip(params[k], grads):
                    p.grad = g.clone()
                t0 = time.perf_counter()
                optimizers[k].step()
                times[k].append(time.perf_counter() - t0)
        same = all(torch.equal(a, b) for a, b in zip(*params)) and all(
            torch.equal(optimizers[0].state[a]["momentum_buffer"], optimizers[1].state[b]["momentum_buffer"]) for a, b in zip(*params))
        loop_ms, multi_ms = (1e3 * statistics.median(t) for t in times)
        print(f"{method:12s} {len(params[0]):4d} tensors  per-tensor {loop_ms:.3f} ms  multi-tensor {multi_ms:.3f} ms  "
              f"saved {loop_ms - multi_ms:.3f} ms  bit-equal: {same}", flush=True)


if __name__ == "__main__":
    main()
