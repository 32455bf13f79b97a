"""Loss-term ablation (ARCO Table 3; docs/published.md, 'ARCO ablations'): which of ARCO's terms help.

One ARCO (``--method``: ``arco_sg``, the default, or ``arco_sag``; ARCO Table 3 reports both) with one term left out
at a time, by its weight at 0: the pipeline of one ISD pretraining stage, then fine-tuning with the U2PL memory-bank
contrast and stratified sampling (docs/arco.md). A fine-tuning term at 0 is not computed; a pretraining term at 0 is
still computed without a gradient and its queue still advances, as released (docs/isd_pretraining.md):

* ``w/o L_unsup``: the pseudo-label loss on the strong view (ARCO Table 3);
* ``w/o L_global_inst`` / ``w/o L_local_inst``: the global / local instance-discrimination KL of the ISD pretraining
  stage (ARCO Table 3); each row trains its own stage;
* ``w/o L_eqv``: the TPS equivariance KL of the released code, which the ARCO paper's loss does not have
  (docs/mona.md, 'Equivariance loss'): this row trains the paper's terms, its L_nn as released (no gradient);
* ``MONA/ARCO pretraining + L_sup only``: every unlabelled fine-tuning term at 0 (contrast, pseudo-label, equivariance,
  nearest-neighbour): the pretrained network fine-tuned on the labelled patients alone, as the pipeline runs it
  (with the release's discarded student pass on the labelled copy, which moves BatchNorm's running statistics).
  The stage itself has an L_sup term on the labelled images (MONA's preset), so this row has seen the labels for
  the stage's steps too. Without a contrast term the sampler does nothing: the row is MONA's as much as ARCO's, and
  it is ARCO-SG's configuration whatever ``--method`` says, so a run of the other ARCO reuses its finished trials;
* ``Supervised only``: the same network from random initialisation, the reference row.

Not a row: "w/o L_nn" (ARCO Table 2's "w/o diversity"): as released L_nn has no gradient, so leaving it out changes
only what is logged (docs/mona.md, 'Nearest-neighbour loss').

Claims (ARCO Table 3, 1 patient): the method beats each of its rows without L_unsup, L_global_inst and
L_local_inst. The L_eqv and L_sup-only rows are there to measure, not to test a published claim: the papers report
none for them. Results go to ``ablation_losses-<method>-<profile>``, one folder per method.

Cost: ``quick`` 7 trials per seed at 1 labelled patient (21 with the profile's 3 seeds) and three 40-step pretraining
stages per seed: 255 s of study wall on the 2-core machine whose supervised quick step measures 14.6 ms, about as
long as ``ablation_tailness.py``; 778 s with ``--set optim.max_steps=750``, where every trial plateaued
(``benchmarks/RESULTS.md``, 'The loss terms at the quick profile', with both tables).
``--smoke-test``: the same rows at the smoke sizes.

    python studies/ablation_losses.py               # quick profile on the embedded phantom (CPU), ARCO-SG
    python studies/ablation_losses.py --method arco_sag
    python studies/ablation_losses.py --smoke-test  # tiny sizes, every row
    python studies/ablation_losses.py --profile paper --data-root /data/ACDC --address auto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.claims_spec import claim  # noqa: E402
from analysis.study_cli import run_study_main  # noqa: E402
from medseg_platform.recipes import METHOD_LABELS, MONA_UNLABELLED_WEIGHTS, method_overrides, without_term_label  # noqa: E402
from medseg_platform.study import Study  # noqa: E402
from medseg_platform.variants import VariantTable, with_objective_params, with_stage_params  # noqa: E402
from medseg_platform.study_flags import study_fractions, study_parser  # noqa: E402

#: The methods ARCO Table 3 ablates, and the default of ``--method``.
METHODS = ("arco_sg", "arco_sag")
DEFAULT_METHOD = "arco_sg"
LABELLED = ("1",)  # patients: ARCO Table 3's fraction
#: Fine-tuning terms left out one at a time: (term as the row names it, objective parameter set to 0).
FINE_TUNING_TERMS = (("L_unsup", "unsup_weight"), ("L_eqv", "eqv_weight"))
#: Pretraining-stage terms left out one at a time: (term as the row names it, stage parameter set to 0).
PRETRAINING_TERMS = (("L_global_inst", "global_weight"), ("L_local_inst", "local_weight"))
SUP_ONLY_LABEL = "MONA/ARCO pretraining + L_sup only"
#: The terms whose removal ARCO Table 3 reports (a claim each).
PUBLISHED_TERMS = ("L_unsup", "L_global_inst", "L_local_inst")


def claims(method: str = DEFAULT_METHOD) -> list[dict]:
    """ARCO Table 3: the full ``method`` beats each of its rows without a term the table ablates, at 1 patient."""
    return [claim(METHOD_LABELS[method], without_term_label(method, term), "1",
                  f"ARCO Table 3: removing {term} lowers Dice at 1 patient") for term in PUBLISHED_TERMS]


def build(args, profile, base):
    method = getattr(args, "method", None) or DEFAULT_METHOD
    released = method_overrides(method, profile)
    arco = METHOD_LABELS[method]
    table = VariantTable(base)
    table.add(arco, released, variant=arco)
    for term, weight in FINE_TUNING_TERMS:
        table.add(without_term_label(method, term), with_objective_params(released, **{weight: 0.0}), variant=arco)
    for term, weight in PRETRAINING_TERMS:
        table.add(without_term_label(method, term), with_stage_params(released, 0, **{weight: 0.0}), variant=arco)
    # without an unlabelled term the sampler is unused: one configuration (ARCO-SG's) for every --method
    sup_only = with_objective_params(method_overrides(DEFAULT_METHOD, profile), **{w: 0.0 for w in MONA_UNLABELLED_WEIGHTS})
    table.add(SUP_ONLY_LABEL, sup_only, variant=arco)
    table.add(METHOD_LABELS["supervised"], method_overrides("supervised", profile))
    labelled = study_fractions(args, LABELLED)  # ARCO Table 3's fraction, unless --labelled says otherwise
    # one folder per method: the other ARCO's ablation keeps its files
    return Study(name=f"ablation_losses-{method}", base=base, results_dir=Path(args.results_dir), variants=table.variants(),
                 grid={"data.labelled": list(labelled)}, claims=claims(method))


def parser():
    p = study_parser(__doc__, "ablation_losses", folder="ablation_losses-<method>-<profile>", labelled_default=LABELLED)
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help=f"the ARCO whose terms are left out (default: {DEFAULT_METHOD})")
    return p


def main(argv=None) -> int:
    return run_study_main(__doc__, "ablation_losses", build, argv=argv, parser=parser())


if __name__ == "__main__":
    raise SystemExit(main())
