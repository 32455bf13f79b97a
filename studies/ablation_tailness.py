"""The "tailness" ablation (ARCO Table 2, methods-spec §6.3): methods x label fractions, per class.

Rows: supervised-only and mean teacher (the baselines every table has). MONA, ARCO-SG/SAG and ACTION,
each with and without its contrastive term, join when the methods issue lands. Columns: the label
fractions of the profile (patients). Per-class results keep the rare (tail) class, RV, visible.

    python studies/ablation_tailness.py               # quick profile on the embedded phantom (CPU)
    python studies/ablation_tailness.py --smoke-test  # tiny, about a minute
    python studies/ablation_tailness.py --profile paper --data-root /data/ACDC --address auto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.profiles import run_study_main  # noqa: E402
from medseg_platform.study import Study, Variant  # noqa: E402


def build(args, profile, base):
    steps = base.optim.max_steps
    variants = [
        Variant({"row": "Supervised only", "order": 0}, {"objective": "supervised"}),
        Variant({"row": "Mean teacher", "order": 1}, {"objective": "mean_teacher", "objective_params": {"rampup_steps": steps}}),
    ]
    return Study(name="ablation_tailness", base=base, results_dir=Path(args.results_dir), variants=variants,
                 grid={"data.labelled": list(profile.labelled)})


if __name__ == "__main__":
    raise SystemExit(run_study_main(__doc__, "ablation_tailness", build))
