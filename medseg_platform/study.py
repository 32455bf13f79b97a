"""A Study: many trials of one base config, run as a Ray Tune experiment.

A :class:`Study` is a base :class:`TrialConfig`, a list of *variants* (rows of a table: a tag dict plus
dotted-key overrides), grid axes (dotted key -> values), a seeds axis, optionally an Optuna TPE search
space, the metric/mode, an optional ASHA scheduler and the resources per trial. :meth:`Study.run`:

1. expands and validates every trial config **before Ray starts** (one-line :class:`ConfigError`);
2. skips Ray entirely when every trial already has a complete ``result.json`` (rerun = rebuild tables; a search always restores its Tune experiment, whose samples Optuna decides);
3. starts a local Ray (dashboard on ``dashboard_host``, 127.0.0.1 by default: :mod:`medseg_platform.dashboard`)
   or joins ``address`` / ``RAY_ADDRESS``;
4. runs or, if the experiment exists, restores (``Tuner.can_restore`` / ``Tuner.restore``) the Tune
   experiment ``<name>-<spec hash>`` under ``<results>/<name>/ray``. A changed spec gets a new experiment
   name; trials whose configs did not change are still reused from their result files.

Each trial is the function trainable :func:`run_trial_in_tune`: single-process, in the Tune actor, no
TorchTrainer start-up cost. It reports with ``ray.tune.report`` (with the engine's checkpoint) and writes
its result files (:mod:`medseg_platform.results`), which are the source of truth: a trial whose
``result.json`` is complete is never trained again, whatever Ray's state says.

Failures (see :func:`run_trial_in_tune`): deterministic application errors (NaN loss, bad config/data)
end the trial as errored without a retry; a dead worker is retried from its last checkpoint up to
``max_retries`` times; a killed driver or a corrupt result is handled by rerunning the same command.

External test set (``Study.test_root``, the study scripts' ``--test-root``): checked before Ray starts (same classes
as the study's data, data preflight) and scored by each trial after its own test evaluation; finished trials that
lack it are scored at the next run from their checkpoints, without training (:mod:`medseg_platform.predict`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medseg_platform.config import TrialConfig, resolve_path
from medseg_platform.dashboard import DEFAULT_DASHBOARD_HOST, check_dashboard_host, dashboard_message
from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.io import write_json_atomic
from medseg_platform.preflight import datasets_of_trials, preflight_datasets
from medseg_platform.results import (ERROR_FILE, CorruptResult, read_trial, search_trial_key, start_attempt, trial_key, write_trial_error,
                                     write_trial_results)

METRIC = "best_val_dice"
#: ASHA's time attribute: the evaluations a trial reported (one per validation, one for the final test report).
#: Not ``training_iteration``: the progress-only reports between validations advance that, and carry no new metric.
ASHA_TIME = "evaluations"


@dataclass(frozen=True)
class Variant:
    """One row of a study: ``tags`` (``row`` = its table label) and dotted-key config ``overrides``."""

    tags: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    base: TrialConfig
    results_dir: Path
    variants: Sequence[Variant] = (Variant({}),)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] = (1337,)
    search_space: Mapping[str, Any] | None = None  # Ray Tune domains, sampled by Optuna TPE
    num_samples: int = 1
    metric: str = METRIC
    mode: str = "max"
    asha: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_workers: int = 1  # > 1: each trial is a data-parallel Ray Train run (cpus/gpus_per_trial are per worker)
    max_concurrent: int | None = None
    address: str | None = None
    dashboard: bool = True
    num_cpus: int | None = None  # for a local Ray; None = all cores
    dashboard_host: str = DEFAULT_DASHBOARD_HOST  # local Ray only; not loopback = a warning (medseg_platform.dashboard)
    optuna_storage: Path | None = None  # search only: Optuna journal file the searched trials go to (optuna-dashboard PATH)
    max_retries: int = 2  # Tune retries of a trial whose worker died (infrastructure failures only; see run_trial_in_tune)
    claims: Sequence[Mapping[str, Any]] = ()  # papers' claims the report tests (medseg_platform.claims_spec.claim); not in spec_hash
    test_root: Path | None = None  # external test set: each trial's selected weights are also scored on its test split

    # -- expansion and validation (no Ray) ------------------------------------------------------
    def trial_params(self) -> list[dict]:
        """Every grid trial as ``{"config": dict, "tags": dict, "key": str}``, validated."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name or ""):
            raise ConfigError(f"study name {self.name!r}: use letters, digits, '-' and '_' only")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.num_workers < 1 or self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("num_workers must be >= 1, cpus_per_trial > 0 and gpus_per_trial >= 0")
        if self.asha and self.search_space is None:
            raise ConfigError("asha: early stopping prunes trials for good; use it with a search space, not a grid")
        if self.search_space is not None and (len(self.variants) != 1 or len(self.seeds) != 1 or any(len(v) != 1 for v in self.grid.values())):
            raise ConfigError("an Optuna search runs over one variant and one seed; move other axes into the search space")
        axes = list(self.grid.items())
        trials, seen = [], set()
        for variant in self.variants:
            for values in itertools.product(*(v for _, v in axes)) if axes else [()]:
                for seed in self.seeds:
                    grid_values = dict(zip((k for k, _ in axes), values))
                    overrides = {**variant.overrides, **grid_values, "seed": int(seed), "workers": self.num_workers}
                    cfg = self.base.replace(**overrides)
                    tags = dict(variant.tags)
                    # the analysis reads "variant" (the row label before grid suffixes) and "axes" (every
                    # grid axis, plus the non-grid axes a study script puts in the variant's own "axes")
                    tags["variant"] = str(variant.tags.get("variant") or variant.tags.get("row", cfg.objective))
                    tags["axes"] = {**dict(variant.tags.get("axes") or {}), **grid_values}
                    # grid axes other than the label fraction (the tables' columns) are part of the row label,
                    # so different settings are never averaged into one cell
                    extra = [f"{k}={v}" for k, v in grid_values.items() if k != "data.labelled"]
                    if extra:
                        tags["row"] = f"{tags.get('row', cfg.objective)} ({', '.join(extra)})"
                    config = cfg.to_dict()
                    key = trial_key(config)
                    if key in seen:
                        raise ConfigError(f"study {self.name}: two trials resolve to the same config ({key}); remove the duplicate variant")
                    seen.add(key)
                    trials.append({"config": config, "tags": tags, "key": key})
        checked = set()
        for trial in trials:  # validation: data checks once per distinct data/labelled setting
            cfg = TrialConfig.from_dict(trial["config"])
            data_key = json.dumps([trial["config"]["data"], cfg.seed if cfg.data.labelled_strategy == "random" else 0], sort_keys=True)
            cfg.validate(check_data=data_key not in checked)
            checked.add(data_key)
        if self.search_space is not None:  # one sample of every domain must give a valid config, before Ray starts
            sample = {key: domain.sample() if hasattr(domain, "sample") else domain for key, domain in self.search_space.items()}
            TrialConfig.from_dict({**trials[0]["config"], **sample}).validate(check_data=False)
        return start_order(trials)

    def spec_hash(self, trials: list[dict]) -> str:
        """Names the Tune experiment: everything that changes what Tune would run or how."""
        search = {key: _describe_domain(domain) for key, domain in (self.search_space or {}).items()}
        spec = {"trials": [t["key"] for t in trials], "search": search, "n": self.num_samples, "metric": self.metric,
                "mode": self.mode, "asha": self.asha, "workers": self.num_workers, "cpus": self.cpus_per_trial,
                "gpus": self.gpus_per_trial}
        if self.optuna_storage is not None:  # a restored experiment keeps its searcher: with its storage, or without
            spec["optuna_storage"] = str(resolve_path(self.optuna_storage, "--optuna-storage"))
        if self.test_root is not None:  # a new external test set: a new experiment, whose finished trials only evaluate it
            spec["test_root"] = str(resolve_path(self.test_root, "--test-root"))
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]

    def description(self, trials: list[dict]) -> dict:
        """``study.json``: what the analysis needs besides the trial files (axes, variants, search, seeds, claims)."""
        return {"name": self.name, "trials": [t["key"] for t in trials], "seeds": list(self.seeds),
                "spec_hash": self.spec_hash(trials), "search": self.search_space is not None,
                "grid": {key: list(values) for key, values in self.grid.items()},
                "variants": [dict(v.tags) for v in self.variants],
                "search_space": {key: _describe_domain(d) for key, d in (self.search_space or {}).items()},
                "num_samples": self.num_samples if self.search_space is not None else 1,
                "metric": self.metric, "mode": self.mode, "asha": self.asha,
                "claims": [dict(c) for c in self.claims]}

    @property
    def study_dir(self) -> Path:
        return resolve_path(self.results_dir, "results dir") / self.name

    # -- running ---------------------------------------------------------------------------
    def run(self) -> "StudyRun":
        """Validate, run (or restore) on Ray, and return what finished; see the module docstring."""
        start = time.perf_counter()
        trials = self.trial_params()
        self._check_ray_options()
        self._check_fault_tolerance_options(trials)
        if self.gpus_per_trial > 0:
            check_gpus_available(self.address)
        test_datasets = self._check_test_root(trials)
        preflight_datasets(datasets_of_trials(trials) + test_datasets, self.study_dir)  # every data file read, before Ray starts
        study_dir = self.study_dir
        (study_dir / "trials").mkdir(parents=True, exist_ok=True)
        pending = [t for t in trials if not _finished(study_dir / "trials" / t["key"], warn=True)
                   or self._lacks_test_root(study_dir / "trials" / t["key"])]
        write_json_atomic(study_dir / "study.json", self.description(trials))
        _log(f"study {self.name}: {len(trials)} trial(s), {len(trials) - len(pending)} already finished -> {study_dir}")
        timing = {"validate_s": time.perf_counter() - start}
        if pending or self.search_space is not None:
            run_id = uuid.uuid4().hex[:12]  # marks the error.json files written by this run
            restored = self._run_tune(trials, study_dir, timing, self.spec_hash(trials), run_id)
            # A restored experiment re-runs only what Tune itself left unfinished or errored. Trials it
            # marked finished that have no valid result (folder deleted, corrupt result, an application error
            # in an earlier run: Tune saw those end normally) run again here, in a fresh experiment.
            left = [t for t in pending if (not _finished(study_dir / "trials" / t["key"]) or self._lacks_test_root(study_dir / "trials" / t["key"]))
                    and not _errored_in_run(study_dir / "trials" / t["key"], run_id)]
            if restored and left and self.search_space is None:
                _log(f"{len(left)} trial(s) that the restored experiment considers done have no result (lost, corrupt, or "
                     "errored in an earlier run): running them again")
                self._run_tune(left, study_dir, timing, f"rerun-{run_id}", run_id)
        timing["total_s"] = time.perf_counter() - start
        write_json_atomic(study_dir / "last_run.json", {"timing": timing, "pending_at_start": len(pending), "trials": len(trials),
                                                        "concurrency_cpus": self.num_cpus, "cpus_per_trial": self.cpus_per_trial,
                                                        "num_workers": self.num_workers})
        return StudyRun(self, study_dir, [t["key"] for t in trials], timing)

    def _check_test_root(self, trials: list[dict]) -> list[tuple[str, int]]:
        """``test_root`` resolved and checked before Ray starts (a dataset root with the trials' classes and a test
        split; one-line error otherwise); returns its ``(root, num_classes)`` for the data preflight ([] without one)."""
        if self.test_root is None:
            return []
        from medseg_platform.predict import check_test_root

        self.test_root = resolve_path(self.test_root, "--test-root")
        return check_test_root(self.test_root, datasets_of_trials(trials))

    def _lacks_test_root(self, trial_dir: Path) -> bool:
        """A finished trial still to be scored on ``test_root`` (it finished before the flag was given, or with another root)."""
        if self.test_root is None:
            return False
        from medseg_platform.predict import needs_test_root_evaluation

        return needs_test_root_evaluation(trial_dir, self.test_root)

    def _check_fault_tolerance_options(self, trials: list[dict]) -> None:
        """``max_retries`` and a trial's fp16 autocast without a GPU, before Ray starts (one-line :class:`ConfigError`)."""
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries!r}: must be a whole number >= 0")
        if self.gpus_per_trial <= 0 and any(t["config"]["optim"].get("amp") == "fp16" for t in trials):
            raise ConfigError("optim.amp 'fp16' needs a CUDA GPU per trial: pass --gpus-per-trial 1 (or use --amp bf16, which runs on CPU too)")

    def _run_tune(self, trials: list[dict], study_dir: Path, timing: dict, suffix: str, run_id: str = "") -> bool:
        """Run the trials as Tune experiment ``<name>-<suffix>``, restoring it if it exists; True if restored.

        Fault tolerance: ``FailureConfig(max_failures=max_retries)`` restarts a trial whose worker process
        died from its last checkpoint (a restored experiment keeps the limit it was started with);
        :class:`ProgressCallback` prints each retry.
        """
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # one checkpoint per validation is intended; Tune's "snapshotting triggered often" warning is noise here
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        t0 = time.perf_counter()
        import ray
        from ray import tune

        from medseg_platform.progress import ProgressCallback, trial_plan

        timing["import_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        started_here = init_ray(self.address, self.num_cpus, self.dashboard, self.dashboard_host)
        timing["ray_init_s"] = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            from medseg_platform.distributed import TUNE_FUNCTION_CPU

            distributed = self.num_workers > 1
            trainable = tune.with_resources(
                tune.with_parameters(run_trial_in_tune, study_dir=str(study_dir), num_workers=self.num_workers,
                                     cpus_per_worker=self.cpus_per_trial, gpus_per_worker=self.gpus_per_trial, run_id=run_id,
                                     test_root=str(self.test_root) if self.test_root is not None else None),
                {"cpu": TUNE_FUNCTION_CPU} if distributed else {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial},
            )
            name = f"{self.name}-{suffix}"
            storage = study_dir / "ray"
            exp_path = storage / name
            restored = tune.Tuner.can_restore(str(exp_path))
            if restored:
                _log(f"restoring Tune experiment {exp_path}")
                tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
            else:
                # the progress lines' expected cost per trial; a search runs its base config num_samples times
                plans = [trial_plan(t["config"], t["key"], existed=_finished(study_dir / "trials" / t["key"])) for t in trials]
                plans = plans * (self.num_samples if self.search_space else 1)
                tuner = tune.Tuner(trainable, param_space=self._param_space(trials), tune_config=self._tune_config(name),
                                   run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                                             callbacks=[ProgressCallback(plans)],
                                                             checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                                             failure_config=tune.FailureConfig(max_failures=self.max_retries)))
            tuner.fit()
            timing["tune_s"] = timing.get("tune_s", 0.0) + time.perf_counter() - t0
        finally:
            if started_here:
                ray.shutdown()
        return restored

    def _param_space(self, trials: list[dict]) -> dict:
        from ray import tune

        if self.search_space is None:
            return {"trial": tune.grid_search(trials)}
        return {"trial": trials[0], "search": dict(self.search_space)}

    def _check_ray_options(self) -> None:
        """``dashboard_host`` and ``optuna_storage``, checked before Ray starts (one-line :class:`ConfigError`)."""
        warning = check_dashboard_host(self.dashboard_host)
        if self.dashboard_host != DEFAULT_DASHBOARD_HOST and (not self.dashboard or self.address or os.environ.get("RAY_ADDRESS")):
            raise ConfigError("--dashboard-host sets the dashboard of the local Ray this command starts; it has no effect with "
                              "--no-dashboard or when joining a cluster (--address/RAY_ADDRESS: use `ray start --dashboard-host` there)")
        if warning:
            _log(warning)
        if self.optuna_storage is not None:
            if self.search_space is None:
                raise ConfigError("--optuna-storage records an Optuna search; this study is a grid (it has no search space)")
            path = resolve_path(self.optuna_storage, "--optuna-storage")
            if path.is_dir():
                raise ConfigError(f"--optuna-storage {path}: is a directory; give a file (e.g. {path / 'optuna.log'})")
            self.optuna_storage = path

    def _tune_config(self, experiment: str):
        """Tune's config; with a search, Optuna TPE whose study is named ``experiment`` (the Tune experiment's name)."""
        from ray import tune

        search_alg = scheduler = None
        if self.search_space is not None:
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric=self.metric, mode=self.mode, seed=int(self.seeds[0]), study_name=experiment,
                                      storage=optuna_journal(self.optuna_storage) if self.optuna_storage is not None else None)
        if self.asha:
            from ray.tune.schedulers import ASHAScheduler

            # time = ASHA_TIME: one per validation, then the final report after the result files are written (the
            # progress-only reports repeat the count of the last validation and its metric: ASHA records a rung once).
            # ASHA ends a trial that reaches max_t, so max_t must count that final report too. The skipped and errored
            # reports carry no ASHA_TIME: ASHA ignores them.
            if {"optim.max_steps", "eval.val_every"} & set(self.search_space or {}):
                raise ConfigError("asha: do not search optim.max_steps or eval.val_every (they set ASHA's time budget)")
            validations = -(-self.base.optim.max_steps // self.base.eval.val_every)
            scheduler = ASHAScheduler(metric=self.metric, mode=self.mode, time_attr=ASHA_TIME,
                                      max_t=validations + 1, grace_period=1)
        metric_mode = {} if (search_alg or scheduler) else {"metric": self.metric, "mode": self.mode}
        return tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=self.num_samples if self.search_space else 1,
                               max_concurrent_trials=self.max_concurrent, reuse_actors=True, **metric_mode)


@dataclass
class StudyRun:
    study: Study
    study_dir: Path
    trial_keys: list[str]
    timing: dict


def start_order(trials: list[dict]) -> list[dict]:
    """The trials in the order Tune should start them (it starts a grid in list order).

    Trials that share a first pretraining stage wait for each other on its cache lock (the first trains it,
    the others then load it), so two of them started side by side leave a slot idle for the whole stage.
    The order therefore starts the first trial of every distinct first stage (and every trial without
    pretraining) before the second trial of any stage, keeping the study's order otherwise. The stage is
    recognised by its settings, model, data, seed and workers (a superset of the cache key's fields: at
    worst two trials that could share a stage are treated as distinct, which only costs ordering).
    """
    seen: dict[str, int] = {}
    ranked = []
    for index, trial in enumerate(trials):
        config = trial["config"]
        rank = 0
        if config.get("pretrain"):
            stage = json.dumps([config["pretrain"][0], config.get("model"), config.get("data"), config.get("seed"),
                                config.get("workers")], sort_keys=True, default=str)
            rank = seen[stage] = seen.get(stage, -1) + 1
        ranked.append((rank, index, trial))
    return [trial for _, _, trial in sorted(ranked, key=lambda item: item[:2])]


def _describe_domain(domain: Any) -> str:
    """A stable text for a Tune search domain (type, bounds, sampler), for the experiment's name."""
    if not hasattr(domain, "sample"):
        return repr(domain)
    parts = [type(domain).__name__] + [f"{k}={getattr(domain, k)!r}" for k in ("lower", "upper", "categories") if hasattr(domain, k)]
    sampler = getattr(domain, "sampler", None)
    if sampler is not None:
        parts.append(type(sampler).__name__ + repr(sorted(vars(sampler).items(), key=str)))
    return " ".join(parts)


def pretrain_cache_dir(study_dir: str | Path) -> Path:
    """Finished pretraining stages, shared by every study under the same results directory."""
    return Path(study_dir).parent / "pretrain-cache"


def _finished(trial_dir: Path, warn: bool = False) -> bool:
    """True if ``trial_dir`` holds a complete result; a corrupt one (``warn``: printed, naming the file) is unfinished."""
    try:
        return read_trial(trial_dir) is not None
    except CorruptResult as exc:
        if warn:
            _log(f"warning: corrupt result {exc}; the trial will be run again")
        return False


def _errored_in_run(trial_dir: Path, run_id: str) -> bool:
    """True if the trial's ``error.json`` was written by study run ``run_id`` (not by an earlier run)."""
    try:
        return json.loads((trial_dir / ERROR_FILE).read_text(encoding="utf-8")).get("run") == run_id
    except (OSError, ValueError, AttributeError):
        return False


def application_error(exc: BaseException) -> MedsegError | None:
    """The deterministic application error behind ``exc``, or None for an infrastructure failure.

    Looks at ``exc`` itself, its cause/context chain, Ray's wrappers (``RayTaskError.as_instanceof_cause``)
    and a Ray Train ``WorkerGroupError``'s per-rank ``worker_failures`` (a multi-worker trial's NaN).
    """
    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, MedsegError):
            return error
        stack += [error.__cause__, error.__context__, getattr(error, "cause", None)]
        stack += list((getattr(error, "worker_failures", None) or {}).values())
        unwrap = getattr(error, "as_instanceof_cause", None)
        if callable(unwrap):
            try:
                stack.append(unwrap())
            except Exception:  # noqa: BLE001 - a wrapper that cannot rebuild its cause is simply not unwrapped
                pass
    return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_gpus_available(address: str | None) -> None:
    """A GPU request on a machine without one is an error before Ray starts (local runs only)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster's GPUs are checked by Ray's scheduler
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--gpus-per-trial > 0 but this machine has no CUDA GPU (run on a GPU node, join a cluster with --address, or use 0)")


def optuna_journal(path: Path):
    """Optuna's journal file storage at ``path`` (parent folders created): safe with parallel writers, unlike SQLite.

    OptunaSearch (Ray 2.60) takes it as ``storage``; ``optuna-dashboard PATH`` shows the study.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool, dashboard_host: str = DEFAULT_DASHBOARD_HOST) -> bool:
    """Join ``address``/``RAY_ADDRESS`` or start a local Ray (dashboard on ``dashboard_host``). True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                       object_store_memory=1 << 30, log_to_driver=False, configure_logging=False)
    if dashboard and getattr(context, "dashboard_url", None):
        _log(dashboard_message(context.dashboard_url))
    return True


def trial_placement() -> dict:
    """Where this trial ran, recorded in its ``result.json``: Ray node id, host name, node IP and process id."""
    import socket

    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "hostname": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}


def run_trial_in_tune(params: dict, study_dir: str, num_workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                      run_id: str = "", test_root: str | None = None) -> None:
    """The Tune function trainable: one trial, in-process (see the module docstring).

    Failures. An *application error* (a :class:`MedsegError`: NaN/inf loss, bad config or data, an unreadable
    checkpoint) is deterministic: it is written to ``error.json`` (kind ``application``, with the step and
    terms of a NaN) and the trial **ends normally** with an ``errored: True`` report, so Tune spends no retry
    on it, the study goes on, and the progress line and the summary count it as errored. Anything else (an
    exception of another type, or the worker process dying, which never reaches this code) is an
    *infrastructure failure*: recorded (kind ``infrastructure``) and re-raised, so Tune restarts the trial
    from its last checkpoint while ``Study.max_retries`` lasts. Each start is counted in ``attempts.json``
    (before training) and ``result.json`` records the count. ``run_id`` marks this study run's error files.
    ``test_root``: after the trial's own test evaluation (or, for a trial finished earlier, instead of training), its
    selected weights are scored on that dataset's test split (:func:`_score_test_root`).
    """
    from ray import tune

    trial = params["trial"]
    config = dict(trial["config"])
    search = dict(params.get("search") or {})
    if search:  # an Optuna sample: apply the sampled values, key the trial by the resulting config
        config = TrialConfig.from_dict({**config, **search}).to_dict()
    tags = {**trial["tags"], **({"search": search} if search else {})}
    key = search_trial_key(config, tune.get_context().get_trial_id()) if search else trial["key"]
    trial_dir = Path(study_dir) / "trials" / key
    try:
        cfg = TrialConfig.from_dict(config)
        cfg.validate(check_data=False)
    except MedsegError as exc:
        _end_errored(trial_dir, config, tags, int(config.get("seed", 0)), exc, run_id)
        return

    try:
        existing = read_trial(trial_dir)
    except CorruptResult:
        existing = None
    if existing is not None:  # finished before (e.g. the driver died before Tune saved its state, or a new --test-root)
        _score_test_root(trial_dir, test_root, key)
        tune.report({"step": cfg.optim.max_steps, METRIC: existing.result["best_val_dice"], "test_dice": existing.result["test"]["mean"]["dice"], "done": True, "skipped": True})
        return

    attempt = start_attempt(trial_dir)
    checkpoint = tune.get_checkpoint()
    own = trial_dir / "checkpoint"
    if checkpoint is not None and not (own / "checkpoint.pt").is_file():
        with checkpoint.as_directory() as src:
            shutil.copytree(src, own, dirs_exist_ok=True)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        tune.report({**metrics, METRIC: metrics["best_val_dice"]}, checkpoint=ckpt)

    from medseg_platform.engine import train_trial

    write_json_atomic(trial_dir / "config.json", {"config": config, "tags": tags})
    (trial_dir / ERROR_FILE).unlink(missing_ok=True)  # a retry of an errored trial starts clean
    if attempt > 1:
        print(f"[{key}] attempt {attempt}: resuming from the trial's last checkpoint", flush=True)
    try:
        if num_workers > 1:
            from medseg_platform.distributed import run_distributed_trial

            run_distributed_trial(config, tags, trial_dir, Path(study_dir) / "ray-train", num_workers, cpus_per_worker, gpus_per_worker)
            record = read_trial(trial_dir).result
        else:
            outcome = train_trial(cfg, trial_dir, report=report, log=lambda msg: print(f"[{key}] {msg}", flush=True),
                                  pretrain_cache=pretrain_cache_dir(study_dir))
            record = write_trial_results(trial_dir, config=config, tags=tags, outcome=outcome, seed=cfg.seed, extra={"placement": trial_placement()})
    except Exception as exc:  # the reason goes into the trial's files (Ray wraps workers' errors)
        app = application_error(exc)
        if app is not None:
            _end_errored(trial_dir, config, tags, cfg.seed, app, run_id)
            return
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        write_trial_error(trial_dir, config=config, tags=tags, seed=cfg.seed, error=message, kind="infrastructure", run=run_id)
        raise  # Tune retries it from the last checkpoint (FailureConfig), or marks it errored when no retry is left
    _score_test_root(trial_dir, test_root, key)
    tune.report({"step": cfg.optim.max_steps, METRIC: record["best_val_dice"], "best_val_dice": record["best_val_dice"],
                 "test_dice": record["test"]["mean"]["dice"], "done": True, ASHA_TIME: -(-cfg.optim.max_steps // cfg.eval.val_every) + 1})


def _score_test_root(trial_dir: Path, test_root: str | None, key: str) -> None:
    """Score a finished trial's selected weights on the external test set ``test_root`` unless it already was
    (:func:`medseg_platform.predict.evaluate_on_test_root`). A deterministic error (e.g. its checkpoint is gone) is
    printed and the trial stays finished: the report lists it as missing from the external block."""
    if test_root is None:
        return
    from medseg_platform.predict import evaluate_on_test_root, has_test_root_evaluation

    if has_test_root_evaluation(trial_dir, test_root):
        return
    try:
        block = evaluate_on_test_root(trial_dir, test_root)
    except MedsegError as exc:
        print(f"[{key}] external test set {test_root} not evaluated: {exc}", flush=True)
        return
    print(f"[{key}] external test set {test_root}: mean Dice {block['test']['mean']['dice']:.4f} "
          f"over {block['num_test_cases']} cases", flush=True)


def _end_errored(trial_dir: Path, config: dict, tags: dict, seed: int, exc: MedsegError, run_id: str) -> None:
    """Record an application error and end the Tune trial normally with an ``errored`` report (never retried)."""
    from ray import tune

    step = getattr(exc, "step", None)
    details = {"step": step, "terms": list(getattr(exc, "terms", ()))} if step is not None else {}
    write_trial_error(trial_dir, config=config, tags=tags, seed=seed, error=str(exc), kind="application", details=details, run=run_id)
    print(f"[{trial_dir.name}] ERRORED (not retried: the error is deterministic): {exc}", flush=True)
    nan = float("nan")
    tune.report({"step": step if step is not None else 0, METRIC: nan, "best_val_dice": nan, "test_dice": nan, "done": True,
                 "errored": True, "error": str(exc)})
