"""GPU step time, peak GPU memory and concurrent trials per GPU, at the paper size (run by hand on a GPU machine).

Three parts, each printing its table as it finishes and appending its rows to ``--json`` (one JSON object per line):

1. **steps**: every method's full training step (``bench_methods.build``/``_timed_step``: loss under the trial's
   autocast, backward, deferred gradient-free terms, SGD, after-step hooks; 4 + 4 random images, ISD 3 + 3) on
   one GPU, for each ``--amp`` and each ``--representation`` of MONA/ARCO/ACTION: median step time over ``--steps``
   after ``--warmup`` steps (cuDNN autotuning, allocator), the ratio to a supervised step timed in the same
   process, MONA/ARCO's NN-pool fill and logged steps (timed twice: the first run tunes their new shapes, the
   second is what every later log row costs) and their log-interval mean, and the peak GPU memory of the
   typical steps after the warm-up (``torch.cuda.max_memory_allocated``/``max_memory_reserved``, reset after the
   warm-up) beside the peak allocation of the warm-up (it holds cuDNN's autotuning workspaces) and of the fill and
   logged steps (their first run: new shapes). ``--no-cudnn-benchmark`` and ``--no-tf32`` (TF32 off for cuDNN
   convolutions and matrix products) test what those settings change. One process per
   ``--amp``: the methods run one after another (the caching allocator is emptied between them).
   Also the loss terms of the first timed step of each representation, which start from the same weights,
   batches and RNG state, so the sparse-vs-dense relative difference on this GPU is printed.
2. **concurrent**: ``k`` processes (``--concurrent``, e.g. 1 2 4 8) each training ``--concurrent-method`` at the
   profile's size, started together after their warm-up: per-process median step time, aggregate steps per second,
   and each process's GPU memory as ``nvidia-smi`` sees it (CUDA context included). How many trials fit in memory
   is the GPU's total over the largest per-process use; whether more trials add throughput is the aggregate column.
3. **trace**: ``torch.profiler`` over ``--trace-steps`` steps of each ``--trace-methods`` (sparse, first ``--amp``)
   after the warm-up: the operators with the most self device time and the most self CPU time, and per step the
   host-device synchronisations (``cudaStreamSynchronize``/``cudaDeviceSynchronize``) and kernel launches.
The suite's CUDA tests run with pytest (``tests/test_gpu_path.py`` and the ``cuda`` tests), not here.

Run:  python benchmarks/bench_gpu.py [--profile paper] [--steps 20] [--warmup 3] [--amp off bf16]
          [--methods mona action ...] [--representation sparse dense] [--concurrent 1 2 4 8]
          [--concurrent-method mona] [--concurrent-amp off] [--parts steps concurrent trace]
          [--trace-methods mona action] [--trace-steps 5] [--no-cudnn-benchmark] [--no-tf32] [--json FILE]

``--device cpu`` runs the same code on the CPU (to check the script itself, e.g. ``--profile quick``); the GPU
memory columns are then empty.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import PASSES, REPO, _timed_step, build, device_arg, nn_interval, typical_steps  # noqa: E402
from medseg_platform.recipes import CONTRASTIVE_METHODS as CONTRASTIVE  # noqa: E402
from medseg_platform.recipes import METHODS as RECIPES  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

METHODS = (*RECIPES, "isd_pretrain", *(f"passes:{m}" for m in PASSES))  # every method with a recipe, a new one too


def _amp_dtype(amp: str):
    import torch

    # fp16 runs with a GradScaler, as the engine's training does (_steps); its first timed step's loss terms show whether
    # they stay finite, which a class sum overflowing half precision broke at the paper size (docs/methods.md)
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _memory_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device) -> dict:
    import torch

    if device.type != "cuda":
        return {"peak_allocated_mib": None, "peak_reserved_mib": None}
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}


def _steps(bench, first: int, count: int, amp_dtype, terms: dict | None = None) -> list[float]:
    import torch

    if amp_dtype is torch.float16 and getattr(bench, "scaler", None) is None:  # kept from the warm-up on, as in training
        bench.scaler = torch.amp.GradScaler(next(iter(bench.objective.trainable_parameters())).device.type)
    times = []
    for step in typical_steps(bench, count, first):  # no log row, no NN-pool fill for one
        if step == first and terms is not None:
            import torch

            torch.manual_seed(1234)  # dropout and samplers: the same stream for every representation's first step
        times.append(_timed_step(bench.objective, bench.optimizer, bench.batch_of, step, bench.max_steps, amp_dtype,
                                 terms if step == first else None, scaler=getattr(bench, "scaler", None)))
    return times


def measure_method(method: str, representation: str, args, device) -> dict:
    """One method's row: median step, NN interval, peak GPU memory, first timed step's loss terms."""
    amp_dtype = _amp_dtype(args.amp[0])
    _memory_reset(device)
    bench = build(method, args.profile, representation, device=str(device), threads=args.threads)
    _steps(bench, 0, args.warmup, amp_dtype)
    warmup_peak = _memory_peak(device)  # includes cuDNN's autotuning workspaces (cudnn.benchmark tries algorithms)
    _memory_reset(device)
    terms: dict = {}
    scaler = getattr(bench, "scaler", None)
    scale_before = scaler.get_scale() if scaler is not None else None
    times = _steps(bench, args.warmup, args.steps, amp_dtype, terms)  # far from a log row (log_every >= 100 at paper)
    row = {"method": method, "objective": bench.name, "amp": args.amp[0],
           "representation": representation if bench.name in ("mona", "arco", "action") else "-",
           "step_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times), "first_terms": terms}
    if scaler is not None:  # fp16: the scale halves at every update the scaler skips (gradients inf/NaN; the loss may be finite)
        row["amp_scale"] = [scale_before, scaler.get_scale()]
    row.update(_memory_peak(device))  # the typical steps after the warm-up
    row.update({f"warmup_{name}": value for name, value in warmup_peak.items()})
    _memory_reset(device)
    first = nn_interval(bench, row["step_s"], amp_dtype)
    if first:  # MONA/ARCO's first NN-pool fill and logged steps (new shapes: cuDNN autotunes them here)
        row.update({f"first_{name}": value for name, value in first.items()})
        row.update({f"nn_steps_{name}": value for name, value in _memory_peak(device).items()})
        row.update(nn_interval(bench, row["step_s"], amp_dtype))  # again: the cost of every later log row
    del bench
    return row


def part_steps(args, device) -> list[dict]:
    """Every method (and representation) in this process under one ``--amp``; supervised first (the ratios' base)."""
    methods = ["supervised"] + [m for m in args.methods if m != "supervised"]
    rows = []
    for method in methods:
        for representation in (args.representation if method in CONTRASTIVE else args.representation[:1]):
            print(f"[steps] {method} ({representation}, amp {args.amp[0]}) ...", file=sys.stderr, flush=True)
            try:
                row = measure_method(method, representation, args, device)
            except Exception as error:  # one method failing on a GPU must not lose the others' rows
                import traceback

                row = {"method": method, "representation": representation, "amp": args.amp[0],
                       "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
                print(row["traceback"], file=sys.stderr, flush=True)
            rows.append(row)
            _emit(args, {"part": "steps", "profile": args.profile, "device": _device_name(device),
                         "cudnn_benchmark": not args.no_cudnn_benchmark, "tf32": not args.no_tf32, **row})
    return rows


def print_steps(rows: list[dict], args, device) -> None:
    base = next((r["step_s"] for r in rows if r["method"] == "supervised" and "step_s" in r), None)
    settings = "".join(f"; {flag}" for flag, on in (("no cuDNN autotuning", args.no_cudnn_benchmark), ("no TF32", args.no_tf32)) if on)
    print(f"\n{_device_name(device)}; profile {args.profile}; amp {args.amp[0]}{settings}; median of {args.steps} steps after {args.warmup} "
          f"warm-up (4+4 images; ISD 3+3); 'x sup.' = ratio to the supervised step of this process")
    print("'fill', 'logged', 'interval': the second run of MONA/ARCO's NN-pool fill and logged steps; "
          "'1st logged': the first (cuDNN autotunes its new shapes there)")
    print(f"{'method':<14} {'repr.':<7} {'step':>9} {'x sup.':>7} {'min-max':>15} {'fill':>9} {'logged':>9} {'interval':>9} "
          f"{'x sup.':>7} {'1st logged':>10} {'peak alloc.':>12} {'peak reserved':>14} {'warm-up peak':>13} {'fill+logged peak':>17}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<14} {r['representation']:<7} FAILED: {r['error'][:160]}")
            continue
        ratio = f"{r['step_s'] / base:6.1f}x" if base else "      -"
        nn = (f" {1e3 * r['fill_step_s']:6.1f}ms {1e3 * r['logged_step_s']:6.1f}ms {1e3 * r['interval_mean_s']:6.1f}ms"
              f" {r['interval_mean_s'] / base:6.1f}x {1e3 * r['first_logged_step_s']:8.1f}ms"
              if "interval_mean_s" in r and base else " " * 49)
        memory = ("" if r["peak_allocated_mib"] is None else
                  f" {r['peak_allocated_mib']:8.0f} MiB {r['peak_reserved_mib']:10.0f} MiB {r['warmup_peak_allocated_mib']:9.0f} MiB"
                  + (f" {r['nn_steps_peak_allocated_mib']:13.0f} MiB" if r.get("nn_steps_peak_allocated_mib") is not None else ""))
        print(f"{r['method']:<14} {r['representation']:<7} {1e3 * r['step_s']:6.1f}ms {ratio} "
              f"{1e3 * r['step_min_s']:6.1f}-{1e3 * r['step_max_s']:5.1f}ms{nn}{memory}")
    for r in rows:  # a NaN or inf term of the first timed step (fp16's overflow, say)
        bad = sorted(k for k, v in (r.get("first_terms") or {}).items() if not math.isfinite(v))
        if bad:
            print(f"  {r['method']} ({r['representation']}, amp {r.get('amp')}): non-finite loss term(s) {', '.join(bad)}")
        before, after = r.get("amp_scale") or (None, None)
        if before and after is not None and after < before:  # the gradients overflowed though the loss may be finite
            skipped = round(math.log2(before / after)) if after > 0 else args.steps
            print(f"  {r['method']} ({r['representation']}, amp fp16): the gradient scale fell {before:g} -> {after:g} over the "
                  f"timed steps: at least {skipped} of them skipped the update (gradients inf/NaN), so their time leaves it out")
    pairs: dict = {}
    for r in rows:
        if r.get("representation") in ("sparse", "dense") and "first_terms" in r:
            pairs.setdefault(r["method"], {})[r["representation"]] = r["first_terms"]
    for method, both in pairs.items():
        if len(both) == 2:
            dense, sparse = both["dense"], both["sparse"]
            diffs = {k: abs(sparse[k] - dense[k]) / max(abs(dense[k]), 1e-12) for k in dense if k in sparse}
            print(f"  {method}: first timed step, sparse vs dense, relative difference per loss term: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in sorted(diffs.items())))


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _emit(args, record: dict) -> None:
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def worker(args, device) -> None:
    """One concurrent trial: warm up, say 'ready', wait for 'go' on stdin, time ``--steps`` steps, print a JSON row."""
    import torch

    amp_dtype = _amp_dtype(args.concurrent_amp)
    bench = build(args.worker, args.profile, "sparse", device=str(device), threads=args.threads)
    _steps(bench, 0, args.warmup, amp_dtype)
    # one NN-pool fill step and one logged step (MONA/ARCO), untimed: the memory columns then include a trial's logged
    # step, which needs more than a typical one (it was left out: 'fit by memory' over-counted the trials, the benchmark
    # review); the timed steps stay typical ones
    nn_interval(bench, 0.0, amp_dtype)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    times = _steps(bench, args.warmup, args.steps, amp_dtype)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps({"step_s": statistics.median(times), "wall_s": wall, "steps": len(times), "peak_reserved_mib": peak}), flush=True)


def _gpu_memory_by_pid() -> dict[int, float]:
    """MiB per process from nvidia-smi (CUDA context included); empty where nvidia-smi is missing."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    memory = {}
    for line in out.strip().splitlines():
        pid, _, used = line.partition(",")
        if pid.strip().isdigit() and used.strip().replace(".", "").isdigit():
            memory[int(pid)] = float(used)
    return memory


def part_concurrent(args, device) -> list[dict]:
    rows = []
    for k in args.concurrent:
        print(f"[concurrent] {k} x {args.concurrent_method} (amp {args.concurrent_amp}) ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--worker", args.concurrent_method, "--profile", args.profile, "--device", str(device),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--concurrent-amp", args.concurrent_amp]
        procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        try:
            ready = [p.stdout.readline().strip() == "ready" for p in procs]
            if not all(ready):
                raise RuntimeError(f"{ready.count(False)} of {k} workers failed before their warm-up ended (traceback above)")
            memory = _gpu_memory_by_pid()
            t0 = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            lines = [p.stdout.readline().strip() for p in procs]
            if not all(lines):
                raise RuntimeError(f"{lines.count('')} of {k} workers exited before reporting their steps (traceback above)")
            results = [json.loads(line) for line in lines]
            wall = time.perf_counter() - t0
            row = {"k": k, "method": args.concurrent_method, "amp": args.concurrent_amp,
                   "median_step_s": statistics.median(r["step_s"] for r in results),
                   "aggregate_steps_per_s": sum(r["steps"] for r in results) / wall,
                   "process_gpu_mib_max": max((memory.get(p.pid, 0.0) for p in procs), default=0.0) or None,
                   "peak_reserved_mib_max": max((r["peak_reserved_mib"] or 0.0) for r in results) or None}
        except Exception as error:
            row = {"k": k, "method": args.concurrent_method, "amp": args.concurrent_amp, "error": f"{type(error).__name__}: {error}"}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        rows.append(row)
        print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
        _emit(args, {"part": "concurrent", "profile": args.profile, "device": _device_name(device), **row})
    return rows


def print_concurrent(rows: list[dict], args, device) -> None:
    total = None
    if device.type == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory / 2**20
    print(f"\n{_device_name(device)}; {args.concurrent_method} at profile {args.profile}, amp {args.concurrent_amp}: k processes "
          f"started together, {args.steps} steps each" + (f"; GPU memory {total:.0f} MiB" if total else ""))
    print("  (median step and steps/s: typical steps; GPU memory: with one NN-pool fill step and one logged step per process)")
    print(f"{'k':>3} {'median step':>12} {'steps/s (all)':>14} {'x k=1':>6} {'GPU MiB/process':>16} {'fit by memory':>14}")
    single = next((r["aggregate_steps_per_s"] for r in rows if r.get("k") == 1 and "error" not in r), None)
    for r in rows:
        if "error" in r:
            print(f"{r['k']:>3} FAILED: {r['error'][:160]}")
            continue
        per_process = r["process_gpu_mib_max"] or r["peak_reserved_mib_max"]
        fit = f"{int(total // per_process):>14d}" if total and per_process else f"{'-':>14}"
        speedup = f"{r['aggregate_steps_per_s'] / single:5.2f}x" if single else "     -"
        print(f"{r['k']:>3} {1e3 * r['median_step_s']:9.1f} ms {r['aggregate_steps_per_s']:14.1f} {speedup} "
              f"{(per_process or 0):13.0f} MiB {fit}")


def part_trace(args, device) -> None:
    """Where a step's time goes: the profiler's top operators and the synchronisations and launches per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    amp_dtype = _amp_dtype(args.amp[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for method in args.trace_methods:
        print(f"[trace] {method} (sparse, amp {args.amp[0]}) ...", file=sys.stderr, flush=True)
        bench = build(method, args.profile, "sparse", device=str(device), threads=args.threads)
        _steps(bench, 0, args.warmup, amp_dtype)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            _steps(bench, args.warmup, args.trace_steps, amp_dtype)
        wall = (time.perf_counter() - t0) / args.trace_steps
        events = prof.key_averages()
        counts = {name: sum(e.count for e in events if e.key == name) / args.trace_steps
                  for name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::nonzero",
                               "cudaLaunchKernel", "cuLaunchKernel", "cudaMemcpyAsync")}
        # kernels only: an operator's row repeats its kernels' device time as its own "self" time
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        device_total = sum(e.self_device_time_total for e in kernels) / args.trace_steps / 1e3
        print(f"\n{_device_name(device)}; {method} sparse at profile {args.profile}, amp {args.amp[0]}: {1e3 * wall:.1f} ms per "
              f"profiled step (profiler overhead included), GPU kernels {device_total:.1f} ms per step")
        print("per step: " + ", ".join(f"{name} {count:.0f}" for name, count in counts.items() if count))
        for key in (("self_device_time_total",) if device.type == "cuda" else ()) + ("self_cpu_time_total",):
            try:
                print(events.table(sort_by=key, row_limit=15, max_name_column_width=60))
            except Exception as error:  # a profiler API difference must not lose the counts above
                print(f"(no table sorted by {key}: {type(error).__name__}: {error})")
        _emit(args, {"part": "trace", "profile": args.profile, "device": _device_name(device), "method": method,
                     "amp": args.amp[0], "profiled_step_s": wall, "device_ms_per_step": device_total, "per_step": counts})
        del bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "paper"), default="paper",
                        help="problem size (the smoke profile trains 6 steps: too few to time)")
    parser.add_argument("--device", type=device_arg, default="cuda", help="cuda (default) or cpu (to check this script)")
    parser.add_argument("--steps", type=count_at_least(1), default=20)
    parser.add_argument("--warmup", type=count_at_least(0), default=3)
    parser.add_argument("--threads", type=count_at_least(1), default=1, help="CPU threads per process (torch.set_num_threads)")
    parser.add_argument("--amp", nargs="+", choices=("off", "bf16", "fp16"), default=["off", "bf16"],
                        help="precisions, one process each (fp16 with a GradScaler, as in training)")
    parser.add_argument("--representation", nargs="+", choices=("sparse", "dense"), default=["sparse", "dense"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--parts", nargs="+", choices=("steps", "concurrent", "trace"), default=["steps", "concurrent"])
    parser.add_argument("--trace-methods", nargs="+", choices=METHODS[:-len(PASSES)], default=["mona", "action"])
    parser.add_argument("--trace-steps", type=count_at_least(1), default=5)
    parser.add_argument("--concurrent", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--concurrent-method", choices=METHODS[:-len(PASSES)], default="mona")
    parser.add_argument("--concurrent-amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="cuDNN autotuning off (training turns it on)")
    parser.add_argument("--no-tf32", action="store_true", help="TF32 off for cuDNN convolutions and CUDA matrix products "
                        "(PyTorch allows it for convolutions by default)")
    parser.add_argument("--json", help="append every row to this file, one JSON object per line")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    device = args.device  # device_arg refused CUDA on a machine without it
    if device.type == "cuda":
        # as a trial on a GPU runs (medseg_platform/engine/trial.py), unless told otherwise
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
        if args.no_tf32:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.worker:
        worker(args, device)
        return
    if any(k < 1 for k in args.concurrent):
        parser.error("--concurrent: process counts must be >= 1")
    if "steps" in args.parts:
        if len(args.amp) > 1:  # one process per autocast setting: each gets a clean allocator and cuDNN cache
            for amp in args.amp:
                command = [sys.executable, __file__, *_without(sys.argv[1:], "--amp", "--parts"), "--amp", amp, "--parts", "steps"]
                if subprocess.run(command).returncode != 0:
                    print(f"[steps] amp {amp}: the process failed (its output is above)", file=sys.stderr, flush=True)
        else:
            print_steps(part_steps(args, device), args, device)
    if "concurrent" in args.parts:
        print_concurrent(part_concurrent(args, device), args, device)
    if "trace" in args.parts:
        part_trace(args, device)


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` minus each of ``flags`` and the values that follow it (up to the next option), or given inline
    (``--amp=off``)."""
    kept, skipping = [], False
    for item in argv:
        if item in flags:
            skipping = True
        elif item.partition("=")[0] in flags:
            skipping = False
        elif skipping and item.startswith("--"):
            skipping = False
            kept.append(item)
        elif not skipping:
            kept.append(item)
    return kept


if __name__ == "__main__":
    main()
