"""The command line of every study script: parse the shared flags, run the study, write its report.

A study script (``studies/*.py``) builds its :class:`~medseg_platform.study.Study` from a profile
(:mod:`medseg_platform.profiles`, the table rows' :mod:`medseg_platform.recipes`, the flags of
:func:`medseg_platform.study_flags.study_parser`) and hands the builder to :func:`run_study_main`. It lives here,
above the platform, because it ends with the report (:mod:`analysis.report`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from typing import Callable, Sequence

from medseg_platform.config import TrialConfig, resolve_path
from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.io import working_folder, write_json_atomic
from medseg_platform.overrides import apply_overrides, named_by_set, parse_set_options, select_rows, validate_with_sets
from medseg_platform.profiles import PROFILES, Profile, profile_with_overrides
from medseg_platform.protocol import check_protocol, protocol_overrides, released_cut_warnings
from medseg_platform.results import SETTINGS_FILE
from medseg_platform.study_flags import dataset_num_classes, fractions_in_patient_order, resolve_data_root, study_parser


def run_study_main(description: str, default_name: str, build: Callable[[argparse.Namespace, Profile, TrialConfig], "object"],
                   argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None,
                   labelled_default=None) -> int:
    """Parse the shared flags, build the study with ``build(args, profile, base)``, run it, write ``settings.json``
    (profile, dataset root, command line, ``--set`` overrides, ``--protocol``, ``--test-root``) and the report: tables,
    plots and ``report.md`` (:func:`analysis.report.write_report`). ``--rows`` and ``--set`` change the built study
    (:mod:`medseg_platform.overrides`); ``--protocol`` sets its config keys on the profile before the rows are built
    (:func:`medseg_platform.protocol.protocol_overrides`; a ``--set`` of one of them, or a row or grid axis that sets one
    to another value, is an error); ``--dry-run`` prints its plan instead of running it (:mod:`medseg_platform.plan`).

    ``parser``: a parser from :func:`study_parser` that a study script extended with its own flags
    (default: ``study_parser(description, default_name, labelled_default=labelled_default)``); ``labelled_default``:
    the study's own label fractions, for ``--labelled``'s help (:func:`medseg_platform.study_flags.fractions_help`).
    """
    from medseg_platform.study.ray_runtime import sigterm_as_interrupt

    started = time.perf_counter()  # the closing line's command time (the phantom, Ray's start, the report included)
    with sigterm_as_interrupt():  # a kill at any moment (before Ray, while writing the report) takes the Ctrl-C path
        return _run_study_main(description, default_name, build, argv,
                               parser or study_parser(description, default_name, labelled_default=labelled_default), started)


def rows_refusing(study, error: ConfigError) -> list[str]:
    """The labels of every row that refuses the configuration on its own, when ``error`` is about a row (its
    ``variant_index``, set by :meth:`~medseg_platform.study.Study.trial_params`) and some rows take it: only then does
    "leave those rows out with --rows" help. Empty when every row refuses (a --set wrong for every row offered it row
    after row) or the error is about no row. Each row is tried alone: naming the first refusing row only took one more
    try per row (the studies review: the quick sampling study's two NS rows); the label in the message is escaped and
    may carry grid suffixes, so it is not read back from there."""
    import copy

    if getattr(error, "variant_index", None) is None or len(study.variants) < 2:
        return []
    refusing = []
    for variant in study.variants:
        alone = copy.copy(study)
        alone.variants, alone.claims = [variant], []
        try:
            alone.trial_params()
        except MedsegError:
            refusing.append(str(variant.tags.get("row")))
    return refusing if len(refusing) < len(study.variants) else []


def import_report():
    """:mod:`analysis.report` (pandas, matplotlib), or a one-line :class:`ConfigError` saying how to repair the install."""
    try:
        import analysis.report as report
    except ImportError as exc:
        raise ConfigError(f"the report cannot be written: {exc} (its libraries come with the project: pip install -c "
                          "constraints.txt -e . in the checkout)") from None
    return report


def check_resource_flags(args, profile) -> None:
    """The checks of ``--cpus-per-trial``, ``--num-workers`` and ``--gpus-per-trial`` against this machine (a local Ray),
    which need no data: before the data root is resolved, where a fresh cache generates the embedded phantom (20 s) that
    such a refusal then wasted (the preflight review). ``Study.run`` and the dry run check them again with the study."""
    from types import SimpleNamespace

    from medseg_platform.study.ray_runtime import check_gpus_available
    from medseg_platform.study.runner import check_local_resources

    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else profile.cpus_per_trial
    check_local_resources(SimpleNamespace(address=args.address, num_cpus=None, cpus_per_trial=cpus, num_workers=args.num_workers))
    if args.gpus_per_trial > 0:
        check_gpus_available(args.address, args.gpus_per_trial, args.num_workers)


def _run_study_main(description, default_name, build, argv, parser, started: float) -> int:
    from medseg_platform.study import Study
    from medseg_platform.study.spec import check_script_folder

    args = parser.parse_args(argv)
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error(f"argument --seeds: each seed once, got {' '.join(map(str, args.seeds))}")
    if args.labelled and len(set(args.labelled)) < len(args.labelled):
        parser.error(f"argument --labelled: each label fraction once, got {' '.join(args.labelled)}")
    if args.smoke_test and args.profile not in ("quick", "smoke"):
        parser.error(f"--smoke-test runs the smoke profile; drop --profile {args.profile} (or --smoke-test)")
    args.smoke_test = args.smoke_test or args.profile == "smoke"  # `medseg train --profile smoke` spells it so too
    profile = PROFILES["smoke" if args.smoke_test else args.profile]
    try:
        sets = parse_set_options(args.overrides)
        profile = profile_with_overrides(profile, sets)
        check_resource_flags(args, profile)
        root = resolve_data_root(args, profile)
        protocol = protocol_overrides(args.protocol, root)
        for key in sets:
            if key in protocol:
                raise ConfigError(f"--set {key}: --protocol {args.protocol} sets it to {protocol[key]!r}; drop the --set "
                                  "or use --protocol corrected")
        if protocol:
            profile = replace(profile, trial=profile.trial.replace(**protocol))
        base = profile.trial.replace(**{"data.root": str(root), "optim.amp": args.amp,
                                        **dataset_num_classes(root, sets, profile.trial.data.num_classes)})
        validate_with_sets(base, sets)  # a bad --set names itself here, before a row derived from it fails less clearly
        if args.labelled:  # in increasing order of the patients they select of this dataset; each selection once
            args.labelled = list(fractions_in_patient_order(args.labelled, root, base.data.num_classes))
        study: Study = build(args, profile, base)
        # the default: the name the script built (e.g. hparam_search-<method>) plus the profile; a --name as typed, also
        # one equal to the script's name (it was taken for the default: the CLI review)
        study.name = args.name if args.name is not None else f"{study.name}-{profile.name}"
        study.results_dir = resolve_path(args.results_dir, "--results-dir")
        study.address = args.address
        study.seeds = tuple(args.seeds) if args.seeds else profile.seeds
        study.max_concurrent = args.max_concurrent
        study.gpus_per_trial = args.gpus_per_trial
        study.cpus_per_trial = args.cpus_per_trial if args.cpus_per_trial is not None else profile.cpus_per_trial
        study.dashboard = not args.no_dashboard
        study.dashboard_host = args.dashboard_host
        # '' is an error (an unset shell variable ran the search without its journal, silently: the search review)
        study.optuna_storage = resolve_path(args.optuna_storage, "--optuna-storage") if args.optuna_storage is not None else None
        study.num_workers = args.num_workers
        study.max_retries = args.max_retries
        study.test_root = resolve_path(args.test_root, "--test-root") if args.test_root is not None else None
        if args.rows:
            select_rows(study, args.rows)
        check_protocol(study, args.protocol, protocol)
        study.protocol = args.protocol
        overrides = apply_overrides(study, sets)
        # released_slices (from --protocol released, a --set or a row) on a converted list cuts a frame otherwise. Read
        # from the rows kept and with the --set values: every row was validated here before --rows and --set applied,
        # which refused rows the command left out and values it had fixed (the CLI review)
        try:
            trial_params = study.trial_params()
        except ConfigError as exc:  # a --set value wrong for a row names the --set
            named = named_by_set(exc, sets)
            refusing = rows_refusing(study, exc) if named is not exc else []  # wrong for some rows only (the NS baseline)
            if len(refusing) == 1:
                named = ConfigError(f"{named}; leave that row out with --rows")
            elif refusing:
                named = ConfigError(f"{named}; {len(refusing)} rows refuse it ({', '.join(map(repr, refusing))}): leave them "
                                    "out with --rows")
            raise named from None
        released = {t["config"]["data"]["labelled"] for t in trial_params
                    if t["config"]["data"].get("labelled_strategy") == "released_slices"}
        for note in released_cut_warnings(root, released) if released else ():
            print(f"warning: {note}", file=sys.stderr)
        check_script_folder(study.study_dir, default_name)
        study.script = default_name  # in study.json from the run's start
        if args.dry_run:
            from medseg_platform.plan import format_plan, plan_study

            print(format_plan(plan_study(study)))
            return 0
        report_module = import_report()  # before training: a broken install used to lose the tables after it
        command = " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
        written = []

        def write_settings_and_report(run) -> None:  # under the study folder's lock, as the trials ran
            # the report's settings that the trial files do not hold (regenerated reports read them back)
            write_json_atomic(run.study_dir / SETTINGS_FILE, {
                "script": default_name, "profile": profile.name, "data_root": str(root), "command": command, "cwd": working_folder(),
                "smoke_test": bool(args.smoke_test),
                "results_dir": str(study.results_dir), "address": args.address, "gpus_per_trial": study.gpus_per_trial,
                "cpus_per_trial": study.cpus_per_trial, "num_workers": study.num_workers, "max_concurrent": study.max_concurrent,
                "overrides": overrides, "protocol": args.protocol,
                **({"test_root": str(study.test_root)} if study.test_root is not None else {})})
            written.append(report_module.write_report(run.study_dir))  # tables, plots/ and report.md, from the result files

        run = study.run(after=write_settings_and_report)
        report = written[0]
        report_module.print_report(report)
        rebuilt = " (nothing left to train)" if run.pending_at_start == 0 else ""  # it printed "wall time 0.0 s" alone
        # the study's run alone read as the command's time: the phantom's generation and the report were left out
        print(f"wall time {run.timing['total_s']:.1f} s for the trials{rebuilt}, {time.perf_counter() - started:.1f} s for the "
              f"command; results in {run.study_dir}")
        # a search whose samples have not all ended says "rerun to finish it" (a sample's killed worker): exit 1 as a
        # grid study with a trial left does (the runner review: it exited 0)
        return 0 if report.records and not report.missing and not report.unfinished and not run.stopped else 1
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # e.g. while the phantom is generated, before Ray runs (Tune handles its own Ctrl-C)
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
