"""How much of a quick study's wall time is not training steps?

Runs ``studies/ablation_tailness.py`` (quick profile unless ``--smoke-test``) into a fresh temporary
results folder, then reads every trial's ``result.json`` timing and the study's ``last_run.json``:

* wall time of the command (Python start, Ray start, trials, tables);
* per trial: set-up (data, model), pretraining stages (run by the first trial that needs a stage, then
  cached), training steps, validation, checkpoints, test;
* "trial slots": wall time x concurrent trial slots (CPUs / CPUs per trial); the part of the slots not
  spent inside a trial's own work is Ray's overhead (start-up, actor start, scheduling, idle slots);
* per-iteration step time (median over trials of train_s / steps).

Run:  python benchmarks/bench_study_overhead.py [--smoke-test]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    from medseg_platform.results import LAST_RUN_FILE, scan_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "studies" / "ablation_tailness.py"), "--results-dir", tmp, "--no-dashboard"]
        if args.smoke_test:
            cmd.append("--smoke-test")
        start = time.perf_counter()
        # the study's progress lines and errors go to stderr: a failed study says why
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
        wall = time.perf_counter() - start
        study_dir = Path(tmp) / f"ablation_tailness-{'smoke' if args.smoke_test else 'quick'}"  # beside it: pretrain-cache/
        last = json.loads((study_dir / LAST_RUN_FILE).read_text())
        results = [record.result for record in scan_study(study_dir)[0]]
    cpus = os.cpu_count() or 1
    slots = max(1, int(cpus // last["cpus_per_trial"]))
    keys = ("setup_s", "pretrain_s", "train_s", "val_s", "checkpoint_s", "test_s", "total_s")
    sums = {k: sum(r["timing"].get(k, 0.0) for r in results) for k in keys}
    step_ms = statistics.median(1e3 * r["timing"]["train_s"] / r["config"]["optim"]["max_steps"] for r in results)
    slot_s = wall * slots
    print(f"study: {len(results)} trials, {slots} concurrent slots ({cpus} CPUs, {last['cpus_per_trial']} per trial), wall {wall:.1f} s")
    print(f"driver timing: {json.dumps({k: round(v, 2) for k, v in last['timing'].items()})}")
    for k in keys[:-1]:
        print(f"  {k:<13} {sums[k]:8.1f} s  ({100 * sums[k] / slot_s:5.1f}% of {slot_s:.0f} slot-s)")
    outside = slot_s - sums["train_s"]
    ray_overhead = slot_s - sums["total_s"]
    print(f"outside training steps: {outside:.1f} slot-s = {100 * outside / slot_s:.1f}%")
    print(f"Ray overhead (slots not inside a trial's work): {ray_overhead:.1f} slot-s = {100 * ray_overhead / slot_s:.1f}%")
    print(f"median step time: {step_ms:.1f} ms per iteration")


if __name__ == "__main__":
    main()
