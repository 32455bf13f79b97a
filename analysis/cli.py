"""``medseg report RESULTS_DIR``: regenerate tables, plots and ``report.md`` of finished studies (no training).

RESULTS_DIR is one study folder (it has ``study.json`` or trial folders in ``trials/``) or a results folder
holding several studies (each sub-folder that is a study is regenerated, in name order; one that cannot be
read is reported and the others are still regenerated). Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

from pathlib import Path

from medseg_platform.errors import MedsegError


def find_studies(results_dir: Path) -> list[Path]:
    """The study folders of ``results_dir``: itself if it is one, else its sub-folders that are; MedsegError if none."""
    from analysis.report import is_study_dir

    if not results_dir.is_dir():
        problem = "a file, not a folder" if results_dir.exists() else "no such folder"
        raise MedsegError(f"{results_dir}: {problem} (give a study folder or the --results-dir of a study)")
    if is_study_dir(results_dir):
        return [results_dir]
    studies = sorted(p for p in results_dir.iterdir() if p.is_dir() and is_study_dir(p))
    if not studies:
        from medseg_platform.results import CONFIG_FILE, TRIALS_DIR

        if results_dir.parent.name == TRIALS_DIR and (results_dir / CONFIG_FILE).is_file() and is_study_dir(results_dir.parent.parent):
            raise MedsegError(f"{results_dir}: a trial folder, not a study; its study is {results_dir.parent.parent} "
                              f"(medseg report {results_dir.parent.parent})")  # the walkthrough
        raise MedsegError(f"{results_dir}: no study here (a study folder has study.json or trial folders in trials/; run a study script first)")
    return studies


def no_result_reason(study_dir: Path, problems: list[str] | None = None) -> str:
    """Why a study folder gave no table: no result file, result files none of which could be read, or readable results
    that are not part of the study as its last command defined it (the problem lines above name them). ``problems``:
    the report's problem lines, whose ``errored trial`` lines count errored search samples that have no
    ``error.json``. A search's rerun runs its crashed samples again but not those that ended with an application error,
    so its advice names both (a new ``--name`` for the latter)."""
    from medseg_platform.io import other_holder, read_json_object
    from medseg_platform.results import ERROR_FILE, RESULT_FILE, STUDY_FILE, TRIALS_DIR, trial_finished

    folders = [path.parent for path in (study_dir / TRIALS_DIR).glob(f"*/{RESULT_FILE}")]
    if not folders and other_holder(study_dir) is not None:  # its command is training them now (the workflow probe)
        return "no finished trial yet: the study is running; its command writes the report when it ends"
    if not folders:
        errored = max(len(list((study_dir / TRIALS_DIR).glob(f"*/{ERROR_FILE}"))),
                      sum(p.startswith("errored trial") for p in problems or []))
        search = bool((read_json_object(study_dir / STUDY_FILE) or {}).get("search"))
        if errored and search:  # a restored search runs its crashed (Tune ERROR) samples again, not its ended ones
            return (f"no finished trial: {errored} errored (the problems above and search_history.csv say why); fix the cause "
                    "first (e.g. a lower --set optim.lr): a rerun of the search command runs again the samples that crashed, "
                    "not those that ended with an application error (a NaN loss, bad data), for which run the search again "
                    "under a new --name")
        if errored:  # an application error (a NaN loss, bad data) recurs: a rerun trains them again into the same error
            return (f"no finished trial: {errored} errored (the problems above and {TRIALS_DIR}/*/{ERROR_FILE} say why); fix the "
                    "cause first (e.g. a lower --set optim.lr), then rerun the study command, which trains them again")
        return f"no finished trial (no {TRIALS_DIR}/*/{RESULT_FILE}); run its study command to train them"
    readable = sum(trial_finished(folder) for folder in folders)
    if readable:
        return (f"no finished trial of this study: the {readable} readable {TRIALS_DIR}/*/{RESULT_FILE} file(s) are not part "
                "of it as its last command defined it (the problems above say which); run its study command to train them")
    return (f"no readable result: {len(folders)} {TRIALS_DIR}/*/{RESULT_FILE} file(s) could not be read (the problems above "
            f"and in report.md say why); restore them from a copy, or rerun the study command to train those trials again")


def train_then_report(args) -> int:
    """``medseg train`` as the console runs it: the trial (``medseg_platform.train_cli.train``), then the folder's
    tables, plots and ``report.md`` rebuilt with it, as a study script does after its run (they used to stay as the
    last ``medseg report`` left them: the workflow probe)."""
    import sys

    from analysis.study_cli import import_report
    from medseg_platform.train_cli import train

    report = import_report()  # before training: a broken install is a one-line error, not a lost report after it

    def write_report(study_dir) -> None:  # under the study folder's lock, as the trial ran (train's ``after``)
        try:
            report.print_report(report.write_report(study_dir))
        except Exception as exc:  # noqa: BLE001 - the trial is done and recorded: say so, exit 0
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"the trial finished and its results are in its folder, but the folder's tables and report could not "
                  f"be rebuilt ({type(exc).__name__}: {first}); fix that and run: medseg report {study_dir}", file=sys.stderr)

    status, _ = train(args, after=write_report)
    return status


def run(args) -> int:
    import sys

    from analysis.report import print_report, write_report

    studies = find_studies(Path(args.results_dir).expanduser().resolve())
    failed = 0
    for study_dir in studies:
        print(f"== {study_dir.name}")
        try:
            report = write_report(study_dir)
        except BrokenPipeError:  # `| head` went away: exit 141 as every command does, not "a bug" (the README review)
            raise
        except Exception as exc:  # noqa: BLE001 - one unreadable study of several does not stop the others
            if len(studies) == 1:
                raise  # exit 2 for bad input (MedsegError), as for any command
            what = str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc} (a bug or a hand-edited file)"
            print(f"error: {what}", file=sys.stderr)
            failed += 1
            continue
        print_report(report)
        if not report.records:
            print(f"{study_dir.name}: {no_result_reason(study_dir, report.problems)}", file=sys.stderr)
            failed += 1
        elif report.missing or report.unfinished:  # exit 1, as the study command does then (it exited 0 here)
            print(f"{study_dir.name}: {incomplete_reason(report)}", file=sys.stderr)
            failed += 1
    if failed and len(studies) > 1:
        print(f"{failed} of {len(studies)} studies not regenerated or incomplete (see the lines above)", file=sys.stderr)
    return 1 if failed else 0


def incomplete_reason(report) -> str:
    """Why a study's regenerated tables are not the whole study (``report.missing``: trials of its ``study.json``
    without a result, errored, corrupt or not run; ``report.unfinished``: a search whose samples have not all ended).
    A script that publishes the tables after ``medseg report`` gets exit code 1 for it, as after the study command."""
    if report.missing:
        total = len(report.missing) + len(report.records)
        return (f"incomplete: {len(report.missing)} of the study's {total} trials have no result (errored, corrupt, not run "
                "or still running: the problems above say which), so the tables average fewer trials; rerun its study "
                "command to train them")
    return "incomplete: the search has samples that have not ended (the problems above); rerun its study command to finish it"


def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "report",
        help="regenerate the tables, plots and report.md of finished studies from their result files",
        example="medseg report results/ablation_tailness-quick",
        description=(
            "Regenerate the tables (Markdown, LaTeX, CSV), the plots (plots/*.png) and report.md of a study from its\n"
            "per-trial result files, without training. RESULTS_DIR is a study folder (with study.json or trial folders\n"
            "in trials/) or a results folder holding several studies (each is regenerated; one that cannot be read is\n"
            "reported and the others go on). Tables and plots that the trials no longer give are removed. Prints\n"
            "where everything is; exit code 1 when a study has no finished trial, has trials without a result (errored,\n"
            "corrupt, not run) or a search not ended, or, among several, cannot be read;\n"
            "2 when RESULTS_DIR holds no study or is one study that cannot be read."
        ),
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a study folder or a results folder of studies")
    parser.set_defaults(func=run)
