"""The Tune function trainable (:func:`run_trial_in_tune`) and the one function that trains a rank of a trial and
writes its results (:func:`train_and_record`), shared by single-worker trials, every Ray Train worker of a
multi-worker trial (:mod:`medseg_platform.study.distributed`) and ``medseg train --in-process``.

A trial runs single-process in the Tune actor (no TorchTrainer start-up cost) unless it has several workers. It
reports with ``ray.tune.report`` (with the engine's checkpoint) and writes its result files
(:mod:`medseg_platform.results`), which are the source of truth.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from medseg_platform.config import TrialConfig
from medseg_platform.errors import MedsegError
from medseg_platform.io import write_json_atomic
from medseg_platform.results import (CHECKPOINT_FILE, ERROR_FILE, TEST_ROOT_ERROR_FILE, CorruptResult, checkpoint_folder, checkpoint_path,
                                     drop_test_root_results, pretrain_cache_dir, ray_train_storage, read_trial,
                                     search_trial_key, start_attempt, trial_folder, write_trial_config, write_trial_error,
                                     write_trial_results)
from medseg_platform.study.spec import ASHA_TIME, METRIC


def train_and_record(config: dict, tags: Mapping, trial_dir: Path, pretrain_cache: Path, *, report=None, dist=None,
                     device=None, log: Callable[[str], None] | None = None, extra: Mapping | None = None) -> dict | None:
    """Train this process's rank of the trial ``config`` in ``trial_dir`` (:func:`medseg_platform.engine.train_trial`:
    pretraining stages shared through ``pretrain_cache``, resumed from the trial's checkpoint) and, on the main rank,
    write its result files (:func:`medseg_platform.results.write_trial_results`, with ``extra``).

    ``report``/``dist``/``device``/``log`` go to ``train_trial`` (``dist`` None: a single-process trial). Returns the
    result record; None on the other ranks of a multi-worker trial. Errors propagate (the caller classifies them:
    :func:`application_error`).
    """
    from medseg_platform.engine import train_trial

    cfg = TrialConfig.from_dict(config)
    outcome = train_trial(cfg, trial_dir, report=report, log=log, dist=dist, device=device, pretrain_cache=pretrain_cache)
    if dist is not None and not dist.is_main:
        return None
    return write_trial_results(trial_dir, config=config, tags=tags, outcome=outcome, seed=cfg.seed, extra=extra)


def trial_config_and_key(params: Mapping, tune_trial_id: str) -> tuple[dict, str]:
    """The configuration a Tune trial trains and its folder key, from its Tune params (``{"trial": {...}, "search":
    {...}}``): a grid trial's own; an Optuna sample's config with the sampled values applied, keyed by
    :func:`medseg_platform.results.search_trial_key` with Tune's trial id (the progress lines find its folder so too)."""
    trial = params["trial"]
    config = dict(trial["config"])
    search = dict(params.get("search") or {})
    if not search:
        return config, trial["key"]
    config = TrialConfig.from_dict({**config, **search}).to_dict()
    return config, search_trial_key(config, tune_trial_id)


def run_trial_in_tune(params: dict, study_dir: str, num_workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                      run_id: str = "", test_root: str | None = None) -> None:
    """The Tune function trainable: one trial, in-process, or on ``num_workers`` Ray Train workers.

    Failures. An *application error* (a :class:`MedsegError`, whichever floor raised it: NaN/inf loss, bad config or
    data, an unreadable checkpoint) is deterministic: it is written to ``error.json`` (kind ``application``, with the
    step and terms of a NaN) and the trial **ends normally** with an ``errored: True`` report, so Tune spends no retry
    on it, the study goes on, and the progress line and the summary count it as errored. Anything else (an
    exception of another type, or the worker process dying, which never reaches this code) is an
    *infrastructure failure*: recorded (kind ``infrastructure``) and re-raised, so Tune restarts the trial
    from its last checkpoint while ``Study.max_retries`` lasts. Each start is counted in ``attempts.json``
    (before training) and ``result.json`` records the count. ``run_id`` marks this study run's error files.
    ``test_root``: after the trial's own test evaluation (or, for a trial finished earlier, instead of training), its
    selected weights are scored on that dataset's test split (:func:`score_test_root`).
    An Optuna sample that trains as a finished trial of the results folder did (the same configuration in another
    search under ``--name``, or a value proposed twice; :mod:`medseg_platform.rescore`) is scored from that trial's
    checkpoint instead of trained (:func:`score_sample_from_finished`).
    """
    from ray import tune

    trial = params["trial"]
    search = dict(params.get("search") or {})
    config, key = trial_config_and_key(params, tune.get_context().get_trial_id())
    tags = {**trial["tags"], **({"search": search} if search else {})}
    trial_dir = trial_folder(study_dir, key)
    own_device = trial_device(gpus_per_worker if num_workers == 1 else 0.0)  # the Tune function of a multi-worker trial holds no GPU
    try:
        cfg = TrialConfig.from_dict(config)
        cfg.validate(check_data=False)
    except MedsegError as exc:
        end_errored(trial_dir, config, tags, int(config.get("seed", 0)), exc, run_id)
        return

    try:
        existing = read_trial(trial_dir)
    except CorruptResult:
        existing = None
    if existing is not None:  # finished before (e.g. the driver died before Tune saved its state, or a new --test-root)
        score_test_root(trial_dir, test_root, key, own_device)
        tune.report({"step": cfg.optim.max_steps, METRIC: existing.result["best_val_dice"], "test_dice": existing.result["test"]["mean"]["dice"], "done": True, "skipped": True})
        return
    if search:  # a sample that trains as a finished trial did (another search's under --name, a proposal made twice)
        record = score_sample_from_finished(study_dir, key, config, tags, trial_dir, own_device.type,
                                            report=lambda metrics: tune.report({**metrics, METRIC: metrics["best_val_dice"]}))
        if record is not None:
            score_test_root(trial_dir, test_root, key, own_device)
            tune.report({**final_report(cfg, record), "rescored": True})  # its progress line says so (the search walkthrough)
            return

    attempt = start_attempt(trial_dir)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and not checkpoint_path(trial_dir).is_file():
        with checkpoint.as_directory() as src:
            copy_checkpoint_in(Path(src), checkpoint_folder(trial_dir))

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        tune.report({**metrics, METRIC: metrics["best_val_dice"]}, checkpoint=ckpt)

    write_trial_config(trial_dir, config, tags)
    (trial_dir / ERROR_FILE).unlink(missing_ok=True)  # a retry of an errored trial starts clean
    (trial_dir / TEST_ROOT_ERROR_FILE).unlink(missing_ok=True)
    if attempt > 1:
        print(f"[{key}] attempt {attempt}: resuming from the trial's last checkpoint", flush=True)
    try:
        if num_workers > 1:
            from medseg_platform.study.distributed import run_distributed_trial

            run_distributed_trial(config, tags, trial_dir, pretrain_cache_dir(study_dir), ray_train_storage(study_dir),
                                  num_workers, cpus_per_worker, gpus_per_worker)
            record = _read_written_trial(trial_dir).result
        else:
            from medseg_platform.study.ray_runtime import trial_placement

            record = train_and_record(config, tags, trial_dir, pretrain_cache_dir(study_dir), report=report,
                                      device=own_device, log=lambda msg: print(f"[{key}] {msg}", flush=True),
                                      extra={"placement": trial_placement()})
    except Exception as exc:  # the reason goes into the trial's files (Ray wraps workers' errors)
        app = application_error(exc)
        if app is not None:
            end_errored(trial_dir, config, tags, cfg.seed, app, run_id)
            return
        message = failure_text(exc)
        try:
            write_trial_error(trial_dir, config=config, tags=tags, seed=cfg.seed, error=message, kind="infrastructure", run=run_id)
        except OSError:  # the record cannot be written (a full disk): the trial's own error must still reach Tune
            pass
        raise  # Tune retries it from the last checkpoint (FailureConfig), or marks it errored when no retry is left
    score_test_root(trial_dir, test_root, key, own_device)
    tune.report(final_report(cfg, record))


def trial_device(gpus_per_worker: float):
    """The device a single-worker trial trains and tests on: a GPU when Ray gave it one, else the CPU. Ray 2.60 no
    longer hides a machine's GPUs from an actor that asked for none (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` is off), so
    ``torch.cuda.is_available()`` said nothing about the trial: every trial of a study without ``--gpus-per-trial``
    trained on GPU 0, crowding it beside what Ray counted as free (the GPU-path audit)."""
    import torch

    from medseg_platform.rescore import scoring_device

    return torch.device(scoring_device(gpus_per_worker))


def final_report(cfg: TrialConfig, record: Mapping) -> dict:
    """The last report of a trial whose result files are written (trained or scored): its selected val Dice and test
    Dice, ``done``, and ASHA's time one past the last validation (ASHA ends a trial that reaches ``max_t``)."""
    return {"step": cfg.optim.max_steps, METRIC: record["best_val_dice"], "best_val_dice": record["best_val_dice"],
            "test_dice": record["test"]["mean"]["dice"], "done": True, ASHA_TIME: -(-cfg.optim.max_steps // cfg.eval.val_every) + 1}


def score_sample_from_finished(study_dir: str, key: str, config: dict, tags: dict, trial_dir: Path, device,
                               report: Callable[[dict], None]) -> dict | None:
    """An Optuna sample scored from a finished trial of the results folder that trains alike
    (:mod:`medseg_platform.rescore`; the search's samples cannot be scored before Tune proposes them): its result record,
    or None when there is none or the scoring failed (the sample then trains). ``device``: the one the sample tests on.

    First ``report`` replays the finished trial's validations (val Dice and the selected one so far, ``evaluations``
    1, 2, ...), as the sample's own training would report them, so ASHA meets it at every rung and can stop it there
    as it would have stopped the training; Tune ends a stopped function at its report, before anything is written."""
    from medseg_platform.engine.trial import recorded_validations
    from medseg_platform.rescore import score_logged, scoring_sources
    from medseg_platform.results import VAL_CURVE_FILE, read_csv

    sample = {"key": key, "config": config, "tags": tags}
    source = scoring_sources(Path(study_dir), [sample]).get(key)
    if source is None:
        return None
    selection = TrialConfig.from_dict(config).eval.selection
    for count, step, value, selected in recorded_validations(read_csv(source.folder / VAL_CURVE_FILE), selection):
        report({"step": step, "val_dice": value, "best_val_dice": selected, "done": False, ASHA_TIME: count})
    return score_logged(source, sample, trial_dir, device, lambda message: print(message, flush=True))


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def failure_text(exc: BaseException) -> str:
    """One line on an infrastructure failure for ``error.json`` and the report: the exception's type and first line, or,
    where a Ray Train ``WorkerGroupError`` (also wrapped in Ray's task error) carries its per-rank ``worker_failures``,
    each failed rank's own exception, ``rank 1: RuntimeError: ...``. A multi-worker trial's record said only
    "WorkerGroupError: Training failed due to worker errors:", naming neither the rank nor the error (the DDP review)."""
    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        failures = getattr(error, "worker_failures", None)
        if isinstance(failures, Mapping) and failures:
            ranks = []
            for rank, failure in sorted(failures.items()):  # the ranks (ints): rank 2 before rank 10
                cause = getattr(failure, "cause", None)  # a RayTaskError holds the worker's own exception
                ranks.append(f"rank {rank}: {_first_line(cause if isinstance(cause, BaseException) else failure)}")
            return f"{type(error).__name__}: " + "; ".join(ranks)
        stack += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return _first_line(exc)


def application_error(exc: BaseException) -> MedsegError | None:
    """The deterministic application error behind ``exc``, or None for an infrastructure failure.

    An application error is any :class:`MedsegError` (:mod:`methods.errors`; the objectives' ``ConfigError`` and
    ``DataError`` at run time included). Looks at ``exc`` itself, its cause/context chain, Ray's wrappers
    (``RayTaskError.as_instanceof_cause``) and a Ray Train ``WorkerGroupError``'s per-rank ``worker_failures`` (a
    multi-worker trial's NaN). A full disk (``ENOSPC``, ``EDQUOT``) counts as one: a retry fails the same way (a probe's
    trial was retried twice, then the driver died on Ray's empty error file), while a rerun after freeing space resumes.
    """
    import errno

    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, MedsegError):
            return error
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({error.filename})" if error.filename else ""
            return MedsegError(f"no space left on the device{where}: free space, then rerun the same command to resume the "
                               "trial from its last checkpoint")
        stack += [error.__cause__, error.__context__, getattr(error, "cause", None)]
        stack += list((getattr(error, "worker_failures", None) or {}).values())
        unwrap = getattr(error, "as_instanceof_cause", None)
        if callable(unwrap):
            try:
                stack.append(unwrap())
            except Exception:  # noqa: BLE001 - a wrapper that cannot rebuild its cause is simply not unwrapped
                pass
    return None


def score_test_root(trial_dir: Path, test_root: str | None, key: str, device=None) -> None:
    """Score a finished trial's selected weights on the external test set ``test_root`` unless it already was
    (:func:`medseg_platform.predict.evaluate_on_test_root`). A deterministic error (e.g. its checkpoint is unreadable)
    is recorded in ``test_root_error.json`` (the report lists it among the problems; Ray does not show the trial's
    prints) and the trial stays finished; the next successful scoring removes the file."""
    if test_root is None:
        return
    from medseg_platform.predict import evaluate_on_test_root, has_test_root_evaluation

    error_file = Path(trial_dir) / TEST_ROOT_ERROR_FILE
    if has_test_root_evaluation(trial_dir, test_root):
        error_file.unlink(missing_ok=True)
        return
    try:
        block = evaluate_on_test_root(trial_dir, test_root, device=device)
    except MedsegError as exc:
        print(f"[{key}] external test set {test_root} not evaluated: {exc}", flush=True)
        drop_test_root_results(trial_dir)  # an evaluation of what the root held before is not tabled as this one's
        write_json_atomic(error_file, {"root": str(test_root), "error": str(exc)})
        return
    error_file.unlink(missing_ok=True)
    print(f"[{key}] external test set {test_root}: mean Dice {block['test']['mean']['dice']:.4f} "
          f"over {block['num_test_cases']} cases", flush=True)


def copy_checkpoint_in(src: Path, dest: Path) -> None:
    """Copy Tune's copy of a trial checkpoint (``src``) into the trial's checkpoint folder ``dest``: into a staging folder
    beside it first, then each file renamed into place, the checkpoint itself last. A kill during the copy used to
    leave a truncated ``checkpoint.pt``, which then failed every resume (the security audit)."""
    import tempfile

    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}-incoming-*"):  # a copy killed before: never read, removed now
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-incoming-", dir=dest.parent))  # not inside: Tune copies dest
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == CHECKPOINT_FILE)
        for path in files:
            target = dest / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_written_trial(trial_dir: Path, wait_s: float = 30.0):
    """The trial record rank 0 of a multi-worker trial just wrote, maybe on another node: a network filesystem may
    answer "no such file" for a while after this process looked the file up as missing (NFS caches a negative
    lookup for up to ``acdirmax``, 60 s by default), so a missing record is looked up again for ``wait_s`` seconds
    before it counts as missing (the cluster audit)."""
    import time

    deadline = time.monotonic() + wait_s
    while (record := read_trial(trial_dir)) is None:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{trial_dir}: the multi-worker trial ended without its result.json (rank 0 writes it)")
        time.sleep(1.0)
    return record


def end_errored(trial_dir: Path, config: dict, tags: dict, seed: int, exc: MedsegError, run_id: str) -> None:
    """Record an application error and end the Tune trial normally with an ``errored`` report (never retried)."""
    from ray import tune

    step = getattr(exc, "step", None)
    details = {"step": step, "terms": list(getattr(exc, "terms", ()))} if step is not None else {}
    try:
        write_trial_error(trial_dir, config=config, tags=tags, seed=seed, error=str(exc), kind="application", details=details,
                          run=run_id)
    except OSError:  # a full disk takes no error file either: the report below carries the reason
        pass
    print(f"[{trial_dir.name}] ERRORED (not retried: the error is deterministic): {exc}", flush=True)
    nan = float("nan")
    tune.report({"step": step if step is not None else 0, METRIC: nan, "best_val_dice": nan, "test_dice": nan, "done": True,
                 "errored": True, "error": str(exc)})
