"""Per-step time and peak memory of every method's training step, and the ratio to the supervised step.

One process per method (so the peak resident memory is that method's alone): build the UNet and the
objective at a profile's sizes (``medseg_platform.profiles``), then time full steps (loss, backward,
SGD, after-step hooks) on random 4 + 4 batches with the engine's strong-view adapter.

Run:  python benchmarks/bench_methods.py [--profile quick|paper] [--steps 5] [--threads 1]
          [--representation sparse dense] [--methods mona action ...] [--glibc-default]

``--profile paper`` is 256x256 with the released UNet, 256 anchors x 512 negatives and the full-resolution
NN pool: minutes per method on a CPU.

MONA/ARCO and ACTION run once per ``--representation`` (``sparse``, the default path, and ``dense``, the
reference), back to back in the same run. The objective gets the profile's logging schedule, as in training:
a *typical* step (median of ``--steps``) computes no gradient-free L_nn; MONA/ARCO also time one step that
fills the NN pool for a coming log row and one logged step, and report the mean over a log interval
(``log_every`` steps: one logged, ``ceil(K / B_u)`` filling, the rest typical).

Ratios are to a supervised step timed in the same process, interleaved step by step with the method's (the
machine's speed drifts between minutes); the peak RSS includes that small supervised model. Each runs the CPU
convolution kernels its trials run (column 'conv'; ``--conv-kernels`` overrides the method's,
docs/methods.md, 'CPU convolution kernels').
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
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
from medseg_platform.study_flags import count_at_least  # noqa: E402


def device_arg(text: str):
    """An argparse ``type`` for ``--device``: a torch device this machine has ("cpu", "cuda", "cuda:1"); a mistyped name
    or CUDA on a machine without it is argparse's one-line error, not torch's traceback (the benchmark review)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is no torch device (give cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: the benchmarks run on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU (give cpu)")
    return device


def _timed_step(objective, optimizer, batch_of, step: int, max_steps: int, amp_dtype=None, terms: dict | None = None,
                kernels: str | None = None, scaler=None) -> float:
    """One full training step as the engine's loop runs it (loss under ``amp_dtype`` autocast, backward, the deferred
    gradient-free terms, SGD, after-step hooks); seconds, with the GPU's queue drained before and after.
    ``terms``: filled with the step's loss terms (read after the timing). ``kernels``: the CPU convolution kernels
    of the step (``build``'s ``kernels``, as the method's trials run them; None: the process's setting). ``scaler``: a
    ``torch.amp.GradScaler`` for fp16, as the engine's loop uses one (without it fp16 gradients overflow)."""
    if kernels is not None:
        from medseg_platform.engine.conv_kernels import using_conv_kernels

        with using_conv_kernels(kernels):
            return _timed_step(objective, optimizer, batch_of, step, max_steps, amp_dtype, terms, scaler=scaler)
    import torch

    from methods.objective import Batch

    image, label, unlabelled, augment = batch_of(step)
    device = image.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = objective.loss(Batch(image, label, unlabelled, augment), step, max_steps)
    optimizer.zero_grad()
    (scaler.scale(out.total) if scaler is not None else out.total).backward()
    late = {}
    if getattr(objective, "defer_logged_terms", False):
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            late = objective.after_backward(step)  # as the engine's loop does
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    objective.after_optimizer_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if terms is not None:
        terms.update({name: float(value.detach() if isinstance(value, torch.Tensor) else value)
                      for name, value in {"total": out.total, **out.terms, **(late or {})}.items()})
    return seconds


#: The network passes each method cannot avoid (its floor): batches of images through the student with
#: gradients, and without (MONA/ARCO: labelled, strong, warped 4 + 4 / the teacher on the weak, labelled and strong
#: views and, as released (``copy_bn_update``), the student on the labelled copy for its BatchNorm statistics; ACTION:
#: labelled, strong / the teacher on the weak view and, as released (``weak_bn_update``), the student on it for its
#: BatchNorm statistics; ISD: 3 + 3 student / 3 + 3 teacher). The passes without gradients run on a copy of the
#: network (the teacher's cost is the student's).
PASSES = {"mona": ((4, 4, 8), (4, 4, 4, 4)), "action": ((4, 4), (4, 4)), "isd_pretrain": ((6,), (6,))}

#: The ISD pretraining stages timed (``methods.isd_pretrain.PRESETS``): MONA/ARCO's one stage, ACTION's two (its
#: teacher temperature 0.01 is the one that makes denormal probabilities, docs/methods.md).
ISD_STAGES = {"isd_pretrain": "mona", "isd_action_i": "action_stage_i", "isd_action_ii": "action_stage_ii"}


class _Passes:
    """A stand-in objective that runs only a method's network passes (``PASSES``), in training mode."""

    def __init__(self, model, grad_batches, free_batches) -> None:
        import copy

        self.model, self.teacher = model, copy.deepcopy(model).requires_grad_(False)
        self.grad_batches, self.free_batches = grad_batches, free_batches

    def to(self, device):
        self.model.to(device), self.teacher.to(device)
        return self

    def trainable_parameters(self):
        return self.model.parameters()

    def loss(self, batch, step, max_steps):
        import torch

        image = batch.labelled_image
        total = sum(self.model(image[:1].expand(n, -1, -1, -1).contiguous()).logits.mean() for n in self.grad_batches)
        with torch.no_grad():
            for n in self.free_batches:
                self.teacher(image[:1].expand(n, -1, -1, -1).contiguous())
        return type("Out", (), {"total": total, "terms": {}})()

    def after_optimizer_step(self, step) -> None:
        pass


def build(method: str, profile_name: str, representation: str, device: str = "cpu", threads: int = 1,
          keep_freed: bool = True, conv_kernels: str = "auto"):
    """A method's objective and SGD optimiser at a profile's sizes on ``device``, and its random batches.

    Returns a namespace: ``name`` (the objective), ``params``, ``objective``, ``optimizer``, ``batch_of(step)``
    (the same 4 + 4 images every step, ISD 3 + 3, with the engine's strong-view adapter), ``max_steps``, ``log_every``,
    ``kernels`` (the CPU convolution kernels the method's fine-tuning runs with ``conv_kernels``, for ``_timed_step``;
    a ``passes:X`` floor runs X's).
    Seeds the global RNG with 0 first: two builds of one method start from the same weights. On the CPU it fixes
    glibc's thresholds as a training process does (``methods.heap.keep_freed_blocks``) unless ``keep_freed`` is
    False."""
    import torch

    sys.path.insert(0, str(REPO))
    from medseg_platform.engine import StrongAugmentAdapter, logs_after
    from medseg_platform.engine.loop import make_sgd
    from medseg_platform.engine.conv_kernels import resolve_conv_kernels
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import isd_stage, method_overrides, with_epoch_length
    from methods.heap import keep_freed_blocks
    from methods.registry import build_model, build_objective

    torch.set_num_threads(threads)
    if keep_freed and torch.device(device).type != "cuda":
        keep_freed_blocks()  # as a training process on the CPU does (medseg_platform/engine/trial.py)
    torch.manual_seed(0)
    profile = PROFILES[profile_name]
    if method.startswith("passes:"):
        name, params, batch = method, {}, 4
    elif method in ISD_STAGES:
        stage = isd_stage(profile, ISD_STAGES[method])
        name, params, batch = stage["objective"], stage["objective_params"], 3
    else:
        overrides = method_overrides(method, profile)
        name, params, batch = overrides["objective"], overrides["objective_params"], 4
        if name in ("mona", "arco", "action"):
            params = {**params, "representation": representation}
        params, _ = with_epoch_length(params, 322)  # a trial's is its labelled set's; the step cost does not depend on it
    h, w = profile.trial.data.patch_size
    model = build_model("unet", num_classes=4, channels=profile.trial.model.channels)
    objective = _Passes(model, *PASSES[name.split(":")[1]]) if name.startswith("passes:") else build_objective(name, model, params)
    objective.to(device)
    max_steps, every = profile.trial.optim.max_steps, (profile.trial.eval.log_every, profile.trial.eval.val_every)
    if not name.startswith("passes:"):
        objective.logged_steps = lambda step, total: logs_after(step, total, *every)
        objective.defer_logged_terms = True  # as in training (the engine's loop calls after_backward)
    optimizer = make_sgd(objective.trainable_parameters(), 0.01, 0.9, 0.0, False)  # the kernels training's SGD runs
    image = torch.rand(batch, 1, h, w).to(device)
    label = (image[:, 0] * 4).long().clamp(max=3)
    unlabelled = torch.rand(batch, 1, h, w).to(device)

    def batch_of(step: int):
        return image, label, unlabelled, StrongAugmentAdapter(torch.Generator().manual_seed(step), "cutmix", 4)

    kernels = resolve_conv_kernels(conv_kernels, name.split(":")[-1], profile.trial.model.channels, (h, w), torch.device(device).type)
    return SimpleNamespace(name=name, params=params, objective=objective, optimizer=optimizer, batch_of=batch_of,
                           max_steps=max_steps, log_every=profile.trial.eval.log_every, every=every, kernels=kernels)


def _nn_reach(bench) -> int:
    """Steps before a log row that fill MONA/ARCO's NN pool for it (0 without an NN term)."""
    if bench.name not in ("mona", "arco") or bench.params.get("nn_weight", 1.0) <= 0:
        return 0
    return min(-(-int(bench.params.get("nn_pool_capacity", 36)) // 4), bench.log_every - 1)


def typical_steps(bench, count: int, first: int = 0) -> list[int]:
    """``count`` step indices from ``first`` on that neither record a curve row nor fill the NN pool for one: the
    typical steps of a log interval (:func:`nn_interval` times the other two kinds). Timing steps 0..20 of the quick
    profile's MONA counted its fill steps 15-20 as typical (+4.6% on the dense median: the benchmark review). Where
    every step of an interval fills the pool (a tiny ``log_every``), only the logged steps are left out."""
    from medseg_platform.engine import logs_after

    reach = _nn_reach(bench)
    if reach >= bench.log_every - 1:
        reach = 0
    steps, step = [], first
    while len(steps) < count:
        if not any(logs_after(t, bench.max_steps, *bench.every) for t in range(step, step + reach + 1)):
            steps.append(step)
        step += 1
    return steps


def nn_interval(bench, step_s: float, amp_dtype=None) -> dict:
    """MONA/ARCO with an NN term: one step that fills the NN pool for a coming log row, one logged step, and the
    mean over a log interval (``log_every`` steps: one logged, ``ceil(K / B_u)`` filling, the rest typical)."""
    reach = _nn_reach(bench)  # pool-filling steps before a log row
    if not reach:
        return {}
    log_every = bench.log_every
    scaler = getattr(bench, "scaler", None)  # fp16 (bench_gpu.py): the run's GradScaler
    fill = _timed_step(bench.objective, bench.optimizer, bench.batch_of, log_every - 2, bench.max_steps, amp_dtype, kernels=bench.kernels,
                       scaler=scaler)
    logged = _timed_step(bench.objective, bench.optimizer, bench.batch_of, log_every - 1, bench.max_steps, amp_dtype, kernels=bench.kernels,
                         scaler=scaler)
    return {"fill_step_s": fill, "logged_step_s": logged,
            "interval_mean_s": (step_s * (log_every - 1 - reach) + fill * reach + logged) / log_every}


def one(method: str, profile_name: str, steps: int, threads: int, representation: str, keep_freed: bool = True,
        conv_kernels: str = "auto") -> dict:
    bench = build(method, profile_name, representation, threads=threads, keep_freed=keep_freed, conv_kernels=conv_kernels)
    # a supervised step interleaved with every step of the method, in the same process: the ratio holds even
    # when the machine's speed drifts (a shared 2-core machine varies by 1.5x between minutes); it runs the
    # kernels a supervised trial runs, whatever --conv-kernels says
    reference = build("supervised", profile_name, representation, threads=threads, keep_freed=keep_freed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the first step warms up (lazy buffers, allocator); none of the steps logs or fills the NN pool for a log row
    times, reference_times = [], []
    for step in typical_steps(bench, steps + 1):
        reference_times.append(_timed_step(reference.objective, reference.optimizer, reference.batch_of, step, reference.max_steps,
                                           kernels=reference.kernels))
        times.append(_timed_step(bench.objective, bench.optimizer, bench.batch_of, step, bench.max_steps, kernels=bench.kernels))
    row = {"method": method, "objective": bench.name, "kernels": bench.kernels,
           "representation": representation if bench.name in ("mona", "arco", "action") else "-",
           "step_s": statistics.median(times[1:]), "supervised_step_s": statistics.median(reference_times[1:])}
    row.update(nn_interval(bench, row["step_s"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**row, "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - rss_before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    parser.add_argument("--steps", type=count_at_least(1), default=5)
    parser.add_argument("--threads", type=count_at_least(1), default=1)
    parser.add_argument("--representation", nargs="+", choices=("sparse", "dense"), default=["sparse", "dense"])
    parser.add_argument("--methods", nargs="+", help="methods to run (default: every method, the ISD stages isd_pretrain "
                        "(MONA/ARCO's), isd_action_i and isd_action_ii (ACTION's) and the floors passes:mona, passes:action, "
                        "passes:isd_pretrain; supervised always)")
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's allocator thresholds at their "
                        "defaults instead of fixing them as a CPU training process does (methods/heap.py)")
    parser.add_argument("--conv-kernels", choices=("auto", "onednn", "pytorch"), default="auto",
                        help="CPU convolution kernels of each method's steps (default auto: the ones its trials run, "
                        "medseg_platform/engine/conv_kernels.py); the supervised reference always runs its trials' own")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.profile, args.steps, args.threads, args.representation[0], not args.glibc_default,
                             args.conv_kernels)))
        return
    from medseg_platform.recipes import CONTRASTIVE_METHODS, METHODS

    every = (*METHODS, *ISD_STAGES, *(f"passes:{m}" for m in PASSES))
    unknown = [m for m in args.methods or () if m not in every]
    if unknown:
        parser.error(f"--methods: unknown {' '.join(unknown)} (choose from {' '.join(every)})")
    methods = ["supervised"] + [m for m in (args.methods or every) if m != "supervised"]
    rows = []
    for method in methods:
        contrastive = method in CONTRASTIVE_METHODS
        for representation in (args.representation if contrastive else args.representation[:1]):
            print(f"running {method} ({representation if contrastive else '-'}) ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--profile", args.profile, "--steps", str(args.steps),
                                   "--threads", str(args.threads), "--representation", representation,
                                   "--conv-kernels", args.conv_kernels, *(["--glibc-default"] if args.glibc_default else [])],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{method} ({representation}) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)  # kept if a long run is cut short
    print(f"profile {args.profile}, {args.threads} thread(s), median of {args.steps} steps (4+4 images; ISD 3+3); "
          f"'x sup.' = ratio to a supervised step interleaved in the same process (its median: 'sup. step'); glibc's "
          f"thresholds {'at their defaults' if args.glibc_default else 'fixed as in training'}; 'conv': the method's CPU "
          f"convolution kernels (--conv-kernels {args.conv_kernels})")
    print(f"{'method':<14} {'repr.':<7} {'conv':<7} {'step':>10} {'sup. step':>10} {'x sup.':>7} {'fill step':>10} {'logged step':>12} "
          f"{'interval mean':>14} {'x sup.':>7} {'peak RSS':>10}")
    for r in rows:
        base = r["supervised_step_s"]
        extra = "" if "interval_mean_s" not in r else (
            f" {1e3 * r['fill_step_s']:7.1f} ms {1e3 * r['logged_step_s']:9.1f} ms {1e3 * r['interval_mean_s']:11.1f} ms"
            f" {r['interval_mean_s'] / base:6.1f}x")
        pad = " " * 54 if not extra else ""
        print(f"{r['method']:<14} {r['representation']:<7} {r['kernels']:<7} {1e3 * r['step_s']:7.1f} ms {1e3 * base:7.1f} ms "
              f"{r['step_s'] / base:6.1f}x{extra}{pad}"
              f" {r['peak_rss_mib']:7.0f} MiB")


if __name__ == "__main__":
    main()
