"""How often the claims' 95% interval covers the true difference, against a percentile bootstrap over cases and
seeds (what ``analysis/claims.py`` used before), on simulated studies.

Each simulated study draws paired differences ``d[case, seed] = seed effect + patient effect + frame effect +
noise`` (true mean 0) for 8 test patients x 2 frames (the quick phantom's test split) and 2, 3 or 5 seeds, under
several variance settings (Dice points), and counts the studies whose interval contains 0.

Run:  python benchmarks/bench_claims_coverage.py [--studies 800] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.significance import confidence_interval  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

PATIENTS, FRAMES = 8, 2
#: (seed, patient, frame, noise) standard deviations in Dice points
SETTINGS = ((5.0, 3.0, 1.0, 2.0), (0.5, 3.0, 1.0, 2.0), (5.0, 0.5, 1.0, 2.0), (2.0, 4.0, 2.0, 4.0))


def percentile_bootstrap(d: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """Cases and seeds drawn with replacement, the mean of the drawn cells, 2.5th / 97.5th percentiles."""
    rng = np.random.default_rng(seed)
    n_cases, n_seeds = d.shape
    cases = rng.integers(0, n_cases, size=(resamples, n_cases))
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    means = d[cases[:, :, None], seeds[:, None, :]].mean(axis=(1, 2))
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=count_at_least(1), default=800)
    parser.add_argument("--resamples", type=count_at_least(1), default=2000)
    args = parser.parse_args()
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(PATIENTS) for f in range(1, FRAMES + 1)]
    patient = np.repeat(np.arange(PATIENTS), FRAMES)
    print("seeds | sd seed / patient / frame / noise | bootstrap coverage (mean width) | t interval coverage (mean width)")
    for n_seeds in (2, 3, 5):
        for sd_seed, sd_patient, sd_frame, sd_noise in SETTINGS:
            rng = np.random.default_rng(0)
            hits, widths = np.zeros(2), np.zeros(2)
            for study in range(args.studies):
                d = (rng.normal(0, sd_seed, n_seeds)[None, :] + rng.normal(0, sd_patient, PATIENTS)[patient][:, None]
                     + rng.normal(0, sd_frame, len(cases))[:, None] + rng.normal(0, sd_noise, (len(cases), n_seeds)))
                for k, (low, high) in enumerate((percentile_bootstrap(d, args.resamples, study), confidence_interval(d, cases))):
                    hits[k] += low <= 0.0 <= high
                    widths[k] += high - low
            cover, width = hits / args.studies, widths / args.studies
            print(f"{n_seeds} | {sd_seed:g} / {sd_patient:g} / {sd_frame:g} / {sd_noise:g} | "
                  f"{cover[0]:.3f} ({width[0]:.1f}) | {cover[1]:.3f} ({width[1]:.1f})", flush=True)


if __name__ == "__main__":
    main()
