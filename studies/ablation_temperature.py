"""Temperature ablation: the pixel-contrast temperature and the ISD pretraining temperatures tau_s / tau_t.

One factor at a time around the released setting (docs/overview.md, 'Ablation axes and released values'),
1 labelled patient (the ARCO ablations' setting, docs/published.md, 'ARCO ablations'), as a table with one row
per setting:

* pixel-contrast temperature ``objective_params.temperature`` (released 0.5 in MONA/ARCO's U2PL contrast
  and ACTION's anatomical contrast): ARCO-SG and ACTION rows at 0.07 (ACTION++'s supervised-contrast
  temperature), 0.1, 0.5 and 1.0 (ACTION++'s cosine schedule runs 0.1 -> 1.0);
* ISD temperatures of ARCO-SG's pretraining stage (the MONA preset: tau_s = tau_t = 0.1, the MONA code
  defaults): tau_t in 0.01 (ARCO/ACTION on ACDC), 0.1, 0.6 (the released LA setting); tau_s in 0.07
  (ACTION++), 0.1, 0.2.

The released setting (ARCO-SG, tau = 0.5, tau_s = tau_t = 0.1) is one row shared by all three axes, first among
ARCO-SG's rows and labelled with all three values ("ARCO-SG, released: τ = 0.5, ISD τ_t = 0.1, τ_s = 0.1"); every
other row changes one value. Rows carry ``tags["axes"]`` (``objective_params.temperature``,
``isd.tau_student``, ``isd.tau_teacher``) and ``tags["variant"]`` (the method: one plot line per method).
Each ISD setting trains its own pretraining stage; rows with the same stage share it through the cache.

Cost: ``quick`` 12 trials per seed (8 ARCO-SG, 4 ACTION; 5 ARCO-SG pretraining stages, the released one and one per other ISD value, and ACTION's 2) and the
profile's 3 seeds, so 36 trials. One seed took 549 s on 2 cores with an earlier quick profile of 300 / 80 steps
(``benchmarks/RESULTS.md``, 'The main study end to end'); the 3 seeds of today's profile were not timed (expect
about three times that; ``--seeds 1`` runs one seed). ``--smoke-test`` uses two values per axis (6 trials);
``paper`` the quick values at the paper's sizes, 3 seeds.

    python studies/ablation_temperature.py               # quick profile on the embedded phantom (CPU)
    python studies/ablation_temperature.py --smoke-test  # tiny sizes, two values per axis
    python studies/ablation_temperature.py --profile paper --data-root /data/ACDC --address auto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analysis.study_cli import run_study_main  # noqa: E402
from medseg_platform.recipes import METHOD_LABELS, method_overrides  # noqa: E402
from medseg_platform.study import Study  # noqa: E402
from medseg_platform.variants import VariantTable, with_objective_params, with_stage_params  # noqa: E402
from medseg_platform.study_flags import study_fractions  # noqa: E402

#: Axis values per profile (the released values must be among them: that row is shared by every axis).
PIXEL_TEMPERATURE = {"smoke": (0.1, 0.5), "quick": (0.07, 0.1, 0.5, 1.0), "paper": (0.07, 0.1, 0.5, 1.0)}
ISD_TAU_TEACHER = {"smoke": (0.01, 0.1), "quick": (0.01, 0.1, 0.6), "paper": (0.01, 0.1, 0.6)}
ISD_TAU_STUDENT = {"smoke": (0.07, 0.1), "quick": (0.07, 0.1, 0.2), "paper": (0.07, 0.1, 0.2)}
PIXEL_METHODS = ("arco_sg", "action")  # the two contrast families: U2PL memory bank, ACTION's relation graph
ISD_METHOD = "arco_sg"  # one ISD stage (MONA preset), shared by MONA and both ARCOs
LABELLED = "1"  # patients; the ARCO ablations use 1 labelled patient


def build(args, profile, base):
    table = VariantTable(base)  # merges the rows that are the released setting into one
    label, released = METHOD_LABELS[ISD_METHOD], method_overrides(ISD_METHOD, profile)
    config = table.resolved(released)  # the three axes' released rows merge into this one (the pixel axis's overrides: its key)
    table.add(released_label(label, config), with_objective_params(released, temperature=config["objective_params"]["temperature"]),
              variant=label)
    for method in PIXEL_METHODS:
        label, released = METHOD_LABELS[method], method_overrides(method, profile)
        for tau in PIXEL_TEMPERATURE[profile.name]:
            table.add(f"{label}, τ = {tau:g}", with_objective_params(released, temperature=tau), variant=label,
                      axes={"objective_params.temperature": tau})
    label, released = METHOD_LABELS[ISD_METHOD], method_overrides(ISD_METHOD, profile)
    for field, values, symbol in (("tau_teacher", ISD_TAU_TEACHER, "τ_t"), ("tau_student", ISD_TAU_STUDENT, "τ_s")):
        for tau in values[profile.name]:
            table.add(f"{label}, ISD {symbol} = {tau:g}", with_stage_params(released, 0, **{field: tau}), variant=label,
                      axes={f"isd.{field}": tau})
    return Study(name="ablation_temperature", base=base, results_dir=Path(args.results_dir), variants=table.variants(),
                 grid={"data.labelled": list(study_fractions(args, (LABELLED,)))})


def released_label(method_label: str, config: dict) -> str:
    """The row label of the released setting, which every axis shares: its pixel-contrast and ISD temperatures."""
    isd = config["pretrain"][0]["objective_params"]
    return (f"{method_label}, released: τ = {config['objective_params']['temperature']:g}, "
            f"ISD τ_t = {isd['tau_teacher']:g}, τ_s = {isd['tau_student']:g}")


def main(argv=None) -> int:
    return run_study_main(__doc__, "ablation_temperature", build, argv=argv, labelled_default=(LABELLED,))


if __name__ == "__main__":
    raise SystemExit(main())
