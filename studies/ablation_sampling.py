"""Sampling ablation (ARCO Table 8; docs/arco.md, 'Sampler interface'): sampler x groups x anchors/negatives.

The MONA/ARCO pipeline (one shared ISD pretraining stage, U2PL memory-bank contrast) with

* the sampler of the anchor and negative draws: uniform (NS = MONA), stratified group (SG = ARCO-SG),
  stratified-antithetic group (SAG = ARCO-SAG);
* the group count of SG/SAG: 9, 16 (released) or 25 strata (the ARCO paper's Table 7 values). NS has no
  groups: it gets one row per anchor setting, not one per group count (no duplicate trials);
* anchors per class x negatives per anchor, scaled together: half and all of the profile's sizes
  (quick 32 x 64 and 64 x 128; paper 128 x 256 and the released 256 x 512).

Rows (``tags["row"]``) name all three; ``tags["variant"]`` is the method that uses the row's sampler (MONA for NS,
ARCO-SG for SG, ARCO-SAG for SAG: the plots draw one line per sampler and value of the other axis, in that method's
colour, and the rows in shades of it) and ``tags["axes"]`` holds ``objective_params.sampler_groups`` (SG/SAG)
and ``objective_params.num_anchors``. Columns: the label fractions (quick 1 patient; paper 1/3/7 patients as
in ARCO Table 8).

Cost: ``quick`` 14 trials per seed (2 NS + 6 SG + 6 SAG) at 1 labelled patient sharing one pretraining stage,
and the profile's 3 seeds, so 42 trials. One seed took 470 s on 2 cores with an earlier quick profile of 300 / 80
steps (``benchmarks/RESULTS.md``, 'The main study end to end'); the 3 seeds of today's profile were not timed
(expect about three times that; ``--seeds 1`` runs one seed). ``--smoke-test``: 9 and 16 groups, the smoke
profile's sizes only (5 trials).

    python studies/ablation_sampling.py               # quick profile on the embedded phantom (CPU)
    python studies/ablation_sampling.py --smoke-test  # tiny sizes, two group counts, one size
    python studies/ablation_sampling.py --profile paper --data-root /data/ACDC --address auto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.claims_spec import claim  # noqa: E402
from analysis.study_cli import run_study_main  # noqa: E402
from medseg_platform.recipes import METHOD_LABELS, SAMPLER_METHODS, method_overrides  # noqa: E402
from medseg_platform.study import Study  # noqa: E402
from medseg_platform.variants import VariantTable, with_objective_params  # noqa: E402
from medseg_platform.study_flags import study_fractions  # noqa: E402

#: (sampler, row prefix); a row's plot line is the method that uses its sampler (``SAMPLER_METHODS``), so it keeps
#: that method's colour
SAMPLERS = (("uniform", "NS (MONA)"), ("stratified", "SG"), ("stratified_antithetic", "SAG"))
GROUPED = {"stratified", "stratified_antithetic"}  # the samplers that use sampler_groups
GROUPS = {"smoke": (9, 16), "quick": (9, 16, 25), "paper": (9, 16, 25)}
SIZE_SCALES = {"smoke": (1.0,), "quick": (0.5, 1.0), "paper": (0.5, 1.0)}  # x the profile's anchors and negatives
LABELLED = {"smoke": ("1",), "quick": ("1",), "paper": ("1", "3", "7")}


def claims(profile) -> list[dict]:
    """ARCO Table 8 (ARCO framework, 1%): SG and SAG (16 groups, the released sizes) beat uniform sampling (NS = MONA)."""
    sizes = f"{profile.methods.anchors} anchors x {profile.methods.negatives} negatives"
    return [claim(f"{name}, 16 groups, {sizes}", f"NS (MONA), {sizes}", "1", "ARCO Table 8 (its ARCO rows are Table 1's "
                  "numbers): stratified sampling beats uniform sampling (NS) at 1 patient",
                  published_rows=(METHOD_LABELS[SAMPLER_METHODS[sampler]], METHOD_LABELS["mona"]))
            for sampler, name in SAMPLERS if sampler != "uniform"]


def build(args, profile, base):
    table = VariantTable(base)
    released = method_overrides("arco_sg", profile)  # the MONA/ARCO pipeline; the sampler is set per row
    for sampler, name in SAMPLERS:
        for scale in SIZE_SCALES[profile.name]:
            anchors = max(1, round(profile.methods.anchors * scale))
            negatives = max(1, round(profile.methods.negatives * scale))
            sizes = f"{anchors} anchors x {negatives} negatives"
            for groups in GROUPS[profile.name] if sampler in GROUPED else (None,):
                params = {"sampler": sampler, "num_anchors": anchors, "num_negatives": negatives}
                axes = {"objective_params.num_anchors": anchors}
                if groups is not None:
                    params["sampler_groups"] = groups
                    axes["objective_params.sampler_groups"] = groups
                row = f"{name}, {groups} groups, {sizes}" if groups is not None else f"{name}, {sizes}"
                table.add(row, with_objective_params(released, **params), variant=METHOD_LABELS[SAMPLER_METHODS[sampler]], axes=axes)
    return Study(name="ablation_sampling", base=base, results_dir=Path(args.results_dir), variants=table.variants(),
                 grid={"data.labelled": list(study_fractions(args, LABELLED[profile.name]))}, claims=claims(profile))


def main(argv=None) -> int:
    return run_study_main(__doc__, "ablation_sampling", build, argv=argv, labelled_default=LABELLED)


if __name__ == "__main__":
    raise SystemExit(main())
