"""Per-step time and peak memory of every method's training step, and the ratio to the supervised step.

One process per method (so the peak resident memory is that method's alone): build the UNet and the
objective at a profile's sizes (``medseg_platform.profiles``), then time full steps (loss, backward,
SGD, after-step hooks) on random 4 + 4 batches with the engine's strong-view adapter.

Run:  python benchmarks/bench_methods.py [--profile quick|paper] [--steps 5] [--threads 1]

``--profile paper`` is 256x256 with the released UNet, 256 anchors x 512 negatives and the full-resolution
NN pool: minutes per method on a CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(method: str, profile_name: str, steps: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from medseg_platform.engine import StrongAugmentAdapter
    from medseg_platform.profiles import PROFILES, _isd_stage, method_overrides
    from methods.objective import Batch
    from methods.registry import build_model, build_objective

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    profile = PROFILES[profile_name]
    if method == "isd_pretrain":
        stage = _isd_stage(profile, "mona")
        name, params, batch = stage["objective"], stage["objective_params"], 3
    else:
        overrides = method_overrides(method, profile)
        name, params, batch = overrides["objective"], overrides["objective_params"], 4
    h, w = profile.trial.data.patch_size
    model = build_model("unet", num_classes=4, channels=profile.trial.model.channels)
    objective = build_objective(name, model, params)
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.01, momentum=0.9)
    image = torch.rand(batch, 1, h, w)
    label = (image[:, 0] * 4).long().clamp(max=3)
    unlabelled = torch.rand(batch, 1, h, w)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(steps + 1):  # the first step warms up (lazy buffers, allocator)
        augment = StrongAugmentAdapter(torch.Generator().manual_seed(step), "cutmix", 4)
        t0 = time.perf_counter()
        out = objective.loss(Batch(image, label, unlabelled, augment), step, 1000)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        objective.after_optimizer_step(step)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "objective": name, "step_s": statistics.median(times[1:]), "peak_rss_mib": peak / 1024,
            "rss_growth_mib": (peak - rss_before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.profile, args.steps, args.threads)))
        return
    from medseg_platform.profiles import METHODS

    rows = []
    for method in (*METHODS, "isd_pretrain"):
        proc = subprocess.run([sys.executable, __file__, "--one", method, "--profile", args.profile, "--steps", str(args.steps),
                               "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next(r["step_s"] for r in rows if r["method"] == "supervised")
    print(f"profile {args.profile}, {args.threads} thread(s), median of {args.steps} steps (4+4 images; ISD 3+3)")
    print(f"{'method':<14} {'objective':<14} {'step':>10} {'x supervised':>13} {'peak RSS':>10}")
    for r in rows:
        print(f"{r['method']:<14} {r['objective']:<14} {1e3 * r['step_s']:8.1f} ms {r['step_s'] / base:12.1f}x {r['peak_rss_mib']:7.0f} MiB")


if __name__ == "__main__":
    main()
