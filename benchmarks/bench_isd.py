"""ISD pretraining step: the dense reference (before issue 10 item 3) vs the blocked local KL, and a
supervised step, back to back in one process (run by hand; prints numbers, asserts nothing).

Each round times one full step (loss, backward, SGD, after-step hook) of: the current ``isd_pretrain``
objective, the same objective computing its denormal probabilities as such (``methods.isd.flushed_denormals``
off, as before 2026-12-06), the same objective with the dense reference terms (``benchmarks/isd_reference.py``: the
(N, M) logits materialised, autograd KL), and the supervised objective, all at a profile's sizes as
``bench_methods.py`` builds them (ISD 3 + 3 images, supervised 4 + 4), with the same dropout seed for
the two ISD objectives, so their logged losses must agree up to float32 rounding (printed). Then the
local term alone (windows, heads, KL; forward + backward) on fixed logits. Medians over ``--steps``
rounds after one warm-up round, ``--threads`` intra-op threads (1 by default).

Run:  python benchmarks/bench_isd.py [--profile quick|paper] [--preset mona] [--steps 7] [--threads 1]

``--profile paper`` (256x256, the released UNet) takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from medseg_platform.study_flags import count_at_least  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    from methods.isd_pretrain import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="mona", help="ISD stage preset (methods.isd_pretrain.PRESETS); default mona")
    parser.add_argument("--layout", choices=("as_coded_reshape", "per_patch"), default=None, help="local_layout (default: the preset's)")
    parser.add_argument("--steps", type=count_at_least(1), default=7)
    parser.add_argument("--threads", type=count_at_least(1), default=1)
    args = parser.parse_args()

    import torch

    from isd_reference import use_dense_reference
    from medseg_platform.engine import StrongAugmentAdapter
    from medseg_platform.engine.loop import make_sgd
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import isd_stage, method_overrides
    from methods.objective import Batch
    from methods.registry import build_model, build_objective

    torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    h, w = profile.trial.data.patch_size
    stage = isd_stage(profile, args.preset)
    isd_params = dict(stage["objective_params"], **({"local_layout": args.layout} if args.layout else {}))
    sup = method_overrides("supervised", profile)

    def build(name, params, dense=False):
        torch.manual_seed(0)
        model = build_model("unet", num_classes=4, channels=profile.trial.model.channels)
        objective = build_objective(name, model, params)
        if dense:
            use_dense_reference(objective.isd)
        objective.train()
        return objective, make_sgd(objective.trainable_parameters(), 0.01, 0.9, 0.0, False)

    runs = {"blocked (new)": build("isd_pretrain", isd_params), "denormals kept": build("isd_pretrain", isd_params),
            "dense (reference)": build("isd_pretrain", isd_params, dense=True),
            "supervised": build(sup["objective"], sup["objective_params"])}
    import contextlib

    from methods.isd import denormals_kept
    data = torch.Generator().manual_seed(0)
    batches = {n: (torch.rand(n, 1, h, w, generator=data), torch.rand(n, 1, h, w, generator=data)) for n in (3, 4)}

    def step(key, index):
        objective, optimizer = runs[key]
        image, unlabelled = batches[4 if key == "supervised" else 3]
        label = (image[:, 0] * 4).long().clamp(max=3)
        augment = StrongAugmentAdapter(torch.Generator().manual_seed(index), "cutmix", 4)
        torch.manual_seed(100 + index)  # dropout: the same masks for both ISD objectives
        t0 = time.perf_counter()
        with denormals_kept() if key == "denormals kept" else contextlib.nullcontext():
            out = objective.loss(Batch(image, label, unlabelled, augment), index, 1000)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        objective.after_optimizer_step(index)
        return time.perf_counter() - t0, {k: float(v) for k, v in out.terms.items()}

    times = {key: [] for key in runs}
    differences = []  # per round: the largest relative difference of a logged ISD term, new vs reference
    for index in range(args.steps + 1):  # round 0 warms up (allocator, lazy buffers)
        terms = {}
        for key in runs:
            seconds, terms[key] = step(key, index)
            if index:
                times[key].append(seconds)
        differences.append(max(abs(terms["blocked (new)"][name] - value) / max(abs(value), 1e-12)
                               for name, value in terms["dense (reference)"].items()))

    # the local term alone (windows, heads, KL, forward + backward) on fixed logits
    local = {}
    z = torch.randn(6, 4, h, w, generator=data)
    for key in ("blocked (new)", "dense (reference)"):
        isd = runs[key][0].isd
        samples = []
        for index in range(args.steps + 1):
            z_s, z_t = z.clone().requires_grad_(), (z * 0.9).requires_grad_()
            t0 = time.perf_counter()
            isd.local_term(z_s, z_t).loss.backward()
            samples.append(time.perf_counter() - t0)
        local[key] = statistics.median(samples[1:])

    median = {key: statistics.median(v) for key, v in times.items()}
    cfg = runs["blocked (new)"][0].isd.config
    isd = runs["blocked (new)"][0].isd
    if cfg.local_layout == "per_patch":  # (B*P, K) (methods/isd.py, ISDRelationalKL.local_logits)
        logits = f"{6 * isd.num_windows} x {cfg.queue_size}"
    else:  # as released: (B*C*pool^2, K*C*pool^2), C = 4 channels of the windows' embedding
        logits = f"{6 * 4 * cfg.pool_size**2} x {cfg.queue_size * 4 * cfg.pool_size**2}"
    print(f"profile {args.profile} ({h}x{w}), preset {args.preset}, local_layout {cfg.local_layout}, {args.threads} thread(s), "
          f"median of {args.steps} steps; P = {isd.num_windows} windows, local logits {logits}")
    print(f"{'step':<20} {'ms':>9} {'x supervised':>13}")
    for key, seconds in median.items():
        print(f"{key:<20} {1e3 * seconds:9.1f} {seconds / median['supervised']:12.1f}x")
    print(f"speed-up of the ISD step: {median['dense (reference)'] / median['blocked (new)']:.2f}x over the dense reference, "
          f"{median['denormals kept'] / median['blocked (new)']:.2f}x over denormals kept")
    print(f"local term alone (windows + heads + KL, fwd + bwd): dense {1e3 * local['dense (reference)']:.1f} ms, "
          f"blocked {1e3 * local['blocked (new)']:.1f} ms ({local['dense (reference)'] / local['blocked (new)']:.2f}x)")
    print(f"largest relative difference of a logged term, new vs reference (float32): first step {differences[0]:.1e}, "
          f"all {len(differences)} steps {max(differences):.1e} (the two runs drift apart by rounding as they train)")


if __name__ == "__main__":
    main()
