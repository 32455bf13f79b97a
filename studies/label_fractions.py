"""The main comparison (docs/published.md, 'ARCO Table 1'): every method at 1, 3 and 7 labelled patients.

Laid out like ARCO Table 1: rows are the methods (supervised on all labels = ARCO's "UNet-F", supervised
on the labelled patients only = "UNet-L", mean teacher, MONA, ARCO-SG, ARCO-SAG, ACTION), columns the label
fractions as patients and percent of the training patients (on ACDC 1 / 3 / 7 of 70 patients = the
published "1% / 5% / 10%"), each split into RV / Myo / LV / Avg. Full supervision is its own column
("100%"): only the fully supervised row has a value there (ARCO repeats that one number in every column).
The semi-supervised methods need unlabelled images, so they have no "100%" run.

The per-fraction rows are variants (``data.labelled`` in their overrides, ``tags["axes"]["data.labelled"]``
as a grid axis would record it) because the full-supervision row must not be crossed with the fractions.
Pretraining stages are cached per chain, label fraction and seed (MONA and both ARCOs share theirs).

Fractions per profile: ``paper`` and ``quick`` 1 / 3 / 7 patients (on the quick phantom's 28 training
patients that is 4% / 11% / 25%), ``--smoke-test`` 1 patient (plus full supervision). ``--labelled`` picks others,
below 100% (full supervision is always its own row).

Cost: ``quick`` 19 trials per seed (6 methods x 3 fractions + 1), 3 seeds, trained for
``QUICK_FRACTION_STEPS`` (750) fine-tuning steps instead of the profile's 250: at 250 and 500 steps supervised-only
did not yet improve with more labelled patients, at 750 it did with the earlier UNet up-path; with the released one
it rose from 1 to 3 patients on every seed but not from 3 to 7 in the mean on an Intel Xeon, where one seed's model
selection picked a noisy validation peak, and from 1 to 3 to 7 on every seed on an AMD EPYC
(``medseg_platform/profiles.py``). About 35 minutes measured on 2 cores where the supervised quick step is 17 ms (its
``--dry-run`` estimated 40; ``--seeds 1`` for a third of that). ``paper``: 3 seeds, sized
for a GPU cluster.

    python studies/label_fractions.py               # quick profile on the embedded phantom (CPU)
    python studies/label_fractions.py --smoke-test  # tiny sizes, 1 patient + full supervision
    python studies/label_fractions.py --profile paper --data-root /data/ACDC --address auto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.claims_spec import claim  # noqa: E402
from medseg_platform.data.splits import canonical_fraction  # noqa: E402
from medseg_platform.errors import ConfigError  # noqa: E402
from medseg_platform.overrides import parse_set_options  # noqa: E402
from analysis.study_cli import run_study_main  # noqa: E402
from medseg_platform.profiles import QUICK_FRACTION_STEPS, with_steps  # noqa: E402
from medseg_platform.recipes import FULL_SUPERVISION_LABEL, METHOD_LABELS, PAPER_METHODS, method_overrides  # noqa: E402
from medseg_platform.study import Study  # noqa: E402
from medseg_platform.variants import VariantTable  # noqa: E402
from medseg_platform.study_flags import study_fractions  # noqa: E402

FRACTIONS = {"smoke": ("1",), "quick": ("1", "3", "7"), "paper": ("1", "3", "7")}  # labelled patients
FULL = "100%"


def claims(fractions) -> list[dict]:
    """ARCO Table 1's claims at the profile's fractions: supervised-only improves with every step up in
    labelled patients, and every semi-supervised method beats supervised-only at each fraction."""
    supervised = METHOD_LABELS["supervised"]
    out = [claim(supervised, supervised, more, "ARCO Table 1: supervised-only (UNet-L) improves with more labelled patients",
                 b_column=fewer) for fewer, more in zip(fractions, fractions[1:])]
    out += [claim(METHOD_LABELS[m], supervised, fraction, "ARCO Table 1: every semi-supervised method beats supervised-only "
                  "(UNet-L) at each label fraction") for fraction in fractions for m in PAPER_METHODS if m != "supervised"]
    return out


def build(args, profile, base):
    # 3 and 7 patients need more steps than the profile's 1-patient schedule (see profiles); --set optim.max_steps wins,
    # also when it gives the profile's own step count (the schedules derived below then follow it)
    if profile.name == "quick" and "optim.max_steps" not in parse_set_options(getattr(args, "overrides", None)):
        profile = with_steps(profile, QUICK_FRACTION_STEPS)
        base = base.replace(**{"optim.max_steps": QUICK_FRACTION_STEPS})
    table = VariantTable(base)
    # rows in ARCO Table 1's order: the upper bound first, then the methods (PAPER_METHODS order)
    fractions = study_fractions(args, FRACTIONS[profile.name])  # --labelled, else the profile's
    full = [f for f in fractions if canonical_fraction(f) == FULL]
    if full:  # its supervised-only trial is the full-supervision row's: the claims then read a row that has no 100% cell
        raise ConfigError(f"--labelled {full[0]}: this study trains full supervision as its own row "
                          f"({FULL_SUPERVISION_LABEL!r}, column {FULL}); give the fractions below it")
    table.add(FULL_SUPERVISION_LABEL, {**method_overrides("supervised", profile), "data.labelled": FULL}, axes={"data.labelled": FULL})
    for method in PAPER_METHODS:
        for fraction in fractions:
            table.add(METHOD_LABELS[method], {**method_overrides(method, profile), "data.labelled": fraction},
                      axes={"data.labelled": fraction})
    return Study(name="label_fractions", base=base, results_dir=Path(args.results_dir), variants=table.variants(),
                 claims=claims(fractions))


def main(argv=None) -> int:
    return run_study_main(__doc__, "label_fractions", build, argv=argv, labelled_default=FRACTIONS)


if __name__ == "__main__":
    raise SystemExit(main())
