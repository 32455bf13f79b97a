"""How often a table leaves a cell of a method as good as the best *unmarked* (reading "significantly worse"), under
the tables' marker rule (the seeds-and-patients interval, ``analysis.significance.confidence_interval``) and under the
rule it replaced (a Wilcoxon signed-rank test over cases on seed-averaged values, ``wilcoxon_test``).

Each simulated table has ``--rows`` methods of the same true quality, evaluated on P test patients x 2 frames with S
seeds: a case's value is ``difficulty[case] + run effect[row, seed] + noise[row, case, seed]`` (Dice points), where the
case difficulty is shared by every method, the run effect is one training run's (sd ``--run-sd`` list), and a patient's
two frames share part of their noise (sd 3 shared, 2 per frame). The best row (highest mean) is compared with every
other row; a correct 5%-level rule leaves about 5% of them unmarked (more, since the best is picked from the same data).

Run:  python benchmarks/bench_table_marker.py [--studies 400] [--rows 8] [--patients 8 20] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.significance import confidence_interval, wilcoxon_test  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402


def unmarked_shares(rows: int, patients: int, seeds: int, run_sd: float, studies: int, rng) -> tuple[float, float]:
    """(interval rule, Wilcoxon rule): the share of non-best cells each leaves unmarked (significantly worse)."""
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(patients) for f in (1, 2)]
    patient = np.repeat(np.arange(patients), 2)
    interval = wilcoxon = compared = 0
    for _ in range(studies):
        difficulty = rng.normal(70.0, 10.0, len(cases))
        values = np.empty((rows, len(cases), seeds))
        for r in range(rows):
            shared = rng.normal(0.0, 3.0, (patients, seeds))[patient]  # a patient's frames err together
            values[r] = difficulty[:, None] + rng.normal(0.0, run_sd, seeds)[None] + shared + rng.normal(0.0, 2.0, (len(cases), seeds))
        best = int(values.mean(axis=(1, 2)).argmax())
        for r in range(rows):
            if r == best:
                continue
            compared += 1
            low, high = confidence_interval(values[r] - values[best], cases)
            interval += low > 0.0 or high < 0.0  # an interval that cannot be formed (NaN) is no evidence, as in the tables
            wilcoxon += wilcoxon_test(values[r].mean(axis=1), values[best].mean(axis=1)).p_value < 0.05
    return interval / compared, wilcoxon / compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=count_at_least(1), default=400)
    parser.add_argument("--rows", type=count_at_least(2), default=8)
    parser.add_argument("--patients", type=count_at_least(2), nargs="+", default=[8, 20], help="test patients (an interval needs 2)")
    parser.add_argument("--seeds", type=count_at_least(1), nargs="+", default=[3])
    parser.add_argument("--run-sd", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    print(f"{args.studies} simulated tables per line, {args.rows} methods of equal quality; share of non-best cells left "
          "unmarked (read: significantly worse than the best)")
    print("patients x 2 frames | seeds | run sd (points) | interval (the tables' rule) | Wilcoxon over cases (before)")
    for patients in args.patients:
        for seeds in args.seeds:
            for run_sd in args.run_sd:
                new, old = unmarked_shares(args.rows, patients, seeds, run_sd, args.studies, rng)
                print(f"{patients:>19} | {seeds:>5} | {run_sd:>15g} | {new:>27.3f} | {old:>28.3f}", flush=True)


if __name__ == "__main__":
    main()
