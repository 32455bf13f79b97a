"""Hyper-parameter search: Optuna TPE with ASHA early stopping over loss weights and thresholds.

One method (``--method``, default ARCO-SAG) at 1 labelled patient (ARCO App. N searched on ACDC 1%), one
seed, ``num_samples`` samples (``--num-samples``; smoke 3, quick 16, paper 40). Optuna's TPE proposes, ASHA
(``Study(asha=True)``: time = reports, one per validation; grace period 1 and reduction factor 4 put its
rungs at the 1st, 4th, 16th ... report, none on a sample's last validation, so quick (10 validations, every 25 steps)
stops the weak samples after their 1st or 4th validation, at step 25 or 100, and paper (30) also after the 16th) stops
the weak samples early; model selection uses the val split only. Search
spaces (App. N's grids: docs/published.md, 'ARCO ablations'; released values: docs/overview.md, 'Ablation axes and
released values'):

* MONA / ARCO-SG / ARCO-SAG: ``contrast_weight`` λ1 log-uniform over [0.001, 1] (App. N's grid {0.001, 0.005,
  0.01, 0.05, 0.1, 1.0}), ``unsup_weight`` λ2 and ``eqv_weight`` (the released code's k2 L_eqv) log-uniform
  over [0.1, 10] (App. N's grid {0.1, 0.2, 0.5, 1, 2, 10} for λ2 and λ3, applied here to λ2 and, in λ3's place, to k2), the pseudo-label threshold
  ``unsup_threshold`` in [0.85, 0.99] (released 0.97) and the U2PL anchor threshold ``anchor_threshold`` δ_p
  in [0.1, 0.5] (released 0.3). λ3 (``nn_weight``) is not searched: with the released
  ``nn_loss_grad="as_coded_none"`` L_nn has no gradient, so its weight changes nothing (docs/mona.md,
  'Nearest-neighbour loss');
* ACTION: ``anco_weight`` [0.001, 1], ``unsup_weight`` [0.1, 10] (log), ``unsup_threshold`` and the hard-query
  threshold ``hard_query_threshold`` in [0.85, 0.99] (both released 0.97);
* mean teacher: ``consistency_weight`` [0.01, 10] (log; released 0.1), ``ema_momentum`` in [0.9, 0.999].

The domains are continuous ranges spanning App. N's grids rather than the grids themselves: with a
categorical space, Optuna can propose the same configuration twice, and the second sample would teach it nothing (it is
scored from the first's checkpoint once that has finished, or trains the same steps again).

Outputs besides the usual tables (which average all completed samples in one row: read them as "the
search's samples", not as a method result): ``search_history.csv`` (every sample in proposal order:
sampled values, status ``completed`` / ``stopped early`` / ``errored`` / ``unfinished`` (a stop ended the run
while it trained: a rerun resumes it) / ``result missing``, ``best_val_dice``, ``test_dice``)
and ``best_config.json`` (the completed sample with the best validation Dice), both in the study folder
``hparam_search-<method>-<profile>`` (one per method, so a search of another method keeps this one's files; a
search started before this naming, in ``hparam_search-<profile>``, resumes with ``--name hparam_search-<profile>``);
the best configuration is also printed. A stopped search (Ctrl-C) exits 1 and prints its best configuration "so
far"; rerunning the same command (with the same ``--optuna-storage``, if any) resumes it. A search cannot grow in
place: a larger ``--num-samples`` under a new ``--name`` proposes the same first samples (Optuna's sampler is seeded with
the study's first seed; TPE's first 10 proposals are random draws from that seed, later ones depend on the results told
so far) and scores those this search completed from their checkpoints instead of training them (those ASHA stopped
keep the checkpoint of their last validation, in their sample folder and in Tune's experiment, which nothing reuses:
they train again). See :mod:`analysis.search`.

Cost: ``quick`` 16 samples of ARCO-SAG sharing one ISD pretraining stage: 140 s measured on 2 cores, ASHA
stopping 13 of the 16 at step 25 or 100 (``benchmarks/RESULTS.md``); about 6 minutes if none were stopped
(16 x 250 ARCO steps of about 0.16 s on 2 slots). ``paper``: one seed (the profile's first, or
``--seeds S``), 40 samples.

    python studies/hparam_search.py                          # quick profile, ARCO-SAG
    python studies/hparam_search.py --method action --num-samples 30
    python studies/hparam_search.py --smoke-test             # tiny sizes, 3 samples
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.errors import ConfigError  # noqa: E402
from analysis.study_cli import run_study_main  # noqa: E402
from medseg_platform.recipes import METHOD_LABELS, method_overrides  # noqa: E402
from medseg_platform.results import STUDY_FILE  # noqa: E402
from medseg_platform.study_flags import study_parser  # noqa: E402
from medseg_platform.study import Study, Variant  # noqa: E402
from medseg_platform.study_flags import study_fractions  # noqa: E402

NUM_SAMPLES = {"smoke": 3, "quick": 16, "paper": 40}
SEARCHABLE = ("mona", "arco_sg", "arco_sag", "action", "mean_teacher")
LABELLED = "1"  # patients (ARCO App. N: ACDC 1%)


def search_space(method: str) -> dict:
    """The Ray Tune domains (dotted config keys) searched for ``method``; see the module docstring."""
    from ray import tune

    if method in ("mona", "arco_sg", "arco_sag"):
        return {"objective_params.contrast_weight": tune.loguniform(0.001, 1.0),
                "objective_params.unsup_weight": tune.loguniform(0.1, 10.0),
                "objective_params.eqv_weight": tune.loguniform(0.1, 10.0),
                "objective_params.unsup_threshold": tune.uniform(0.85, 0.99),
                "objective_params.anchor_threshold": tune.uniform(0.1, 0.5)}
    if method == "action":
        return {"objective_params.anco_weight": tune.loguniform(0.001, 1.0),
                "objective_params.unsup_weight": tune.loguniform(0.1, 10.0),
                "objective_params.unsup_threshold": tune.uniform(0.85, 0.99),
                "objective_params.hard_query_threshold": tune.uniform(0.85, 0.99)}
    if method == "mean_teacher":
        return {"objective_params.consistency_weight": tune.loguniform(0.01, 10.0),
                "objective_params.ema_momentum": tune.uniform(0.9, 0.999)}
    raise ConfigError(f"--method {method}: no search space (choose one of {', '.join(SEARCHABLE)})")


def parser():
    p = study_parser(__doc__, "hparam_search", folder="hparam_search-<method>-<profile>",
                     seeds_help="the one seed the search trains, in [0, 2**32 - 1] (default: the profile's first)",
                     labelled_default=f"{LABELLED} patient; a search tunes at one fraction")
    p.add_argument("--method", choices=SEARCHABLE, default="arco_sag", help="the method to tune (default: arco_sag)")
    p.add_argument("--num-samples", type=int, default=None, help="samples Optuna proposes (default: the profile's: smoke 3, quick 16, paper 40)")
    return p


def build(args, profile, base):
    num_samples = NUM_SAMPLES[profile.name] if args.num_samples is None else args.num_samples
    if num_samples < 1:
        raise ConfigError(f"--num-samples {num_samples}: need at least 1")
    # a search runs one seed: the profile's first unless --seeds names one (more is a ConfigError from Study)
    args.seeds = args.seeds or list(profile.seeds[:1])
    fractions = study_fractions(args, (LABELLED,))
    if len(fractions) != 1:
        raise ConfigError(f"--labelled {' '.join(fractions)}: a search tunes at one label fraction; give one")
    overrides = {**method_overrides(args.method, profile), "data.labelled": fractions[0]}
    # one folder per method: a search of another method does not replace this one's history and best config
    return Study(name=f"hparam_search-{args.method}", base=base, results_dir=Path(args.results_dir),
                 variants=[Variant({"row": f"{METHOD_LABELS[args.method]} (search samples)", "order": 0}, overrides)],
                 search_space=search_space(args.method), num_samples=num_samples, asha=True)


def main(argv=None) -> int:
    import shlex

    from analysis.search import BEST_FILE, HISTORY_FILE, STATUSES, best_sample, load_samples, unfinished_search
    from analysis.report import another_seed
    from medseg_platform.errors import MedsegError
    from medseg_platform.results import trial_folder

    built, dry_run = [], []

    def build_and_keep(args, profile, base):  # run_study_main names and places the study: keep it to find its folder
        built.append(build(args, profile, base))
        dry_run.append(args.dry_run)
        return built[-1]

    code = run_study_main(__doc__, "hparam_search", build_and_keep, argv=argv, parser=parser())
    if code in (2, 130) or not built or any(dry_run) or not (built[0].study_dir / STUDY_FILE).is_file():
        return code  # a bad flag or config, a dry run, or interrupted before Tune ran: no search to summarise
    try:  # run_study_main's report already wrote search_history.csv / best_config.json; print from the same data
        samples = load_samples(built[0].study_dir)
        best = best_sample(samples)
        paths = [p for p in (built[0].study_dir / HISTORY_FILE, built[0].study_dir / BEST_FILE) if p.is_file()]
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {status: sum(s.status == status for s in samples) for status in STATUSES}
    wanted = built[0].num_samples
    print(f"search: {len(samples)} of {wanted} samples proposed (" + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ")")
    if counts["errored"]:  # unlike a grid study's: the restored experiment holds them as ended, its sampler has moved on
        print(f"note: a rerun does not train the {counts['errored']} errored sample(s) again; after fixing the cause, run the "
              "search again under a new --name (search_history.csv has each sample's error)")
    partial = code != 0 or unfinished_search(samples, wanted)  # stopped: rerun the command to finish it
    if best is not None:
        values = ", ".join(f"{key.split('.')[-1]}={value:.4g}" for key, value in best.values.items())
        print(f"best configuration{' so far (the search is unfinished)' if partial else ''} (val Dice {best.best_val_dice:.4f}, "
              f"test Dice {best.test_dice:.4f}; sample {best.order}): {values}")
        tied = [s for s in samples if s.status == "completed" and s.best_val_dice == best.best_val_dice]
        if len(tied) > 1:
            print(f"note: {len(tied)} completed samples tie at val Dice {best.best_val_dice:.4f}: the search could not tell them "
                  "apart (the earliest is named; a longer profile or more val cases separates them)")
        folder = trial_folder(built[0].study_dir, best.key)
        print(f"  its trial folder (weights, per-case results): {folder}\n"
              f"  predict with it: medseg predict --trial {shlex.quote(str(folder))} --out PREDICTIONS (its own test split; "
              "--data-root DATA for another dataset)\n"
              f"  train it with another seed: medseg train --config {shlex.quote(str(built[0].study_dir / BEST_FILE))} "
              f"--seed {another_seed(built[0].seeds[0])} "
              f"--results-dir {shlex.quote(str(built[0].results_dir))} (its own seed gives the trial above, which medseg train "
              "reuses; another seed trains its own pretraining stages first and keeps them in this results folder's cache)")
    else:
        print("no sample completed: no best configuration")
    print("search files:\n" + "\n".join(f"  {p}" for p in paths))
    return code if best is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
