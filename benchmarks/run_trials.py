"""Train single configurations in-process (no Ray) and print one JSON line each: the measurements behind the
quick profile (``medseg_platform/profiles.py``, ``benchmarks/RESULTS.md`` "The quick profile").

Each run is ``METHOD LABELLED SEED [KEY=VALUE ...]``: a table row of ``medseg_platform.recipes.METHODS`` at a
label fraction and seed, on the quick profile, with dotted config overrides (``optim.lr=0.1``,
``objective_params.sup_weight=1.0``, ``pretrain=[]`` for random initialisation) and profile overrides
(``P.phantom.patients=40``, ``P.pretrain_steps=40``). As with a study's ``--set``, the config-section overrides
also reach the profile, so that what :func:`~medseg_platform.recipes.method_overrides` derives follows them: the
schedules from ``optim.max_steps``, the ISD stages' sizes from ``data.patch_size``. Values are JSON where they
parse as JSON.
Runs come from the command line (one run) or, with ``--file F``, one run per line of ``F``; ``--jobs 2``
runs two at a time (one torch thread each). Pretraining stages are cached under ``--work``.

    python benchmarks/run_trials.py supervised 1 1 optim.lr=0.1
    python benchmarks/run_trials.py --file runs.txt --jobs 2 > results.jsonl

Output per run: name, overrides, wall seconds, the trial's timing, the best validation step, the validation
curve and the test Dice (%) per class and averaged (NaN-aware means over cases, as the tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medseg_platform.study_flags import count_at_least  # noqa: E402


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(words: list[str], work: Path) -> dict:
    """Train one configuration (see the module docstring) and return its summary."""
    from medseg_platform.engine import train_trial
    from medseg_platform.overrides import STUDY_FLAG_KEYS, config_fields
    from medseg_platform.profiles import PROFILES, profile_with_overrides
    from medseg_platform.recipes import method_overrides
    from medseg_platform.results import PRETRAIN_CACHE_DIR, test_means, trial_folder
    from medseg_platform.study_flags import resolve_data_root

    method, labelled, seed, *pairs = words
    overrides, sections, sizes, phantom = {}, {}, {}, {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key.startswith("P.phantom."):
            phantom[key[len("P.phantom."):]] = _value(text)
        elif key.startswith("P."):
            sizes[key[2:]] = _value(text)
        else:
            overrides[key] = _value(text)
            if "." in key and key in config_fields() and key not in STUDY_FLAG_KEYS:
                sections[key] = text
    profile = PROFILES["quick"]
    profile = dataclasses.replace(profile, phantom={**profile.phantom, **phantom},
                                  methods=dataclasses.replace(profile.methods, **sizes))
    # as a study's --set: what the recipes derive (schedules from the steps, ISD sizes from the patch) follows
    profile = profile_with_overrides(profile, sections)
    root = resolve_data_root(argparse.Namespace(data_root=None), profile)
    config = {**method_overrides(method, profile), "data.labelled": labelled, "seed": int(seed), **overrides}
    cfg = profile.trial.replace(**{"data.root": str(root)}).replace(**config)
    name = "-".join([method, f"l{labelled}", f"s{seed}", *(p.replace("/", "_") for p in pairs)])
    start = time.perf_counter()
    outcome = train_trial(cfg, trial_folder(work, name), log=lambda msg: None, pretrain_cache=work / PRETRAIN_CACHE_DIR)
    means = test_means(outcome.test_rows)
    if outcome.resumed_from_step:  # its timing sums the attempts up to the checkpoint; its wall_s is this attempt's alone
        print(f"warning: {name} resumed at step {outcome.resumed_from_step} from {trial_folder(work, name)}; its wall_s is this "
              "run's alone (its timing adds the earlier attempts' up to the checkpoint; delete the folder or use another "
              "--work to measure a whole run)", file=sys.stderr, flush=True)
    return {"name": name, "method": method, "labelled": labelled, "seed": int(seed), "overrides": pairs,
            "resumed_from_step": outcome.resumed_from_step,
            "wall_s": round(time.perf_counter() - start, 1), "timing": {k: round(v, 1) for k, v in outcome.timing.items()},
            "best_step": outcome.best_step, "val_dice": [round(r["val_dice"], 3) for r in outcome.val_curve],
            "test_dice": {k: round(100 * v["dice"], 1) for k, v in means.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="*", help="METHOD LABELLED SEED [KEY=VALUE ...]")
    parser.add_argument("--file", type=Path, help="one run per line")
    parser.add_argument("--jobs", type=count_at_least(1), default=1, help="runs at a time, each in its own process")
    parser.add_argument("--work", type=Path, default=Path("results/run_trials"), help="trial folders and the pretraining cache")
    args = parser.parse_args(argv)
    runs = ([shlex.split(line) for line in args.file.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
            if args.file else [args.run])  # a line starting with # is a comment
    if not runs or any(len(r) < 3 for r in runs):
        parser.error("give METHOD LABELLED SEED [KEY=VALUE ...] (or --file with one such run per line)")
    if len(runs) == 1 and args.jobs == 1:
        import torch

        from medseg_platform.errors import MedsegError

        torch.set_num_threads(1)
        try:
            print(json.dumps(run_one(runs[0], args.work)), flush=True)
        except MedsegError as exc:  # a bad method, fraction or KEY=VALUE: one line, as the study commands print it
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    command = [sys.executable, __file__, "--work", str(args.work)]
    failed = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # one process per run: torch threads and RSS stay separate
        for words, result in zip(runs, pool.map(lambda words: subprocess.run([*command, "--", *words], capture_output=True, text=True), runs)):
            if result.returncode == 0:
                sys.stdout.write(result.stdout)
            else:
                failed += 1
                last = (result.stderr.strip().splitlines() or [f"failed with exit code {result.returncode}"])[-1]
                print(f"run {' '.join(words)!r} failed: {last}", file=sys.stderr)
            sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(runs)} run(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
