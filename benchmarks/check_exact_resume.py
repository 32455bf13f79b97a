"""Check by hand that a trial killed mid-run and rerun ends with the result files of an uninterrupted run.

For each method: ``medseg train METHOD --profile smoke --in-process`` once straight through, and once SIGKILLed as
soon as its first fine-tuning checkpoint exists (no clean-up of any kind), then rerun with the same command, which
resumes from that checkpoint (``docs/ray.md``, 'Resuming experiments'; the engine's RNG, optimiser, EMA teacher,
memory-bank and pool states are in it). Prints, per method, the step it resumed from and whether ``per_case.csv``,
``val_curve.csv`` and ``curves.csv`` (without its ``steps_per_s`` timing column) are byte-identical.

    python benchmarks/check_exact_resume.py                      # every method of the recipes
    python benchmarks/check_exact_resume.py mona action --work /tmp/resume

A trial that finishes before its first checkpoint is seen is reported as not interrupted and counts as a failure
(raise the steps with ``--steps``). Exit code 1 when any method was not interrupted or its files differ. A ``--work``
folder that already holds a method's runs is refused: the rerun would find finished trials and compare old files
with themselves.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medseg_platform.recipes import METHODS  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

COMPARED = ("per_case.csv", "val_curve.csv")


def train_command(method: str, results: Path, steps: int, val_every: int) -> list[str]:
    return [sys.executable, "-m", "analysis", "train", method, "--profile", "smoke", "--in-process", "--results-dir",
            str(results), "--set", f"optim.max_steps={steps}", "--set", f"eval.val_every={val_every}"]


def trial_folder(results: Path) -> Path | None:
    """The one trial folder under a run's results folder (None before it exists; an error if there are several)."""
    found = [p for p in results.glob("train-*/trials/*") if p.is_dir()]
    if len(found) > 1:
        raise SystemExit(f"{results}: {len(found)} trial folders, expected one (use an empty --work)")
    return found[0] if found else None


def curves_without_rate(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "steps_per_s"} for row in csv.DictReader(fh)]


def run(command: list[str], env: dict) -> None:
    """Run a training command; its output is shown only when it fails."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"medseg {' '.join(command[3:])}: exit code {done.returncode}")


def check(method: str, work: Path, steps: int, val_every: int, env: dict) -> dict:
    straight, killed = work / method / "straight", work / method / "killed"
    run(train_command(method, straight, steps, val_every), env)
    proc = subprocess.Popen(train_command(method, killed, steps, val_every), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    interrupted = False
    try:
        while proc.poll() is None:
            folder = trial_folder(killed)
            if folder is not None and (folder / "checkpoint" / "checkpoint.pt").is_file():
                proc.send_signal(signal.SIGKILL)
                interrupted = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not interrupted:
            proc.kill()
        proc.wait()
    run(train_command(method, killed, steps, val_every), env)
    a, b = trial_folder(straight), trial_folder(killed)
    result = json.loads((b / "result.json").read_text(encoding="utf-8"))
    same = {name: filecmp.cmp(a / name, b / name, shallow=False) for name in COMPARED}
    same["curves.csv w/o steps_per_s"] = curves_without_rate(a / "curves.csv") == curves_without_rate(b / "curves.csv")
    return {"method": method, "interrupted": interrupted, "resumed_from_step": result.get("resumed_from_step"),
            "identical": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", nargs="*", metavar="METHOD",
                        help=f"methods to check (default: all of {', '.join(METHODS)})")
    parser.add_argument("--steps", type=count_at_least(2), default=120, help="fine-tuning steps (default: 120)")
    parser.add_argument("--val-every", type=count_at_least(1), default=20,
                        help="validation (and checkpoint) interval, below --steps (default: 20)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if args.val_every >= args.steps:
        parser.error(f"--val-every {args.val_every} must be below --steps {args.steps}: the run is killed at its first "
                     "checkpoint, written at the first validation")
    methods = list(dict.fromkeys(args.methods or METHODS))
    held = [args.work / m for m in methods if args.work is not None and (args.work / m).exists() and any((args.work / m).iterdir())]
    if held:  # before any run: the rerun would find them finished and compare old files with themselves
        parser.exit(1, f"{held[0]} already holds runs: the rerun would find them finished and compare old files with "
                       "themselves (give an empty --work, or remove that folder)\n")
    work = args.work or Path(tempfile.mkdtemp(prefix="exact-resume-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    failed = False
    try:
        for method in methods:
            outcome = check(method, work, args.steps, args.val_every, env)
            failed |= not (outcome["interrupted"] and all(outcome["identical"].values()))
            print(json.dumps(outcome), flush=True)
    finally:
        print(f"runs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
