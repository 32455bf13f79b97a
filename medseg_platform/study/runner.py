"""Running a :class:`~medseg_platform.study.spec.Study` as a Ray Tune experiment (:func:`run_study`).

1. expands and validates every trial config **before Ray starts** (one-line :class:`ConfigError`), checks the Ray
   options, a search's Optuna journal (:mod:`medseg_platform.study.search_journal`), GPUs, ``--test-root`` and every
   data file the trials read (data preflight);
2. scores, without training, every trial that differs from a finished trial of the results folder only in how it is
   scored (``--protocol``, ``eval.distance_units``: :mod:`medseg_platform.rescore`), and skips Ray entirely when every
   trial then has a complete ``result.json`` (rerun = rebuild tables; a search always restores its Tune experiment,
   whose samples Optuna decides);
3. starts a local Ray (dashboard on ``dashboard_host``, 127.0.0.1 by default: :mod:`medseg_platform.dashboard`)
   or joins ``address`` / ``RAY_ADDRESS`` (:mod:`medseg_platform.study.ray_runtime`);
4. runs or, if the experiment exists with a saved state, restores (``experiment_restorable`` / ``Tuner.restore``) the Tune experiment
   ``<name>-<spec hash>`` under ``<results>/<name>/ray``, each trial being the function trainable
   :func:`medseg_platform.study.trainable.run_trial_in_tune`.

Failures: deterministic application errors (NaN loss, bad config/data) end the trial as errored without a retry;
a dead worker is retried from its last checkpoint up to ``max_retries`` times (``FailureConfig``); a killed driver
or a corrupt result is handled by rerunning the same command.

External test set (``Study.test_root``, the study scripts' ``--test-root``): checked before Ray starts (same classes
as the study's data, data preflight) and scored by each trial after its own test evaluation; finished trials that
lack it are scored at the next run from their checkpoints, without training (:mod:`medseg_platform.predict`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from medseg_platform.cli import log_line
from medseg_platform.config import resolve_path
from medseg_platform.dashboard import DEFAULT_DASHBOARD_HOST, check_dashboard_host, check_dashboard_host_is_local
from medseg_platform.errors import ConfigError, DataError, MedsegError
from medseg_platform.io import check_folder_free, check_folder_writable, check_output_folder, folder_lock, read_json_object, write_json_atomic
from medseg_platform.memory_floor import check_memory_floor, machine_memory_bytes
from medseg_platform.preflight import datasets_of_trials, preflight_datasets
from medseg_platform.rescore import score_from_sources, scoring_device
from medseg_platform.results import (ERROR_FILE, LAST_RUN_FILE, RESULT_FILE, STUDY_FILE, TRIALS_DIR, errored_in_run, pretrain_cache_dir,
                                     retag_finished_trials, trial_finished, trial_folder, tune_storage, write_trial_error)
from medseg_platform.study.ray_runtime import (check_cluster_answers, check_gpus_available, check_nodes_see, init_ray, joins_cluster,
                                               ray_started_here, sigterm_handler_kept)
from medseg_platform.study.search_journal import (check_journal_holds_no_other_search, check_search_journal_free, check_search_storage,
                                                 is_optuna_journal, optuna_journal, search_journal_lock)
from medseg_platform.study.spec import ASHA_TIME, Study, check_accumulating_folder, check_study_folder


@dataclass
class StudyRun:
    """What :meth:`Study.run` returns: the study, its folder, every trial key, the run's timing, whether a stop
    signal (Ctrl-C, SIGTERM) ended it early, and how many trials (a search: samples) were left to run at its start
    (None where unknown)."""

    study: Study
    study_dir: Path
    trial_keys: list[str]
    timing: dict
    stopped: bool = False
    pending_at_start: int | None = None


def run_study(study: Study, after: Callable[[StudyRun], None] | None = None) -> StudyRun:
    """Validate, run (or restore) on Ray, and return what finished; see the module docstring. The study folder is
    locked while it runs (:func:`medseg_platform.io.folder_lock`): two copies of one command used to train the same
    trials in one folder at once. ``after(run)`` runs under the same lock: the study scripts write their settings and
    report there (a second command started as the first finished wrote its own in between: the fault review)."""
    start, started_at = time.perf_counter(), time.time()
    trials, test_datasets = check_before_ray(study)
    check_folder_free(study.study_dir, f"study {study.name}")  # before the preflight's reads and its preflight.json
    check_search_journal_free(study, trials)  # the same, for a search's Optuna journal
    preflight_datasets(datasets_of_trials(trials) + test_datasets, study.study_dir)  # every data file read, before Ray starts
    check_trained_on_this_data(study, trials)
    environment = dict(os.environ)
    try:
        # after the checks: a refused command writes nothing
        with folder_lock(study.study_dir, f"study {study.name}"), search_journal_lock(study, trials):
            check_journal_holds_no_other_search(study, trials)  # again, under the lock: no other folder's run starts it now
            run = _run_checked_study(study, trials, start, started_at)
            if after is not None:
                after(run)
            return run
    finally:  # the session's own environment back: a notebook's later Tune runs, breakpoint() and `ray` commands
        restore_environment(environment)


def restore_environment(before: Mapping[str, str]) -> None:
    """``os.environ`` as ``before``: a Ray the study started and shut down left RAY_AUTH_MODE, RAY_CLIENT_MODE and
    PYTHONBREAKPOINT set (``breakpoint()`` then no longer opened pdb), and a rerun search left RAY_AIR_NEW_OUTPUT (the
    API review)."""
    for name in [name for name in os.environ if name not in before]:
        os.environ.pop(name, None)
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _run_checked_study(study: Study, trials: list[dict], start: float, started_at: float) -> StudyRun:
    """:func:`run_study` after its checks, with the study folder locked."""
    study_dir = study.study_dir
    (study_dir / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    if study.search_space is None:
        retagged = retag_finished_trials(study_dir, trials)
        if retagged:
            log_line(f"{retagged} finished trial(s) take this study's current row labels and order (their configurations, and "
                 "so their results, are unchanged)")

    def to_run(trial: dict) -> bool:
        folder = trial_folder(study_dir, trial["key"])
        return not trial_finished(folder) or lacks_test_root(study, folder)

    forget_other_test_root_errors(study, trials)
    done = {t["key"] for t in trials if trial_finished(trial_folder(study_dir, t["key"]), log_line)}  # a corrupt one is told
    # trials that train as a finished one did and differ at most in how they are scored: scored, not trained
    scored = (score_from_sources(study_dir, [t for t in trials if t["key"] not in done], log_line, scoring_device(study.gpus_per_trial))
              if study.search_space is None else set())
    done |= scored
    pending = [t for t in trials if t["key"] not in done or lacks_test_root(study, trial_folder(study_dir, t["key"]))]
    to_score = sum(1 for t in pending if t["key"] in done)  # finished, not yet scored on --test-root
    write_json_atomic(study_dir / STUDY_FILE, study.description(trials))
    scoring = f" ({to_score} of them to score on --test-root only)" if to_score else ""
    if study.search_space is not None:
        ended = searched_samples_ended(study, trials)
        to_start = max(0, study.num_samples - ended)  # samples live in <key>-<trial id> folders, not under `pending`'s key
        log_line(f"study {study.name}: a search of {study.num_samples} sample(s), {ended} already ended -> {study_dir}")
    else:
        to_start = len(pending)
        log_line(f"study {study.name}: {len(trials)} trial(s), {len(done)} already finished{scoring} -> {study_dir}")
    timing = {"validate_s": time.perf_counter() - start}
    stopped = False
    if pending or study.search_space is not None:
        run_id = uuid.uuid4().hex[:12]  # marks the error.json files written by this run
        restored, stopped = run_tune(study, trials, study_dir, timing, study.spec_hash(trials), run_id)
        if stopped:  # a multi-worker trial's Train workers die with the stop and its Tune function recorded that as an
            # infrastructure error of this run: a stop the user asked for, not a crash (the fault review)
            for trial in pending:
                folder = trial_folder(study_dir, trial["key"])
                if errored_in_run(folder, run_id, kind="infrastructure"):
                    (folder / ERROR_FILE).unlink(missing_ok=True)
        # A restored experiment re-runs only what Tune itself left unfinished or errored. Trials it
        # marked finished that have no valid result (folder deleted, corrupt result, an application error
        # in an earlier run: Tune saw those end normally) run again here, in a fresh experiment; not after
        # a Ctrl-C / SIGTERM, which stops the study (it used to start that experiment instead).
        left = [t for t in pending if to_run(t) and not errored_in_run(trial_folder(study_dir, t["key"]), run_id)]
        if stopped and study.search_space is not None:
            log_line("stopped by a signal: the search is unfinished; rerun the same command to resume it")
        elif stopped:
            log_line(f"stopped by a signal: {len(left)} trial(s) unfinished; rerun the same command to resume them")
        elif restored and left and study.search_space is None:
            unscored = sum(trial_finished(trial_folder(study_dir, t["key"])) for t in left)  # finished, not on --test-root
            parts = ([f"{len(left) - unscored} have no result (lost, corrupt, or errored in an earlier run): running them "
                      "again"] if len(left) > unscored else []) + (
                [f"{unscored} finished have no score on --test-root (its data changed, or its scoring failed): scoring them"]
                if unscored else [])  # the runner review: finished trials were said to have no result
            log_line(f"{len(left)} trial(s) that the restored experiment considers done: " + "; ".join(parts))
            try:
                _, stopped = run_tune(study, left, study_dir, timing, f"rerun-{run_id}", run_id)
            finally:
                discard_experiment(study, f"rerun-{run_id}")
            if stopped:
                log_line("stopped by a signal; rerun the same command to resume the unfinished trials")
    timing["total_s"] = time.perf_counter() - start
    if study.search_space is not None:  # its samples are scored in their Tune trials (study.trainable)
        scored = {folder.name for folder in (study_dir / TRIALS_DIR).iterdir() if _scored_since(folder, started_at)}
    write_json_atomic(study_dir / LAST_RUN_FILE, {"timing": timing, "pending_at_start": to_start, "trials": len(trials),
                                                  "test_root_only_at_start": to_score if study.search_space is None else 0,
                                                  "scored_from_finished": len(scored),
                                                  "concurrency_cpus": study.num_cpus, "cpus_per_trial": study.cpus_per_trial,
                                                  "num_workers": study.num_workers})
    return StudyRun(study, study_dir, [t["key"] for t in trials], timing, stopped, to_start)


def _scored_since(folder: Path, since: float) -> bool:
    """Whether the trial in ``folder`` was scored from a finished trial's checkpoint (``scored_from``) at or after
    ``since`` (epoch seconds)."""
    result = read_json_object(folder / RESULT_FILE) or {}
    return bool(result.get("scored_from")) and float(result.get("finished_at") or 0.0) >= since


# ----------------------------------------------------------------------------------- checks before Ray
def check_before_ray(study: Study, in_process_cuda: bool = False, dry_run: bool = False,
                     in_process: bool = False) -> tuple[list[dict], list[tuple[str, int]]]:
    """Every check of the study's settings that :func:`run_study` (and ``--dry-run``, :func:`medseg_platform.plan.plan_study`)
    makes before it writes or starts anything: the trials (:meth:`Study.trial_params`), the Ray options, retries and fp16,
    the results folder, the CPU trials' memory floor (``medseg_platform.memory_floor``), GPUs, the test root
    (``in_process_cuda``: the trial runs in this process, which has a CUDA device,
    as ``medseg train --in-process`` on a GPU machine; ``in_process``: it runs in this process, without Ray's CPU
    reservations; ``dry_run``: nothing will be written, so the results folder need not be writable). Returns the
    trials in start order and the test root's datasets. One-line
    :class:`ConfigError` / :class:`~medseg_platform.errors.MedsegError` otherwise. The data files themselves are read by
    :func:`medseg_platform.preflight.preflight_datasets` afterwards (it writes its report into the study folder)."""
    trials = study.trial_params()
    if study.accumulate:
        check_accumulating_folder(study.study_dir, study.accumulate)
    check_ray_options(study)
    check_search_storage(study, trials)
    check_journal_holds_no_other_search(study, trials)
    check_study_folder(study, trials)
    check_fault_tolerance_options(study, trials, in_process_cuda)
    check_output_folder(study.study_dir, "--results-dir (Study.results_dir)", writes=None if dry_run else "inside")
    if any(trial["config"].get("pretrain") for trial in trials):  # a file or an unwritable folder there: a traceback in
        # every trial, each retried as a crashed worker (the cache review)
        check_output_folder(pretrain_cache_dir(study.study_dir), "the pretraining cache (pretrain-cache under --results-dir)",
                            writes=None if dry_run else "inside")
    if dry_run:  # nothing is written now, but the run would stop there: say so (the dry run passed a read-only folder)
        try:
            check_folder_writable(study.study_dir, "--results-dir (Study.results_dir)")
        except ConfigError as exc:
            print(f"warning: the run would stop before training: {exc}", file=sys.stderr, flush=True)
    check_local_resources(study)
    if not joins_cluster(study.address) and study.gpus_per_trial == 0 and not in_process_cuda:
        check_memory_floor(trials, machine_memory_bytes())  # a patch no step fits in: before the dry run's timing too
    if not in_process:
        try:
            check_cluster_answers(study.address)
        except ConfigError as exc:
            if not dry_run:
                raise
            print(f"warning: the run would stop before training: {exc}", file=sys.stderr, flush=True)
    if not in_process:  # Ray reserves CPUs per trial; a trial in this process reserves none
        warn_oversubscribed_threads(study, trials)
    warn_single_validation(trials)
    warn_unreachable_negatives(trials)
    if study.gpus_per_trial > 0:
        check_gpus_available(study.address, study.gpus_per_trial, study.num_workers)
    warn_idle_gpus(study)
    return trials, check_test_root(study, trials)


def warn_idle_gpus(study: Study) -> None:
    """Print a warning when a trial of one worker reserves more than one GPU: it trains on one of them (the GPU-path
    audit), and the others sit reserved and idle."""
    if study.gpus_per_trial > 1 and study.num_workers == 1:
        log_line(f"warning: --gpus-per-trial {study.gpus_per_trial:g} reserves {study.gpus_per_trial:g} GPUs per trial, but a trial "
             "of one worker trains on one of them; use --num-workers to train a trial on several GPUs, or 1 GPU per trial")
    elif study.gpus_per_trial > 1:  # each worker reserves that many and trains on one (ray.train.torch.get_device)
        whole = float(study.gpus_per_trial).is_integer()
        log_line(f"warning: --gpus-per-trial {study.gpus_per_trial:g} with --num-workers {study.num_workers} reserves "
             f"{study.gpus_per_trial:g} GPUs per worker, but each worker trains on one of them; use --gpus-per-trial 1"
             + (f" and --num-workers {study.num_workers * int(study.gpus_per_trial)} to train on all of them" if whole else ""))


def check_trained_on_this_data(study: Study, trials: list[dict]) -> None:
    """A one-line :class:`DataError` when finished trials of the study (a search: every sample in its folder), or cached
    pretraining stages under its results folder, were trained on another version of a dataset the trials use
    (``data_identity`` recorded with them differs from :func:`medseg_platform.preflight.dataset_identity` now: a dataset
    converted again into the same folder with other data). Keys hash the dataset's path, not its content: the study
    would otherwise table old results beside new ones and fine-tune from stages of the old data. Results and stages
    from before the identity was recorded pass."""
    from medseg_platform.preflight import dataset_identity
    from medseg_platform.results import STAGE_DATA_FILE

    identities: dict[str, str | None] = {}  # resolved dataset root of the trials -> its identity now
    for trial in trials:
        data = trial["config"]["data"]
        root = str(Path(data["root"]).expanduser().resolve())
        if root not in identities:
            identities[root] = dataset_identity(root, int(data.get("num_classes", 4)))
    if study.search_space is None:
        folders = [trial_folder(study.study_dir, trial["key"]) for trial in trials]
    else:  # samples are keyed by their sampled config: every one in the folder is part of the search's tables
        folders = sorted(path for path in (study.study_dir / TRIALS_DIR).glob("*") if path.is_dir())
    stale: list[tuple[str, Path]] = []  # (dataset root, folder)
    for folder in folders:
        result = read_json_object(folder / RESULT_FILE) or {}
        root = ((result.get("config") or {}).get("data") or {}).get("root")
        root = str(Path(root).expanduser().resolve()) if isinstance(root, str) else None
        now = identities.get(root) if root else None
        if result.get("data_identity") and now and result["data_identity"] != now:
            stale.append((root, folder))
    cache = pretrain_cache_dir(study.study_dir)
    for stage in sorted(cache.iterdir()) if cache.is_dir() else []:
        record = read_json_object(stage / STAGE_DATA_FILE) or {}
        now = identities.get(str(record.get("root")))
        if record.get("data_identity") and now and record["data_identity"] != now:
            stale.append((str(record["root"]), stage))
    if stale:
        root, example = stale[0]
        raise DataError(f"{root}: {len(stale)} finished trial(s) or cached pretraining stage(s) of this results folder were "
                        f"trained on another version of this dataset (its files' checksums, or lists and sizes, differ: "
                        f"converted or generated again), e.g. {example}; give --results-dir a new folder, or move those "
                        "folders away to train them again")


def searched_samples_ended(study: Study, trials: list[dict]) -> int:
    """How many samples of the study's search its Tune experiment has ended (finished, stopped early or errored; a rerun
    resumes only the others); 0 before the experiment exists. Reads the experiment's state files, starts nothing."""
    return len(ended_sample_ids(study, trials))


def ended_sample_ids(study: Study, trials: list[dict]) -> set[str]:
    """The Tune trial ids of the samples :func:`searched_samples_ended` counts (a sample's folder ends in its id:
    :func:`medseg_platform.results.search_trial_key`); empty for a grid or before the experiment exists."""
    path = tune_storage(study.study_dir) / f"{study.name}-{study.spec_hash(trials)}"
    if study.search_space is None or not path.is_dir():
        return set()
    from medseg_platform.study.experiment_state import experiment_restorable, tune_trial_states

    quiet_tune_resume_advice()  # before the experiment's state is read: Tune warns about trials that never reported
    if not experiment_restorable(path):
        return set()
    return {trial.trial_id for trial in tune_trial_states(path) if trial.status in ("TERMINATED", "ERROR")}


def check_local_resources(study: Study) -> None:
    """A local Ray (no ``--address``/RAY_ADDRESS, nor a cluster this process joined) must hold one whole trial: its CPUs
    are this machine's (or ``num_cpus``, or those of the Ray this process started already), and a trial reserves
    ``num_workers x cpus_per_trial`` of them; Tune would otherwise wait forever for a trial it can never start
    (``--cpus-per-trial 4``, or the paper profile's 4 threads, on 2 CPUs). One-line :class:`ConfigError` before Ray
    starts (also in ``--dry-run``); the GPUs: :func:`check_gpus_available`."""
    if joins_cluster(study.address):  # a cluster may grow: distributed_trials_that_fit warns there
        return
    from medseg_platform.plan import available_cpus

    started = ray_started_here()  # a notebook's ray.init(num_cpus=1): Tune waited for a second CPU forever (the cluster review)
    cpus = (int(sys.modules["ray"].cluster_resources().get("CPU", 0)) if started
            else study.num_cpus if study.num_cpus is not None else available_cpus())
    need = study.cpus_per_trial * study.num_workers
    if need <= cpus + 1e-9:
        return
    if started:
        raise ConfigError(f"the Ray this process started (ray.init) has {cpus} CPU(s), and a trial needs {need:g} "
                          f"({study.num_workers} worker(s) x {study.cpus_per_trial:g}, --cpus-per-trial): ask for less, or "
                          "ray.shutdown() first and let the study start a Ray of this machine's CPUs")
    if study.num_workers > 1:
        raise ConfigError(f"--num-workers {study.num_workers}: a trial needs {need:g} CPUs ({study.num_workers} workers x "
                          f"{study.cpus_per_trial:g}), the local Ray has {cpus}; use fewer workers or less per worker "
                          "(--cpus-per-trial)")
    raise ConfigError(f"--cpus-per-trial {study.cpus_per_trial:g} (given, or the profile's default): a trial needs {need:g} CPUs, "
                      f"the local Ray has {cpus}; "
                      f"pass --cpus-per-trial {cpus} or less, with --set threads={cpus} or less to match (a trial computes "
                      "with the config's threads, whatever Ray reserves)")


def warn_oversubscribed_threads(study: Study, trials: list[dict]) -> None:
    """Print a warning when the trials compute with more torch threads than Ray reserves CPUs for each worker
    (``--cpus-per-trial`` below the config's ``threads``, e.g. the paper profile's 4 on 2): Ray then places more busy
    threads on a node than it has cores, and trials slow each other down."""
    threads = max((int(t["config"].get("threads", 1)) for t in trials), default=1)
    if threads > study.cpus_per_trial + 1e-9:
        # a fraction of a CPU per trial cannot be matched with threads (one is the least): say what does match
        remedy = (f"pass --set threads={int(study.cpus_per_trial)} to match, or more CPUs per trial" if study.cpus_per_trial >= 1 else
                  "pass --cpus-per-trial 1 (a trial computes with at least one thread), or --max-concurrent to run fewer at once")
        log_line(f"warning: the trials compute with {threads} torch thread{'s' if threads != 1 else ''} each but reserve "
                 f"{study.cpus_per_trial:g} CPU(s) (--cpus-per-trial); trials sharing a node's cores slow each other down: {remedy}")


def warn_single_validation(trials: list[dict]) -> None:
    """Print a warning when trials train for no more steps than their validation interval (``--set
    optim.max_steps=20`` under the quick profile's ``eval.val_every`` 25): each then validates once, at its last step,
    so the val-selected weights are the final ones, trial health has no curve to judge and ASHA one report."""
    from medseg_platform.step_costs import validations

    short = [t for t in trials if validations(t["config"]) < 2]
    if short:
        steps, every = int(short[0]["config"]["optim"]["max_steps"]), int(short[0]["config"]["eval"]["val_every"])
        log_line(f"warning: {len(short)} trial(s) train for {steps} steps with eval.val_every {every}: each validates once, "
             "at its last step, so the tested weights are the final ones and its validation curve has one point; "
             f"pass e.g. --set eval.val_every={max(1, steps // 4)} to validate during training")


def warn_unreachable_negatives(trials: list[dict]) -> None:
    """Print a warning naming the MONA/ARCO rows whose released negative rank window [3, 20) no class reaches on the
    dataset's classes (:func:`methods.mona.unreachable_negative_window`: 2 or 3 classes): they train as released, with
    a contrast that takes no negatives. A window set off the released one is refused by the config's validation."""
    from methods.mona import unreachable_negative_window
    from methods.registry import objective_config

    rows: dict[str, str] = {}
    for trial in trials:
        config = trial["config"]
        if config.get("objective") not in ("mona", "arco"):
            continue
        problem = unreachable_negative_window(objective_config(config["objective"], dict(config.get("objective_params") or {})),
                                              int(config["data"]["num_classes"]))
        if problem:
            rows.setdefault(str(trial["tags"].get("row", config["objective"])), problem)
    if rows:
        log_line(f"warning: {len(rows)} row(s) ({', '.join(map(repr, rows))}) train with objective_params."
                 f"{next(iter(rows.values()))}")


def check_test_root(study: Study, trials: list[dict]) -> list[tuple[str, int]]:
    """``study.test_root`` resolved (in place) and checked before Ray starts (a dataset root with the trials' classes and
    a test split; one-line error otherwise); returns its ``(root, num_classes)`` for the data preflight ([] without one)."""
    if study.test_root is None:
        return []
    from medseg_platform.predict import check_test_root as check_root

    study.test_root = resolve_path(study.test_root, "--test-root")
    checked = check_root(study.test_root, datasets_of_trials(trials))
    if any(t["config"]["eval"]["distance_units"] == "mm" for t in trials):  # refused before training, not after
        from medseg_platform.data.layout import AcdcLayout

        layout = AcdcLayout(study.test_root)
        mixed = layout.mixed_spacing(layout.test_cases)
        if mixed:
            raise DataError(f"--test-root {mixed}")
    return checked


def forget_other_test_root_errors(study: Study, trials: list[dict]) -> None:
    """Remove the trials' records of a failed scoring on an external test set that this run does not score (no
    ``--test-root``, or another one): the report would list them as this study's problems forever."""
    from medseg_platform.results import TEST_ROOT_ERROR_FILE

    current = str(study.test_root) if study.test_root is not None else None
    for trial in trials:
        path = trial_folder(study.study_dir, trial["key"]) / TEST_ROOT_ERROR_FILE
        recorded = read_json_object(path)
        if recorded is not None and (current is None or recorded.get("root") != current):
            path.unlink(missing_ok=True)


def lacks_test_root(study: Study, trial_dir: Path) -> bool:
    """A finished trial still to be scored on ``study.test_root`` (it finished before the flag was given, or with another root)."""
    if study.test_root is None:
        return False
    from medseg_platform.predict import needs_test_root_evaluation

    return needs_test_root_evaluation(trial_dir, study.test_root)


def check_fault_tolerance_options(study: Study, trials: list[dict], in_process_cuda: bool = False) -> None:
    """``max_retries`` and a trial's fp16 autocast without a GPU (none per trial, and not ``in_process_cuda``), before Ray
    starts (one-line :class:`ConfigError`)."""
    if isinstance(study.max_retries, bool) or not isinstance(study.max_retries, int) or study.max_retries < 0:
        raise ConfigError(f"--max-retries {study.max_retries!r}: must be a whole number >= 0")
    if study.gpus_per_trial <= 0 and not in_process_cuda and any(t["config"]["optim"].get("amp") == "fp16" for t in trials):
        raise ConfigError("optim.amp 'fp16' needs a CUDA GPU per trial: pass --gpus-per-trial 1 on a machine or cluster with "
                          "GPUs (`medseg train --in-process` uses this machine's), or train in bf16, which runs on CPUs too "
                          "(--amp bf16 in a study script, --set optim.amp=bf16 in medseg train)")


def check_ray_options(study: Study) -> None:
    """``address``, ``dashboard_host`` and ``optuna_storage`` (resolved in place), checked before Ray starts (one-line
    :class:`ConfigError`)."""
    if study.address is not None and not study.address.strip():
        raise ConfigError("--address '': empty; give HOST:PORT of the head node's GCS or 'auto', or drop the flag to run a "
                          "local Ray")
    warning = check_dashboard_host(study.dashboard_host)
    if study.dashboard_host != DEFAULT_DASHBOARD_HOST:
        if not study.dashboard or study.address or os.environ.get("RAY_ADDRESS"):
            raise ConfigError("--dashboard-host sets the dashboard of the local Ray this command starts; it has no effect with "
                              "--no-dashboard or when joining a cluster (--address/RAY_ADDRESS: use `ray start --dashboard-host` there)")
        check_dashboard_host_is_local(study.dashboard_host)
    if warning:
        log_line(warning)
    if study.optuna_storage is not None:
        if study.search_space is None:
            raise ConfigError("--optuna-storage records an Optuna search; this study is a grid (it has no search space)")
        path = resolve_path(study.optuna_storage, "--optuna-storage")
        if path.is_dir():
            raise ConfigError(f"--optuna-storage {path}: is a directory; give a file (e.g. {path / 'optuna.log'})")
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ConfigError(f"--optuna-storage {path}: {blocking} is a file, not a folder; give a path in a folder")
        if path.is_file() and not is_optuna_journal(path):
            raise ConfigError(f"--optuna-storage {path}: exists and is not an Optuna journal file; give a new path (or the "
                              "journal this search wrote)")
        study.optuna_storage = path


def shared_paths(study: Study, trials: list[dict], study_dir: Path) -> dict:
    """What every node of a cluster must see as this machine does (:func:`~medseg_platform.study.ray_runtime.check_nodes_see`),
    path -> (what it is, its bytes here): the study folder's lock file (it names this driver's process), each dataset's
    training list, and the external test root's."""
    from medseg_platform.data.layout import TRAIN_LIST, TEST_LIST
    from medseg_platform.io import LOCK_FILE

    lock = study_dir / LOCK_FILE  # written by this run's folder_lock (empty where the filesystem has no flock)
    paths = {str(lock): ("the study folder's lock file", lock.read_bytes())} if lock.is_file() else {}
    for root in sorted({str(Path(t["config"]["data"]["root"]).expanduser().resolve()) for t in trials}):
        paths[str(Path(root) / TRAIN_LIST)] = ("the dataset's list", (Path(root) / TRAIN_LIST).read_bytes())
    if study.test_root is not None:
        paths[str(Path(study.test_root) / TEST_LIST)] = ("--test-root's list", (Path(study.test_root) / TEST_LIST).read_bytes())
    return paths


# ---------------------------------------------------------------------------------------- Tune
def run_tune(study: Study, trials: list[dict], study_dir: Path, timing: dict, suffix: str, run_id: str = "") -> tuple[bool, bool]:
    """Run the trials as Tune experiment ``<name>-<suffix>``, restoring it if it exists; returns (restored, stopped by
    a signal: :func:`fit_until_stopped`).

    Fault tolerance: ``FailureConfig(max_failures=max_retries)`` restarts a trial whose worker process
    died from its last checkpoint (a restored experiment keeps the limit it was started with);
    :class:`~medseg_platform.progress.ProgressCallback` prints each retry.
    """
    with sigterm_handler_kept():  # Ray's start and shutdown change it
        return _run_tune(study, trials, study_dir, timing, suffix, run_id)


#: Environment variables a study sets for its Tune runs where they are unset; :func:`run_study` gives the session its
#: own environment back afterwards (the notebook probe: RAY_AIR_NEW_OUTPUT=0, which :func:`quiet_tune_resume_advice`
#: sets, changed the console of the session's later Tune runs of its own). The usage statistics off; one checkpoint per
#: validation is intended (Tune's "snapshotting triggered often" warning is noise here); no CSV, JSON or TensorBoard
#: copy of every report per trial in ray/ (the study reads its own result files, and the TensorBoard writer's threads
#: outlived an interrupted run in a notebook).
TUNE_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def _run_tune(study: Study, trials: list[dict], study_dir: Path, timing: dict, suffix: str, run_id: str = "") -> tuple[bool, bool]:
    """:func:`run_tune` with the SIGTERM handler it gives back."""
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    t0 = time.perf_counter()
    import ray
    from ray import tune

    from medseg_platform.progress import ProgressCallback
    from medseg_platform.step_costs import trial_plan
    from medseg_platform.study.distributed import TUNE_FUNCTION_CPU
    from medseg_platform.study.experiment_state import experiment_restorable, resumes_trials
    from medseg_platform.study.trainable import run_trial_in_tune

    timing["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from medseg_platform.plan import available_cpus

    # the CPUs the plan and check_local_resources counted (Ray's own count ignores a taskset affinity)
    started_here = init_ray(study.address, study.num_cpus if study.num_cpus is not None else available_cpus(), study.dashboard,
                            study.dashboard_host)
    timing["ray_init_s"] = time.perf_counter() - t0
    try:
        if joins_cluster(study.address):  # a cluster: its nodes must share the folders with this one, and write in it
            check_nodes_see(shared_paths(study, trials, study_dir), writable=(study_dir,))
        t0 = time.perf_counter()
        distributed = study.num_workers > 1
        trainable = tune.with_resources(
            tune.with_parameters(run_trial_in_tune, study_dir=str(study_dir), num_workers=study.num_workers,
                                 cpus_per_worker=study.cpus_per_trial, gpus_per_worker=study.gpus_per_trial, run_id=run_id,
                                 test_root=str(study.test_root) if study.test_root is not None else None),
            {"cpu": TUNE_FUNCTION_CPU} if distributed else {"cpu": study.cpus_per_trial, "gpu": study.gpus_per_trial},
        )
        name = f"{study.name}-{suffix}"
        storage = tune_storage(study_dir)
        exp_path = storage / name
        restored = experiment_restorable(exp_path)
        if not restored and exp_path.is_dir():  # stopped before Tune saved a state: nothing in it to resume (the trials'
            # own folders hold their checkpoints); Tune would restore its tuner.pkl and fail on the missing state
            log_line(f"the Tune experiment {exp_path} holds no saved state (the command was stopped before Tune saved one); "
                     "starting it again (the trials resume from their own folders)")
            shutil.rmtree(exp_path)
        quiet_tune_resume_advice()  # before Tuner.restore, which reads the metrics and warns as well
        limits = {"max_concurrent": study.max_concurrent, "max_retries": study.max_retries}
        if study.asha:
            from medseg_platform.study.asha import STATE_SUFFIX, bind_state_file

            bind_state_file(name, storage / f"{name}{STATE_SUFFIX}")
            if not restored:  # a new experiment of this name (its folder deleted): the old trials' rungs are not its own
                (storage / f"{name}{STATE_SUFFIX}").unlink(missing_ok=True)
        if restored:
            log_line(f"restoring Tune experiment {exp_path}")
            if study.search_space is not None or resumes_trials(exp_path, len(trials)):  # else its limits govern nothing
                note_kept_limits(storage / f"{name}{LIMITS_SUFFIX}", limits, search=study.search_space is not None)
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
        else:
            fits = distributed_trials_that_fit(study)
            write_json_atomic(storage / f"{name}{LIMITS_SUFFIX}", {**limits, "trials_that_fit": fits})
            # the progress lines' expected cost per trial; a search runs its base config num_samples times
            plans = [trial_plan(t["config"], t["key"], existed=trial_finished(trial_folder(study_dir, t["key"])),
                                scoring_only=lacks_test_root(study, trial_folder(study_dir, t["key"]))) for t in trials]
            plans = plans * (study.num_samples if study.search_space else 1)
            tuner = tune.Tuner(trainable, param_space=param_space(study, trials),
                               tune_config=tune_config(study, name, fits),
                               run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                                         callbacks=[ProgressCallback(plans, study_dir=str(study_dir),
                                                                                     stage_folders=stage_folders(trials))],
                                                         checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                                         failure_config=tune.FailureConfig(max_failures=study.max_retries)))
        try:
            interrupted, results = fit_until_stopped(tuner)
        except (OSError, EOFError) as exc:  # Tune's own files on a full disk (an empty error.pkl reads as EOFError)
            raise_if_disk_full(storage, exc)
            raise
        timing["tune_s"] = timing.get("tune_s", 0.0) + time.perf_counter() - t0
        if study.search_space is None and not interrupted:  # a stopped run's unfinished trials are not errored
            record_lost_workers(results, {t["key"]: t for t in trials}, study_dir, run_id)
    finally:
        if started_here:
            ray.shutdown()
    return restored, interrupted


#: Free space below which a failure of Tune's own files is put down to a full disk (its error files are then empty)
LOW_DISK_BYTES = 64 << 20


def raise_if_disk_full(storage: Path, exc: BaseException) -> None:
    """A one-line :class:`MedsegError` when ``exc`` (raised by Tune) comes from a full disk under ``storage``: an
    ``ENOSPC``/``EDQUOT`` error, or any failure while the disk holds less than :data:`LOW_DISK_BYTES`."""
    import errno

    try:
        free = shutil.disk_usage(storage).free
    except OSError:
        return
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < LOW_DISK_BYTES:
        raise MedsegError(f"{storage}: Ray Tune stopped on a full disk ({free >> 20} MiB free; {type(exc).__name__}: {exc}); "
                          "the finished trials are safe: free space and rerun the same command to resume") from None


#: beside a Tune experiment's folder: the limits it was started with, which ``Tuner.restore`` keeps (it takes no TuneConfig)
LIMITS_SUFFIX = ".limits.json"
_LIMIT_FLAGS = {"max_concurrent": "--max-concurrent", "max_retries": "--max-retries"}


def note_kept_limits(path: Path, limits: dict, search: bool = False) -> None:
    """Say which of ``limits`` (this command's) a restored experiment does not apply: Ray 2.60's ``Tuner.restore`` keeps
    the concurrency and retry limits the experiment was started with (recorded at ``path``; nothing is said for an
    experiment started before they were recorded). ``search``: a search's experiment holds its sampler's state, so
    the note does not offer starting a new one."""
    started = read_json_object(path) or {}
    kept = [f"{flag} {'unset' if started.get(key) is None else started[key]}" for key, flag in _LIMIT_FLAGS.items()
            if key in started and started[key] != limits[key]]
    if kept and started.get("trials_that_fit"):  # a multi-worker experiment also ran capped at what the cluster held
        kept.append(f"at most {started['trials_that_fit']} multi-worker trial(s) at once")
    if kept:
        advice = "" if search else (
            f"; to apply the new ones, delete the experiment's folder {path.with_name(path.name[:-len(LIMITS_SUFFIX)])} "
            "and rerun: the unfinished trials then continue from their checkpoints in a new experiment, and finished "
            "trials are kept")
        log_line(f"note: the restored experiment keeps the limits it was started with ({', '.join(kept)}); Tune cannot "
             f"change them on a resume{advice}")


def discard_experiment(study: Study, suffix: str) -> None:
    """Remove the Tune experiment ``<name>-<suffix>`` and its limits file. For a rerun's experiment: its name holds its
    run's id, so no later command restores it (the next one restores the study's own experiment and reruns in a new
    one), and its trials resume from their own folders' checkpoints; each rerun of a trial that kept erroring left
    one behind, with Tune's copies of the trials' checkpoints (the runner review)."""
    storage = tune_storage(study.study_dir)
    shutil.rmtree(storage / f"{study.name}-{suffix}", ignore_errors=True)
    (storage / f"{study.name}-{suffix}{LIMITS_SUFFIX}").unlink(missing_ok=True)


def stage_folders(trials: list[dict]) -> dict[str, str]:
    """Each pretraining stage of ``trials``: its identity in the progress plans (:func:`medseg_platform.step_costs.trial_plan`)
    -> its folder in the pretraining cache (:func:`medseg_platform.engine.stage_key`), for the ETA to know the cached
    ones; {} where the datasets' lists cannot be read here (the estimate then charges the stages, as before)."""
    from medseg_platform.config import TrialConfig
    from medseg_platform.engine import chain_keys
    from medseg_platform.step_costs import trial_plan

    folders: dict[str, str] = {}
    lists: dict = {}
    try:
        for trial in trials:
            stages = trial_plan(trial["config"], trial["key"]).stages
            keys = chain_keys(TrialConfig.from_dict(trial["config"]), lists) if stages else []
            folders.update({stage.stage: key for stage, key in zip(stages, keys)})
    except Exception:  # noqa: BLE001 - an estimate only: the run reads its data where it trains
        return {}
    return folders


def record_lost_workers(results, trials: Mapping[str, dict], study_dir: Path, run_id: str) -> None:
    """An ``error.json`` of run ``run_id`` for every grid trial that Tune ended as errored (``results``: the ResultGrid of
    the run) without one: a worker killed by a signal (the OOM killer, ``kill -9``) on its last retry writes none. The
    rerun of a restored experiment then took such a trial for one lost in an earlier run and started it again in a new
    experiment with retries of its own, beyond ``--max-retries`` (the runner review); the report now says why it
    errored."""
    for result in results or ():
        grid_trial = (getattr(result, "config", None) or {}).get("trial")
        trial = trials.get(grid_trial.get("key")) if isinstance(grid_trial, Mapping) else None
        error = getattr(result, "error", None)
        if trial is None or error is None:
            continue
        folder = trial_folder(study_dir, trial["key"])
        if errored_in_run(folder, run_id) or trial_finished(folder):
            continue
        from medseg_platform.study.trainable import failure_text

        text = failure_text(error) if str(error).strip() else f"{type(error).__name__}: its worker died"
        write_trial_error(folder, config=trial["config"], tags=trial["tags"], seed=int(trial["config"].get("seed", 0)),
                          error=text, kind="infrastructure", run=run_id)


def fit_until_stopped(tuner) -> tuple[bool, Any]:
    """``tuner.fit()``: (True if a stop signal ended it early (Ctrl-C / SIGINT, or SIGTERM, which is turned into one), the
    ResultGrid it returned).

    Tune catches the first SIGINT itself: it ends the run, saves the experiment state and returns normally. Its handler
    then puts back the SIGINT handler installed before ``fit`` (and only then), so a marker handler installed here and
    found in place afterwards means the run was stopped. SIGTERM is mapped to SIGINT while Tune runs, so ``kill`` gets
    the same clean stop (Ray's own handler would abort the driver). Outside the main thread, or with Tune's handler
    disabled (``TUNE_DISABLE_SIGINT_HANDLER``), a Ctrl-C is a KeyboardInterrupt and this returns False.
    """
    import signal
    import threading

    quiet_tune_resume_advice()
    if threading.current_thread() is not threading.main_thread() or int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")):
        return False, tuner.fit()

    def stop_marker(signum, frame):  # a Ctrl-C after Tune's own handler stepped aside: Python's default
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, stop_marker)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        results = tuner.fit()
        return signal.getsignal(signal.SIGINT) is stop_marker, results
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_tune_resume_advice() -> None:
    """Silence Tune's per-start console box (see the body) and two Tune warnings that mislead here after a stop (once
    per process): "Experiment has been interrupted
    ... Resume experiment with: Tuner.restore(...)" (this study resumes by rerunning its command, which
    :func:`run_study` says), and "Failed to fetch metrics for N trial(s)" with a FileNotFoundError per trial that had
    not reported yet (the study reads its own result files, never Tune's). Also Optuna's "The reported value is ignored
    because this step N is already reported", which a restored search prints for the samples it resumes."""
    import warnings

    warnings.filterwarnings("ignore", message="The reported value is ignored because this", category=UserWarning)
    # Tune's newer console output prints a configuration box and a TensorBoard hint into Ray's session folder at each
    # start, whatever the verbosity; its older output is silent at verbose=0, and the study prints its own progress
    # lines (progress.ProgressCallback). RAY_AIR_NEW_OUTPUT=1 in the environment keeps Tune's.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name, prefix in (("ray.tune.tune", "Experiment has been interrupted"),
                         ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics for")):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


def param_space(study: Study, trials: list[dict]) -> dict:
    """Tune's param space: a grid over the trials, or the first trial plus the search space's domains."""
    from ray import tune

    if study.search_space is None:
        return {"trial": tune.grid_search(trials)}
    return {"trial": trials[0], "search": dict(study.search_space)}


def distributed_trials_that_fit(study: Study) -> int | None:
    """How many multi-worker trials the connected Ray cluster holds at once (None for single-worker trials).

    A multi-worker trial's Tune function reserves a token CPU (``TUNE_FUNCTION_CPU``) and asks Ray Train for its
    workers only once it runs, so Tune would start as many trials as there are token CPUs, and their worker groups
    then wait for each other's CPUs forever (2 trials of 2 one-CPU workers on 2 CPUs: neither starts). The cap counts
    the workers each alive node holds (a worker's CPUs and GPUs lie on one node; a trial's workers may spread over
    nodes) and divides by the workers of a trial, at least 1; ``--max-concurrent`` lowers it further. A local Ray too
    small for one trial was refused before it started (:func:`check_local_resources`, ``check_gpus_available``); a
    cluster that holds none yet (autoscaling) gets a warning and one trial at a time."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    per_worker = {kind: amount for kind, amount in (("CPU", study.cpus_per_trial), ("GPU", study.gpus_per_trial)) if amount > 0}
    if study.num_workers <= 1:
        if not any(all(node.get(kind, 0.0) + 1e-9 >= amount for kind, amount in per_worker.items()) for node in nodes):
            # a joined cluster (a local Ray too small, this command's or one this process started, was refused before
            # the run: check_local_resources): Tune waits for one to appear
            nodes_text = "; ".join(", ".join(f"{node.get(kind, 0.0):g} {kind}s" for kind in per_worker) for node in nodes) or "none"
            log_line("warning: a trial needs " + " and ".join(f"{amount:g} {kind}s" for kind, amount in per_worker.items())
                 + f" on one node, and no node of the Ray cluster holds that now (its nodes: {nodes_text}); waiting for the "
                 "cluster to grow. A cluster that cannot grow never starts a trial: stop with Ctrl-C and ask for less "
                 "(--cpus-per-trial/--gpus-per-trial)")
        return None
    workers = sum(min(int(node.get(kind, 0.0) / amount + 1e-9) for kind, amount in per_worker.items()) for node in nodes)
    slots = workers // study.num_workers
    totals = {kind: sum(node.get(kind, 0.0) for node in nodes) for kind in per_worker}
    if slots < 1:
        need = " and ".join(f"{amount * study.num_workers:g} {kind}s ({study.num_workers} workers x {amount:g})"
                            for kind, amount in per_worker.items())
        nodes_text = "; ".join(", ".join(f"{node.get(kind, 0.0):g} {kind}s" for kind in per_worker) for node in nodes) or "none"
        short = (f"--num-workers {study.num_workers}: a trial needs {need}, the Ray cluster's nodes hold {workers} such "
                 f"worker(s) (its nodes: {nodes_text})")
        if joins_cluster(study.address):  # an autoscaling cluster may add nodes: Ray decides (also one this process joined)
            log_line(f"warning: {short} now; one trial at a time, waiting for the cluster to grow. A cluster that cannot grow "
                 "never starts it: stop with Ctrl-C and use fewer workers or less per worker (--cpus-per-trial/--gpus-per-trial)")
            return 1
        raise ConfigError(f"{short}; use fewer workers or less per worker (--cpus-per-trial/--gpus-per-trial)")
    if study.max_concurrent is None or study.max_concurrent > slots:
        have = ", ".join(f"{totals[kind]:g} {kind}s" for kind in per_worker)
        need = ", ".join(f"{amount * study.num_workers:g} {kind}s" for kind, amount in per_worker.items())
        log_line(f"multi-worker trials: {slots} at once (the cluster's {have} on {len(nodes)} node(s) at {need} per trial)")
    return slots


def tune_config(study: Study, experiment: str, fits: int | None = None):
    """Tune's config; with a search, Optuna TPE whose study is named ``experiment`` (the Tune experiment's name).
    ``fits``: how many trials the cluster holds at once (:func:`distributed_trials_that_fit`), a cap on top of
    ``max_concurrent``."""
    from ray import tune

    search_alg = scheduler = None
    if study.search_space is not None:
        from medseg_platform.study.tpe import TPESearch

        search_alg = TPESearch(metric=study.metric, mode=study.mode, seed=int(study.seeds[0]), study_name=experiment,
                               storage=optuna_journal(study.optuna_storage) if study.optuna_storage is not None else None,
                               study_folder=str(study.study_dir))
    if study.asha:
        from medseg_platform.study.asha import ResumableASHA

        # time = ASHA_TIME: one per validation, then the final report after the result files are written (the
        # progress-only reports repeat the count of the last validation and its metric: ASHA records a rung once).
        # ASHA ends a trial that reaches max_t, so max_t must count that final report too. The skipped and errored
        # reports carry no ASHA_TIME: ASHA ignores them.
        validations = -(-study.base.optim.max_steps // study.base.eval.val_every)
        scheduler = ResumableASHA(experiment, metric=study.metric, mode=study.mode, time_attr=ASHA_TIME,
                                  max_t=validations + 1, grace_period=1)  # its rungs survive a resume (study/asha.py)
    metric_mode = {} if (search_alg or scheduler) else {"metric": study.metric, "mode": study.mode}
    limit = study.max_concurrent if fits is None else min(fits, study.max_concurrent or fits)
    return tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=study.num_samples if study.search_space else 1,
                           max_concurrent_trials=limit, reuse_actors=True, **metric_mode)
