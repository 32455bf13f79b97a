"""How true the progress lines' ETA is: runs a study script as its user would, notes the ETA of every progress line
(``medseg_platform.progress.ProgressCallback``) with the time it was printed, and at the end prints each ETA beside
the time that was really left, and their ratio (1.00: exact; the first lines price objectives no trial ran yet by
their priors in ``medseg_platform.step_costs.STEP_COST``). The study writes its results as usual: give it a
``--results-dir`` of its own (and an empty one, or finished trials are skipped and price nothing).

Run:  python benchmarks/eta_accuracy.py studies/ablation_tailness.py [--profile smoke] --results-dir /tmp/eta --no-dashboard
"""

from __future__ import annotations

import re
import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_platform import progress  # noqa: E402

_ETA = re.compile(r"ETA (?P<value>[0-9.]+) (?P<unit>s|min|h)\)")
_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def main() -> int:
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".py"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    lines: list[tuple[float, str, float | None]] = []  # (time printed, what, ETA in seconds)
    printed = progress.ProgressCallback._print

    def noting(self, msg: str) -> None:
        printed(self, msg)
        match = _ETA.search(msg)
        eta = float(match["value"]) * _SECONDS[match["unit"]] if match else None
        lines.append((time.monotonic(), msg.split(" (")[0], eta))

    progress.ProgressCallback._print = noting
    script, sys.argv = sys.argv[1], sys.argv[1:]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            print(f"the study exited with {exit_.code}: no accuracy to report", file=sys.stderr)
            return int(exit_.code) if isinstance(exit_.code, int) else 1
    if not lines:
        print("no progress line was printed (every trial finished before?)", file=sys.stderr)
        return 1
    end, start = lines[-1][0], lines[0][0]
    print(f"\nETA against the time left ({end - start:.1f} s from the first progress line to the last):")
    print(f"{'elapsed s':>9} | {'ETA s':>7} | {'left s':>7} | {'ETA / left':>10} | line")
    for at, what, eta in lines:
        if eta is None or at >= end:
            continue
        left = end - at
        print(f"{at - start:9.1f} | {eta:7.1f} | {left:7.1f} | {eta / left:10.2f} | {what[:70]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
