"""The dry run of a study (``--dry-run``): which trials would run, what each costs, and the wall time to expect.

:func:`plan_study` expands and validates the study's trials and checks the study's settings as :meth:`Study.run`
does before Ray starts (:func:`medseg_platform.study.runner.check_before_ray`: Ray options, retries, the results
folder, GPUs, the test root; no Ray is started, nothing is trained or written). It reads each dataset's lists and
manifest (its class names against ``data.num_classes``) and, for a trial to score from a finished one under another
empty-mask policy, the val volumes (:func:`medseg_platform.rescore.validated_cases_hold_every_class`), but only the
run reads every data file (:func:`medseg_platform.preflight.preflight_datasets`). It gives each trial a status:

* ``finished``: its folder holds a complete result (it would be skipped);
* ``to score on --test-root``: finished, but its selected weights are still to be scored on the study's external
  test set (a short evaluation; no training);
* ``to score from a finished trial``: it differs from a finished trial of the results folder only in how it is scored
  (:mod:`medseg_platform.rescore`): that trial's checkpoint is evaluated instead of training (a short evaluation, in
  the driver before Ray starts, one trial after another);
* ``to resume``: its folder holds the checkpoint of an interrupted fine-tuning (its pretraining done), at the step
  the table names: only the steps and validations after it are charged (:func:`resume_point`);
* ``cached pretraining``: every pretraining stage it needs is in the study's pretraining cache
  (:func:`medseg_platform.results.pretrain_cache_dir`, keyed by :func:`medseg_platform.engine.stage_key`,
  which needs the trial's labelled subset: :func:`medseg_platform.data.splits.select_labelled`);
* ``to run``: anything else.

Cost is in *units* of one supervised fine-tuning step, from the priors the progress lines use
(:func:`medseg_platform.step_costs.trial_plan`, :data:`~medseg_platform.step_costs.STEP_COST`,
:data:`~medseg_platform.step_costs.EVALUATION_COST`): a trial's fine-tuning steps x its objective's step cost,
its evaluation passes, and the pretraining stages it would train (a stage already cached costs nothing, one
shared by several trials is charged once, to the first trial that starts). Seconds per unit are measured
(:func:`measure_unit_seconds`: a few supervised steps of the study's first trial to run, on this machine) and
the wall time is the progress lines' ETA rule: max(total / parallel trials, the largest trial). A search
runs its one configuration ``num_samples`` times: its cost is an upper bound (ASHA stops weak samples early).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_platform.config import TrialConfig
from medseg_platform.step_costs import EVALUATION_COST, STEP_COST, UNKNOWN_STEP_COST, format_duration, trial_plan

FINISHED, ENDED, TO_SCORE, TO_RESCORE, TO_RESUME, CACHED, TO_RUN = (
    "finished", "samples ended", "to score on --test-root", "to score from a finished trial", "to resume", "cached pretraining",
    "to run")
#: ENDED: a search's configuration whose samples all ended, completed, stopped early or errored (it read "finished" where
#: every sample had errored and the run itself says no configuration completed: the search review)
STATUSES = (FINISHED, ENDED, TO_SCORE, TO_RESCORE, TO_RESUME, CACHED, TO_RUN)
#: :func:`measure_unit_seconds`: timed steps after one warm-up step, and the time after which it stops early.
TIMED_STEPS, TIMING_BUDGET_S = 5, 2.0
#: Steps timed whatever the budget: the median of 3 steps, where a single slow step (another process on the cores, a
#: late allocation) priced a paper-size dry run 7x too high.
MIN_TIMED_STEPS = 3
#: How much slower a step runs when the study's trials share this machine's cores than alone: measured in the default
#: quick study on 2 cores (supervised steps of 26.8 ms inside the trials vs 19 ms alone, ``benchmarks/RESULTS.md``,
#: "The quick profile"); applied to a unit measured alone when more than one trial runs at once.
SHARED_CORES_SLOWDOWN = 1.4
#: A CPU-only estimate above this many seconds gets a line saying the study is sized for GPUs (the paper profile).
CPU_DAY_S = 24 * 3600.0
#: A local Ray's start-up and the study's own set-up (about 10-20 s measured), printed beside the estimate.
STARTUP_S = 15.0
#: What a multi-worker trial's Ray Train worker group costs besides its steps: 17-20 s from ``fit()`` to the first
#: worker step and 6-7 s of teardown (docs/ray.md, 'Costs on two cores'); added to every run of a trial with ``num_workers > 1``.
WORKER_GROUP_S = 25.0


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of the dry run; ``runs``: the cost units of each run still to do (one per search sample)."""

    row: str
    labelled: str
    seed: int
    key: str
    status: str
    runs: tuple[float, ...]
    resume_from: tuple[int, int] | None = None  # ``to resume``: (checkpoint step, fine-tuning steps)

    @property
    def units(self) -> float:
        return sum(self.runs)

    @property
    def status_text(self) -> str:
        """The status as the table prints it (``to resume at step 105/200``)."""
        return f"{self.status} at step {self.resume_from[0]}/{self.resume_from[1]}" if self.resume_from else self.status


@dataclass(frozen=True)
class UnitSeconds:
    """Wall seconds of one cost unit and how they were obtained (printed with the estimate)."""

    seconds: float
    source: str
    device: str = "cpu"  # where the unit was timed ("cuda": on this machine's GPU)


@dataclass(frozen=True)
class StudyPlan:
    name: str
    study_dir: Path
    trials: tuple[PlannedTrial, ...]
    samples: int  # runs per trial: a search's num_samples, else 1
    slots: int  # trials at once
    slots_source: str
    unit: UnitSeconds
    samples_ended: int = 0  # a search: samples its Tune experiment already ended (a rerun does not train them)
    run_overhead_s: float = 0.0  # seconds each training run costs besides its units (a multi-worker trial's worker group)
    unpriced: tuple[str, ...] = ()  # objectives to run without a step-cost prior (priced at UNKNOWN_STEP_COST)
    on_gpus: bool = False  # the trials would train on GPUs (--gpus-per-trial)
    left_out: int = 0  # finished trials in the study's folder that this command does not list (the tables leave them out)
    other_roots: tuple[str, ...] = ()  # the data roots of those trials that this command does not train on
    warnings: tuple[str, ...] = ()  # what the run would warn about first (a corrupt result.json: that trial runs again)
    samples_resuming: tuple[tuple[int, int], ...] = ()  # a search: (step, of steps) where stopped samples resume

    @property
    def total_units(self) -> float:
        return sum(t.units for t in self.trials)

    @property
    def wall_s(self) -> float:
        """The progress lines' ETA rule, max(total work / parallel trials, the largest single run), with each training
        run's ``run_overhead_s`` (a scoring-only run, on ``--test-root`` or from a finished trial, starts no worker group),
        after the scorings from finished trials, which the driver runs one after another before Ray starts."""
        first = sum(self.run_seconds(t, r) for t in self.trials if t.status == TO_RESCORE for r in t.runs)
        runs = [self.run_seconds(t, r) for t in self.trials if t.status != TO_RESCORE for r in t.runs]
        return first + (max(sum(runs) / self.slots, max(runs)) if runs else 0.0)

    def run_seconds(self, trial: PlannedTrial, units: float) -> float:
        """Wall seconds of one run of ``trial`` that costs ``units``."""
        return self.unit.seconds * units + (self.run_overhead_s if trial.status in (TO_RUN, CACHED, TO_RESUME) else 0.0)


def resume_point(trial_dir: Path) -> tuple[int, int] | None:
    """``(step, validations done)`` of an interrupted trial's fine-tuning checkpoint (``checkpoint/checkpoint.pt``, read
    memory-mapped with ``weights_only``: its arrays are not loaded), or None when there is none or it cannot be read
    (the run then says why)."""
    from medseg_platform.results import checkpoint_path

    path = checkpoint_path(trial_dir)
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["step"]), len(state.get("val_curve") or ())
    except Exception:  # noqa: BLE001 - any unreadable checkpoint: priced as a fresh trial
        return None


def plan_study(study, unit: UnitSeconds | None = None, cpus: int | None = None) -> StudyPlan:
    """The dry run of ``study`` (a configured :class:`~medseg_platform.study.Study`); see the module docstring.

    ``unit``: seconds per cost unit (default: :func:`measure_unit_seconds` on the first trial to run);
    ``cpus``: this machine's CPUs (default: those this process may use).
    """
    from medseg_platform.data.layout import dataset_class_names
    from medseg_platform.engine import chain_keys
    from medseg_platform.preflight import check_class_count, datasets_of_trials
    from medseg_platform.rescore import scoring_sources
    from medseg_platform.results import STAGE_FINAL_FILE, TRIALS_DIR, pretrain_cache_dir, stage_folder, trial_finished, trial_folder

    from medseg_platform.study.ray_runtime import joins_cluster
    from medseg_platform.study.runner import check_before_ray, check_trained_on_this_data, ended_sample_ids, lacks_test_root

    trials, _ = check_before_ray(study, dry_run=True)  # validated as Study.run validates them, in the order Tune starts them
    for root, num_classes in datasets_of_trials(trials):  # the manifest's class count and names (no data file is read)
        check_class_count(root, num_classes)
        dataset_class_names(root, num_classes)
    check_trained_on_this_data(study, trials)
    study_dir = study.study_dir
    cache = pretrain_cache_dir(study_dir)
    search = study.search_space is not None
    samples = study.num_samples if search else 1
    charged: set[str] = set()
    train_lists: dict[str, Any] = {}  # each dataset root's train_slices.list, read once
    planned = []
    unpriced: list[str] = []
    warnings: list[str] = []  # as the run's own warnings word them (medseg_platform.results.trial_finished)
    ended_ids = ended_sample_ids(study, trials)  # none for a grid
    ended = len(ended_ids)
    sources = {} if search else scoring_sources(study_dir, [t for t in trials if not trial_finished(trial_folder(study_dir, t["key"]))])
    for index, trial in enumerate(trials):
        cfg = TrialConfig.from_dict(trial["config"])
        phases = trial_plan(trial["config"], trial["key"])
        keys = chain_keys(cfg, train_lists)
        cached = [(stage_folder(cache, key) / STAGE_FINAL_FILE).is_file() for key in keys]
        resume_from = None
        if not search and trial_finished(trial_folder(study_dir, trial["key"]), log=warnings.append):
            status = TO_SCORE if lacks_test_root(study, trial_folder(study_dir, trial["key"])) else FINISHED
            runs = (EVALUATION_COST,) if status == TO_SCORE else ()
        elif search and ended >= samples:
            status, runs = ENDED, ()
        elif trial["key"] in sources:  # and, with --test-root, scored on it afterwards
            status, runs = TO_RESCORE, (EVALUATION_COST * (2 if study.test_root is not None else 1),)
        elif not search and (point := resume_point(trial_folder(study_dir, trial["key"]))) is not None:
            step, validated = point  # its stages are done (the fine-tuning checkpoint is written after them)
            status, resume_from = TO_RESUME, (step, phases.fine_tuning.steps)
            left = max(0, phases.fine_tuning.steps - step) * phases.fine_tuning.units / max(1, phases.fine_tuning.steps)
            runs = (left + max(1, phases.evaluations - validated) * EVALUATION_COST,)
        else:
            status = CACHED if keys and all(cached) else TO_RUN
            stages = sum(phase.units for phase, key, hit in zip(phases.stages, keys, cached) if not hit and key not in charged)
            charged.update(keys)
            run = phases.fine_tuning.units + phases.evaluations * EVALUATION_COST
            runs = (stages + run,) + (run,) * (samples - ended - 1)
            to_train = [phase for phase, hit in zip(phases.stages, cached) if not hit] + [phases.fine_tuning]
            unpriced += [phase.objective for phase in to_train if phase.objective not in STEP_COST and phase.objective not in unpriced]
        tags = trial["tags"]
        planned.append((tags.get("order", math.inf), index, PlannedTrial(str(tags.get("row", cfg.objective)), cfg.data.labelled,
                                                                           cfg.seed, trial["key"], status, runs, resume_from)))
    rows = tuple(p for _, _, p in sorted(planned, key=lambda item: item[:2]))  # the study's row order
    slots, slots_source = trial_slots(_with_kept_limits(study, trials), cpus)
    if unit is None:
        first = next((trial for trial, (_, _, p) in zip(trials, planned) if p.runs), None)
        too_large = _too_large_to_time(first, study.gpus_per_trial > 0) if first else ""
        unit = (UnitSeconds(0.0, "not measured: nothing to run") if not first else UnitSeconds(0.0, too_large) if too_large
                else measure_unit_seconds(first["config"], "cuda" if study.gpus_per_trial > 0 else "cpu"))
        # runs that train: one alone shares no core (a scoring from a finished trial runs in the driver before Ray
        # starts, never beside a training trial: counted, it slowed a lone trial's unit x1.4, the progress review)
        running = sum(1 for _, _, p in planned if p.status != TO_RESCORE for _ in p.runs)
        joined = joins_cluster(study.address)
        if first and unit.seconds > 0 and min(slots, running) > 1 and study.gpus_per_trial == 0 and not joined:
            unit = UnitSeconds(unit.seconds * SHARED_CORES_SLOWDOWN,
                               f"{unit.source}, x{SHARED_CORES_SLOWDOWN:g} for {slots} trials sharing this machine's cores", unit.device)
            # more trial threads than cores (--cpus-per-trial below the threads a trial runs): each runs that much
            # slower; the runner review measured 4 trials "at once" on 2 cores at 40 s where this said 30 s. The unit was
            # timed by one process of the trial's threads alone, on up to that many cores; every rank of a multi-worker
            # trial runs such a step, so the concurrent trials' processes share the cores, each wanting min(its threads,
            # cores) of them (counting every thread as a core of its own priced threads=8 on 2 cores 8x, where the run
            # took 2x: the workflow review)
            threads_each = max(int(trial["config"].get("threads", 1)) for trial in trials)
            cores = cpus or available_cpus()
            concurrent = min(slots, running)
            processes = concurrent * study.num_workers
            factor = processes * min(threads_each, cores) / cores
            if factor > 1:  # more trial threads than cores, counted so
                unit = UnitSeconds(unit.seconds * factor, f"{unit.source}, x{factor:g} for {processes * threads_each} trial "
                                   f"threads on {cores} cores ({processes} trial process(es) at once, each timed alone on "
                                   f"{min(threads_each, cores)} core(s))", unit.device)
    return StudyPlan(study.name, study_dir, rows, samples, slots, slots_source, unit, ended,
                     WORKER_GROUP_S if study.num_workers > 1 else 0.0, tuple(unpriced), study.gpus_per_trial > 0,
                     *((0, ()) if search else _left_out(study_dir / TRIALS_DIR, trials, trial_finished)), tuple(warnings),
                     _samples_resuming(study_dir, trials, ended_ids) if search and ended < samples else ())


def _samples_resuming(study_dir: Path, trials: list[dict], ended_ids: set[str]) -> tuple[tuple[int, int], ...]:
    """``(step, fine-tuning steps)`` where a search's samples stopped mid-way resume: the sample folders (a search's
    folder holds its own samples only: one with other settings is refused) with a checkpoint, neither a result nor an
    error (a rerun does not train an errored sample again), and not ended in the Tune experiment (``ended_ids``: a
    sample ASHA stopped keeps the checkpoint of its last validation and writes nothing else) nor in the search
    history. The dry run of a stopped search said nothing of them."""
    from medseg_platform.io import read_json_object
    from medseg_platform.results import CONFIG_FILE, ERROR_FILE, RESULT_FILE, TRIALS_DIR, search_history_statuses

    trials_dir = study_dir / TRIALS_DIR
    if not trials_dir.is_dir() or not trials:
        return ()
    history = search_history_statuses(study_dir)
    found = []
    for folder in sorted(f for f in trials_dir.iterdir() if f.is_dir()):
        if (folder / RESULT_FILE).is_file() or (folder / ERROR_FILE).is_file() or folder.name.rsplit("-", 1)[-1] in ended_ids:
            continue
        if history.get(folder.name, "unfinished") != "unfinished" or (point := resume_point(folder)) is None:
            continue
        optim = ((read_json_object(folder / CONFIG_FILE) or {}).get("config") or {}).get("optim") or {}
        found.append((point[0], int(optim.get("max_steps", trials[0]["config"]["optim"]["max_steps"]))))
    return tuple(found)


def _left_out(trials_dir: Path, trials: list[dict], finished) -> tuple[int, tuple[str, ...]]:
    """How many finished trials under ``trials_dir`` this command does not list (another run's rows, seeds, label
    fractions or settings: the report leaves them out of the tables), and the data roots among them that no trial of
    this command reads (a trial's key hashes its data root: a moved dataset, or another ``$MEDSEG_CACHE`` for the
    embedded phantom, gives every trial a new key)."""
    if not trials_dir.is_dir():
        return 0, ()
    from medseg_platform.io import read_json_object
    from medseg_platform.results import CONFIG_FILE

    keys = {trial["key"] for trial in trials}
    roots = {str(trial["config"]["data"]["root"]) for trial in trials}
    left = [folder for folder in trials_dir.iterdir() if folder.is_dir() and folder.name not in keys and finished(folder)]
    other = {str(((read_json_object(folder / CONFIG_FILE) or {}).get("config") or {}).get("data", {}).get("root")) for folder in left}
    return len(left), tuple(sorted(other - roots - {"None"}))


def _with_kept_limits(study, trials: list[dict]):
    """``study``, or a copy with the ``--max-concurrent`` its Tune experiment was started with where a rerun would restore
    that experiment, which keeps it (``medseg_platform.study.runner.note_kept_limits``; the runner review: the dry run
    said 2 trials at once where the rerun ran 1)."""
    import copy

    from medseg_platform.io import read_json_object
    from medseg_platform.results import tune_storage
    from medseg_platform.study.experiment_state import resumes_trials
    from medseg_platform.study.runner import LIMITS_SUFFIX

    name = f"{study.name}-{study.spec_hash(trials)}"
    storage = tune_storage(study.study_dir)
    started = read_json_object(storage / f"{name}{LIMITS_SUFFIX}") if (storage / name).is_dir() else None
    if not started or "max_concurrent" not in started or started["max_concurrent"] == study.max_concurrent:
        return study
    if study.search_space is None and not resumes_trials(storage / name, len(trials)):
        return study  # the trials to run go to a fresh experiment, under this command's limits (the progress review)
    kept = copy.copy(study)
    kept.max_concurrent = started["max_concurrent"]
    return kept


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (``taskset``, a cpuset), and no more
    than its cgroup's CPU limit (a container's ``--cpus``; truncated, at least 1). A study's local Ray is started with this
    many (``Study.run``): Ray counts the cgroup's limit but not the affinity, so the dry run's trials at once, the check
    of ``--cpus-per-trial`` and the run used to differ under ``taskset`` (the preflight review)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, int(quota))) if quota is not None else cpus


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU limit of this process's cgroup in CPUs (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``, as Ray reads them), None without a limit or a cgroup file."""
    try:
        text = (root / "cpu.max").read_text(encoding="ascii").split()
        quota, period = (text[0], text[1]) if len(text) == 2 else ("max", "1")
    except OSError:
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        except OSError:
            return None
    try:
        quota_value, period_value = float(quota), float(period)
    except ValueError:  # "max": no limit
        return None
    return quota_value / period_value if quota_value > 0 and period_value > 0 else None


def trial_slots(study, cpus: int | None = None) -> tuple[int, str]:
    """How many trials run at once, and why: this machine's CPUs (and GPUs) per trial's share, capped by
    ``max_concurrent``; joining a cluster, ``max_concurrent`` alone when given (this machine says nothing of the cluster)."""
    from medseg_platform.study.ray_runtime import joins_cluster  # the study package: only where a plan is made

    cpus = cpus or available_cpus()
    per_trial = study.cpus_per_trial * study.num_workers
    slots = max(1, int(cpus // per_trial))
    source = f"{cpus} CPUs of this machine / {per_trial:g} per trial"
    if study.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        slots = min(slots, max(1, int(gpus // (study.gpus_per_trial * study.num_workers))))
        source += f", {gpus} GPU(s) / {study.gpus_per_trial * study.num_workers:g} per trial"
    if study.max_concurrent:
        cluster = joins_cluster(study.address)
        slots = study.max_concurrent if cluster else min(slots, study.max_concurrent)
        source = f"--max-concurrent {study.max_concurrent}" + ("" if cluster else f"; {source}")
    elif joins_cluster(study.address):
        source += "; joining a cluster: pass --max-concurrent for its size"
    return slots, source


def _too_large_to_time(trial: dict, on_gpus: bool) -> str:
    """Why :func:`measure_unit_seconds` must not time ``trial`` on this machine's CPU, or "": its step needs more memory
    than the machine has (:func:`medseg_platform.memory_floor.check_memory_floor`). A study that runs here was refused
    before its plan; one that joins a cluster (``--address``) may run there, but its dry run timed the step here and
    died allocating (the preflight review)."""
    import torch

    from medseg_platform.memory_floor import activation_floor_bytes, machine_memory_bytes

    memory = machine_memory_bytes()
    if (on_gpus and torch.cuda.is_available()) or memory is None:
        return ""
    floor = activation_floor_bytes(trial["config"])
    if floor <= memory:
        return ""
    return (f"not measured: a step does not fit in this machine's memory (one training step keeps at least "
            f"{floor / 2 ** 30:.1f} GiB of activations, and this machine has {memory / 2 ** 30:.1f} GiB)")


def measure_unit_seconds(config: dict, device: str = "cpu", steps: int = TIMED_STEPS, budget_s: float = TIMING_BUDGET_S) -> UnitSeconds:
    """Seconds of one supervised fine-tuning step (one cost unit) of ``config``'s data, model, batch, patch and
    threads, measured with the engine's own training step on 1 labelled patient: one warm-up step, then up to
    ``steps`` steps or ``budget_s`` seconds (at least :data:`MIN_TIMED_STEPS`, or one where the warm-up step alone took
    longer than ``budget_s``: a large patch's dry run took minutes); the median step. Nothing is written; the torch
    thread count is restored."""
    import torch

    from medseg_platform import engine
    from medseg_platform.data.datasets import SliceBank
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.splits import select_labelled
    from methods.registry import build_objective

    cfg = TrialConfig.from_dict(config).replace(objective="supervised", objective_params={}, pretrain=[])
    height, width = cfg.data.patch_size
    print(f"dry run: timing up to {steps} supervised steps ({cfg.data.labelled_batch} x {height}x{width} patches) to price "
          "the trials ...", file=sys.stderr, flush=True)  # a large patch makes this the slow part of a dry run
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        target = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        fallback = ""
        if target.type == "cpu" and cfg.optim.amp == "fp16":  # a CUDA-only setting, timed in full precision on a driver without one
            cfg, fallback = cfg.replace(**{"optim.amp": "off"}), ", full precision: fp16 needs CUDA"
        layout = AcdcLayout(cfg.data.root, cfg.data.num_classes)
        subset = select_labelled(layout.train_slices, "1", "published", cfg.seed)
        bank = SliceBank(layout, subset.labelled_slices, cfg.data.patch_size, cfg.data.image_resize)
        data = engine.TrainingData(layout, subset, bank, None)
        objective = build_objective("supervised", engine.build_trial_model(cfg, target), {}).to(target)
        optimizer = engine.make_optimizer(cfg, list(objective.trainable_parameters()))
        loop = engine.TrainLoop(cfg, objective, optimizer, data, torch.Generator().manual_seed(cfg.seed), target, None,
                                steps + 1, cfg.data.labelled_batch, 0, cfg.optim.lr, cfg.optim.poly_power, "dry-run timing")
        sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
        warm_up = time.perf_counter()
        loop.step(0)  # warm-up: first-call allocations
        sync()
        least = 1 if time.perf_counter() - warm_up > budget_s else min(steps, MIN_TIMED_STEPS)
        start, times = time.perf_counter(), []
        while len(times) < steps and (len(times) < least or time.perf_counter() - start < budget_s):
            began = time.perf_counter()
            loop.step(len(times) + 1)
            sync()
            times.append(time.perf_counter() - began)
        seconds, done = statistics.median(times), len(times)
    finally:
        torch.set_num_threads(previous)
    return UnitSeconds(seconds, f"measured: the median of {done} supervised step(s) of this study's first trial to run, on this machine "
                                f"({target.type}, {cfg.threads} thread(s), 1 trial alone{fallback})", target.type)


def format_plan(plan: StudyPlan) -> str:
    """The dry run's text: one line per trial, the totals, the wall time and where the numbers come from."""
    from medseg_platform.results import TRIALS_DIR

    per = f" x{plan.samples}" if plan.samples > 1 else ""
    header = ("row", "labelled", "seed", "trial key", "status", "cost (units)", "est. time")
    table = [header] + [(t.row + per, t.labelled, str(t.seed), t.key, t.status_text, f"{t.units:.1f}",
                         format_duration(sum(plan.run_seconds(t, r) for r in t.runs)) if t.runs and plan.unit.seconds > 0
                         else "?" if t.runs else "-") for t in plan.trials]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    right = {2, 5, 6}
    runs_of = f" of {plan.samples} samples each" if plan.samples > 1 else ""
    lines = [f"Dry run of study {plan.name} (nothing is started or trained): {len(plan.trials)} trial(s){runs_of}, "
             f"results would go to {plan.study_dir}"]
    lines += ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
              for r in table]
    count = {status: sum(t.status == status for t in plan.trials) for status in STATUSES}
    # every trial that trains counts as "to run" (a search's trial on cached pretraining read "0 to run": the walkthrough)
    detail = ", ".join(f"{count[status]} {label}" for status, label in ((TO_RESUME, "resuming"), (CACHED, "on cached pretraining"))
                       if count[status])
    parts = [f"{count[FINISHED]} finished"] + [f"{count[status]} {status}" for status in (ENDED, TO_SCORE, TO_RESCORE) if count[status]]
    parts.append(f"{count[TO_RESUME] + count[CACHED] + count[TO_RUN]} to run" + (f" ({detail})" if detail else ""))
    scoring = sum(t.units for t in plan.trials if t.status in (TO_SCORE, TO_RESCORE))
    training = plan.total_units - scoring  # scorings train nothing (they were called training: the progress review)
    left = [f"{training:.1f} cost units of training left (fine-tuning and uncached pretraining)"] if training > 0 or not scoring else []
    left += [f"{scoring:.1f} of scoring (test passes of finished trials' weights)"] if scoring else []
    lines.append(f"Totals: {len(plan.trials)} trial(s){runs_of}: " + ", ".join(parts) + "; " + ", ".join(left))
    workers = (f", each run with {plan.run_overhead_s:.0f} s of Ray Train worker-group start and teardown"
               if plan.run_overhead_s else "")
    runs = sum(1 for t in plan.trials if t.status != TO_RESCORE for _ in t.runs)
    at_once = min(plan.slots, max(1, runs))  # never more than there is to run
    scorings = sum(1 for t in plan.trials if t.status == TO_RESCORE)
    first = f", after {scorings} scoring(s) from finished trials one after another" if scorings else ""
    if runs and plan.unit.seconds <= 0:  # not timed (a step too large for this machine)
        lines.append(f"Estimated wall time: unknown, {plan.unit.source}; {at_once} trial(s) at once ({plan.slots_source})")
    elif runs:
        lines.append(f"Estimated wall time: {format_duration(plan.wall_s)} with {at_once} trial(s) at once ({plan.slots_source}"
                     f"{workers}){first}, plus about {STARTUP_S:.0f} s of start-up")
    elif scorings:
        lines.append(f"Estimated wall time: {format_duration(plan.wall_s)} for {scorings} scoring(s) from finished trials' checkpoints, "
                     "one after another (nothing to train)")
    else:
        lines.append("Estimated wall time: nothing to train (a run only rebuilds the tables, plots and report)")
    if plan.left_out:
        lines.append(f"{plan.left_out} finished trial(s) in {plan.study_dir / TRIALS_DIR} are not part of this command (other "
                     "rows, seeds, label fractions or settings): its tables will leave them out; they stay on disk, and the "
                     "command that trained them tables them again without training"
                     + (f". Some trained on another data root ({', '.join(plan.other_roots[:2])}): a trial's key includes its "
                        "data root, so a moved dataset (or another $MEDSEG_CACHE for the embedded phantom) trains anew; "
                        "--data-root that folder finds them again" if plan.other_roots else ""))
    if plan.on_gpus and plan.unit.device != "cuda" and runs:
        lines.append("The trials would train on GPUs (--gpus-per-trial), but the unit was timed on this machine's CPU, which has "
                     "no CUDA GPU: the estimate is CPU time, typically tens of times a GPU's (README: a paper-size supervised step on "
                     "one H200 takes 11-14 ms). For a GPU estimate, dry-run on a GPU machine of the cluster")
    if not plan.on_gpus and plan.wall_s > CPU_DAY_S:
        lines.append(f"That is more than {CPU_DAY_S / 3600:.0f} h of CPU training: a study of this size is meant for GPUs "
                     "(--gpus-per-trial N, here or with --address of a GPU cluster; README, 'Running on a cluster'), or "
                     "fewer rows, seeds or steps (--rows, --seeds, --set optim.max_steps=N)")
    if plan.samples > 1:
        done = ("" if not plan.samples_ended else ", all of them already ended, completed, stopped early or errored (a rerun only "
                "rebuilds the outputs; search_history.csv says which)"
                if plan.samples_ended >= plan.samples else f", {plan.samples_ended} of them already ended (a rerun resumes the rest)")
        if plan.samples_resuming:
            at = ", ".join(f"{step}/{steps}" for step, steps in plan.samples_resuming)
            done += (f", {len(plan.samples_resuming)} stopped mid-way resume from their checkpoints (at step {at}; priced in "
                     "full)")
        lines.append(f"Search: {plan.samples} samples of one configuration{done}; an upper bound (ASHA stops weak samples early, "
                     "and a sample that trains as a finished trial of this results folder did is scored from its checkpoint "
                     "instead)")
    lines.append(f"Cost units: supervised fine-tuning steps, from the step-cost priors of medseg_platform/step_costs.py (an "
                 f"evaluation pass = {EVALUATION_COST:g} units; a cached pretraining stage costs nothing, a shared one is counted "
                 f"once; each trial's set-up is not counted)"
                 + (f"; 1 unit = {plan.unit.seconds * 1000:.1f} ms, {plan.unit.source}" if plan.unit.seconds > 0 else ""))
    lines += list(plan.warnings)  # the run prints them too, before it starts; the table lists such a trial to run again
    if plan.unpriced:
        lines.append(f"No step-cost prior for objective(s) {', '.join(plan.unpriced)}: each step priced at "
                     f"{UNKNOWN_STEP_COST:g} unit(s), so the estimate may be low (measure one with benchmarks/bench_methods.py "
                     "and add it to STEP_COST in medseg_platform/step_costs.py; docs/methods.md, 'Adding a method')")
    return "\n".join(lines)
