"""The terminal progress of a running study: :class:`ProgressCallback`, a Ray Tune callback, prints an event line
per trial start/finish/error/retry and, while trials run, a heartbeat line at least every :data:`HEARTBEAT_S` seconds,
each with an ETA weighted by the remaining trials' expected cost (:mod:`medseg_platform.step_costs`). The module
imports ``ray.tune`` (about 2 s), so the study scripts' ``--help`` and validation import it only when Tune starts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ray.tune import Callback

from medseg_platform.cli import log_line
from medseg_platform.step_costs import EVALUATION_COST, STEP_COST, UNKNOWN_STEP_COST, Phase, TrialPlan, format_duration

#: The longest silence while trials run: a heartbeat line is printed when this many seconds passed since the last line.
HEARTBEAT_S = 60.0
#: The report fields the callback keeps per trial (written by ``medseg_platform.engine.progress_fields``).
_PROGRESS_KEYS = ("phase", "objective", "stage", "stages", "phase_step", "phase_steps", "stage_cached", "evaluations")


class ProgressCallback(Callback):
    """Terminal lines: one per trial start, finish, error and retry, and a heartbeat while trials run::

        [3/16] finished mona-l1-s1-0123abcd (3 finished, 2 running, 11 pending, 0 errored; 4.2 min elapsed, ETA 12.5 min)
        [3/16] retry 1/2 of supervised-l1-s1-4567ef01 (...): its worker failed, resuming from its last checkpoint
        [5/16] running: mona-l1-s1-ab12 fine-tuning step 120/300, action-l1-s1-cd34 pretraining stage 2/2 step 40/80 (6.1 min elapsed, ETA 4.0 min)

    ``plans``: one :class:`TrialPlan` per trial of the experiment, in start order (a search: the base plan once
    per sample). A Tune trial takes the plan of its key, a searched trial the first plan no trial took.

    Counts come from the ``trials`` list Tune passes to every hook (so a restored experiment's earlier trials
    count); the trial of the event is counted as what the event says (Tune updates its status only after the
    hook). A trial that ended with an ``errored`` report (an application error, :func:`medseg_platform.study.trainable.run_trial_in_tune`)
    counts as errored.

    ETA. Work is in cost units (supervised steps, :data:`STEP_COST`). Each unfinished trial's remaining seconds = its
    remaining steps of each phase x the seconds per step of the phase's objective + its remaining evaluation passes x
    :data:`EVALUATION_COST` x the seconds per unit + what is left of its start-up. A running trial's position comes
    from its last progress report (``medseg_platform.engine.progress_fields``). A pretraining stage costs nothing once
    a trial reported it cached or trained; until then it is charged once, to the trial that reported training it or
    else to the first unfinished trial sharing it. Seconds per step of an objective = the last step rate a trial of it
    reported; for an objective not seen yet, its prior x the seconds per unit, which is learnt from the trials that
    ran to the end in this run (their wall time after their first progress report / their cost units after it:
    fine-tuning and evaluations up to their last step, the stages they trained; trials skipped because their result
    existed, resumed and errored trials do not count) or, before any, from the reported step rates (mean of rate /
    prior).

    Start-up (Ray starting the trial's worker, imports, the data: everything before its first step) is priced apart.
    A trial's start-up = the seconds from its start to its first progress report less the steps that report's rate
    timed. The trials that started before any trial of the run reported start cold (Ray's first workers importing
    torch: 5.6 s measured in a smoke run), later ones warm (0.1 s there): a trial not started yet is charged the
    start-up of the warm trial that started last (none before one reported), a started one what is left of it. With
    start-up inside the seconds per unit, as before, the smoke profile's first ETAs (trials of a few seconds) were 6x
    the time left, now 0.5-1.4x; the default study's first 1.3x, now 0.9x (``benchmarks/eta_accuracy.py``; RESULTS.md,
    'How true the ETA is'). What error is left comes from the priors of objectives no trial ran yet.
    ETA = max(total remaining / the most trials seen running at once, the largest remaining trial); "?" until a trial
    finished or reported a step rate.
    """

    def __init__(self, plans: Sequence[TrialPlan], clock: Callable[[], float] = time.monotonic, heartbeat_s: float = HEARTBEAT_S,
                 study_dir: str | None = None, stage_folders: Mapping[str, str] | None = None):
        self.plans = list(plans)
        self.study_dir = study_dir  # where the trial folders are: a start line names the checkpoint a trial resumes from
        # a plan stage's identity -> its folder in the pretraining cache (medseg_platform.engine.stage_key): a stage whose
        # final weights are there costs nothing (read at every setup, so a restored experiment sees what its interrupted
        # run trained; the runner review: they were charged to the trials sharing them, the ETA up to 5x too high)
        self.stage_folders = dict(stage_folders or {})
        self.total = len(self.plans)
        self.clock = clock  # tests pass a fake clock
        self.heartbeat_s = heartbeat_s
        self.setup()

    def setup(self, **info) -> None:  # Tune calls it when an experiment starts, restored ones included (this object is unpickled)
        self.start = self.last_line = self.clock()
        self.started: dict[str, float] = {}  # trial id -> first start in this run (a retry keeps it)
        self.attempt_started: dict[str, float] = {}  # trial id -> start of its running attempt (start-up is measured from it)
        # (seconds, cost units) of each trial that ran to the end, both after its first progress report (all of them for
        # a trial that sent none)
        self.finished_work: list[tuple[float, float]] = []
        self.first_report: dict[str, tuple[float, float]] = {}  # trial id -> (clock, cost units done) at its first report
        self.any_report_at: float | None = None  # when this run's first progress report came (later starts are warm)
        self.warm_startups: list[tuple[float, float]] = []  # (start, start-up seconds) of the warm trials that reported
        self.peak_running = 0
        self.assigned: dict[str, int] = {}  # trial id -> index in plans
        self.progress: dict[str, dict] = {}  # trial id -> its last progress report (_PROGRESS_KEYS)
        self.step_s: dict[str, float] = {}  # objective -> seconds per step, last reported
        self.trained: dict[str, set[str]] = {}  # trial id -> stages it reported training
        self.stage_trainer: dict[str, int] = {}  # stage -> plan index of the trial that last reported training it
        self.stage_done = {stage.stage for plan in self.plans if plan.existed for stage in plan.stages} | self._cached_stages()
        self.resumed_from: dict[str, int] = {}  # trial id -> the fine-tuning step it resumed at in this run

    def _cached_stages(self) -> set[str]:
        """The plan stages whose final weights are in the study's pretraining cache (``stage_folders``)."""
        folders = getattr(self, "stage_folders", None)  # absent from a callback pickled by an older version
        if not folders or getattr(self, "study_dir", None) is None:
            return set()
        from medseg_platform.results import STAGE_FINAL_FILE, pretrain_cache_dir, stage_folder

        cache = pretrain_cache_dir(Path(self.study_dir))
        return {stage for stage, key in folders.items() if (stage_folder(cache, key) / STAGE_FINAL_FILE).is_file()}

    # -- formatting and estimates (no Ray needed: tests pass objects with trial_id, status, config, last_result) ----------
    @staticmethod
    def category(trial) -> str:
        """``finished`` / ``errored`` / ``running`` / ``pending`` from a Tune trial's status and last result."""
        status = getattr(trial, "status", "PENDING")
        if status == "ERROR" or (status == "TERMINATED" and (getattr(trial, "last_result", None) or {}).get("errored")):
            return "errored"
        return {"TERMINATED": "finished", "RUNNING": "running"}.get(status, "pending")

    def counts(self, trials, trial=None, now: str | None = None) -> dict[str, int]:
        """Trials per category; ``stopped early`` (ASHA, a search's samples) apart from ``finished`` (the search
        walkthrough: "3 finished" counted a stopped sample)."""
        counts = dict.fromkeys(("finished", "stopped early", "running", "pending", "errored"), 0)
        listed = list(trials) + ([trial] if trial is not None and now and not any(t is trial for t in trials) else [])
        for t in listed:
            category = now if (trial is not None and now and t is trial) else self.category(t)
            stopped = category == "finished" and _asha_stopped(getattr(t, "last_result", None) or {})
            counts["stopped early" if stopped else category] += 1
        counts["pending"] += max(0, self.total - sum(counts.values()))  # trials Tune has not created yet
        return counts

    def plan_index(self, trial) -> int | None:
        """The index in ``plans`` of a Tune trial (assigned on first sight); None once every plan is taken."""
        if trial.trial_id not in self.assigned:
            taken = set(self.assigned.values())
            free = [i for i in range(self.total) if i not in taken]
            name = _trial_name(trial)
            match = next((i for i in free if self.plans[i].key == name), free[0] if free else None)
            if match is None:
                return None
            self.assigned[trial.trial_id] = match
        return self.assigned[trial.trial_id]

    def seconds_per_unit(self) -> float | None:
        """Wall seconds per cost unit of one trial slot (see the class docstring); None before any evidence."""
        units = sum(u for _, u in self.finished_work)
        if units > 0:
            return sum(s for s, _ in self.finished_work) / units
        rates = [seconds / STEP_COST.get(objective, UNKNOWN_STEP_COST) for objective, seconds in sorted(self.step_s.items())]
        return sum(rates) / len(rates) if rates else None

    def eta_s(self, trials, trial=None, now: str | None = None) -> float | None:
        """Seconds until every trial has ended (see the class docstring); None before any evidence."""
        unit_s = self.seconds_per_unit()
        if unit_s is None:
            return None
        states = self._states(trials, trial, now)
        remaining = [r for r in (self._remaining_s(i, states, unit_s) + self._startup_left_s(i, states)
                                 for i in range(self.total)) if r > 0]
        return max(sum(remaining) / max(self.peak_running, 1), max(remaining)) if remaining else 0.0

    def _states(self, trials, trial, now) -> dict[int, tuple[str, str]]:
        """Plan index -> (trial id, category) of every trial Tune created (unlisted plans are pending)."""
        states = {}
        for t in list(trials) + ([trial] if trial is not None and not any(t is trial for t in trials) else []):
            i = self.plan_index(t)
            if i is not None:
                states[i] = (t.trial_id, now if (now and t is trial) else self.category(t))
        return states

    def _remaining_s(self, i: int, states: dict[int, tuple[str, str]], unit_s: float) -> float:
        plan = self.plans[i]
        trial_id, status = states.get(i, (None, "pending"))
        if status in ("finished", "errored") or (plan.existed and not plan.scoring_only):
            return 0.0
        if plan.scoring_only:  # one test pass of its weights on --test-root
            return EVALUATION_COST * unit_s
        at = self.progress.get(trial_id, {}) if trial_id is not None else {}
        phase, number, done = at.get("phase"), int(at.get("stage") or 0), int(at.get("phase_step") or 0)
        seconds = 0.0
        for n, stage in enumerate(plan.stages, start=1):
            if phase == "fine-tuning" or (phase == "pretraining" and n < number) or stage.stage in self.stage_done:
                continue
            if phase == "pretraining" and n == number:
                seconds += self._phase_s(stage, stage.steps - done, unit_s)
            elif self._stage_payer(stage.stage, states) == i:
                seconds += self._phase_s(stage, stage.steps, unit_s)
        seconds += self._phase_s(plan.fine_tuning, plan.fine_tuning.steps - (done if phase == "fine-tuning" else 0), unit_s)
        return seconds + max(0, plan.evaluations - int(at.get("evaluations") or 0)) * EVALUATION_COST * unit_s

    def _startup_left_s(self, i: int, states: dict[int, tuple[str, str]]) -> float:
        """What is left of plan ``i``'s start-up: none once it reported progress, ended, or needs no trial (its result
        existed); else the start-up of the warm trial that started last (0 before one reported) less the seconds since
        it started."""
        plan = self.plans[i]
        trial_id, status = states.get(i, (None, "pending"))
        if not self.warm_startups or status in ("finished", "errored") or (plan.existed and not plan.scoring_only) or \
                (trial_id is not None and trial_id in self.progress):
            return 0.0
        began = self.attempt_started.get(trial_id) if trial_id is not None else None
        latest = max(self.warm_startups)[1]
        return max(0.0, latest - (self.clock() - began if began is not None else 0.0))

    def _phase_s(self, phase: Phase, steps: int, unit_s: float) -> float:
        per_step = self.step_s.get(phase.objective)
        return max(0, steps) * (per_step if per_step is not None else STEP_COST.get(phase.objective, UNKNOWN_STEP_COST) * unit_s)

    def _stage_payer(self, stage: str, states: dict[int, tuple[str, str]]) -> int | None:
        """The plan charged with an unfinished stage: its running trainer, else the first unfinished plan with it."""
        def open_(i: int) -> bool:
            return not self.plans[i].existed and states.get(i, (None, "pending"))[1] not in ("finished", "errored")

        trainer = self.stage_trainer.get(stage)
        if trainer is not None and open_(trainer):
            return trainer
        return next((i for i, plan in enumerate(self.plans) if open_(i) and any(s.stage == stage for s in plan.stages)), None)

    def _spent_units(self, plan: TrialPlan, trial_id: str) -> float:
        """The cost units a trial that ran to its end spent: the stages it reported training, and its fine-tuning
        and evaluations up to its last reported step (all of them, but for a trial ASHA stopped early). A trial that
        resumed from a checkpoint spent 0 here: its seconds (start-up, the evaluations after its checkpoint, the test)
        fit no share of its units (crediting all of them made the seconds per unit several times too low: the runner
        review; the steps after its checkpoint only, up to 20 times too high: the progress review), so it is left
        out of the seconds per unit, as a skipped one is; its steps still teach the step rate."""
        if self.resumed_from.get(trial_id, 0) > 0:
            return 0.0
        at = self.progress.get(trial_id) or {}
        trained = self.trained.get(trial_id, set())
        return (sum(stage.units for stage in plan.stages if stage.stage in trained)
                + _fine_tuning_units(plan, at if at.get("phase") == "fine-tuning" else None))

    def _eta_text(self, trials, trial=None, now: str | None = None) -> str:
        c = self.counts(trials, trial, now)
        self.peak_running = max(self.peak_running, c["running"], 1)
        if not c["running"] + c["pending"]:
            return "done"
        seconds = self.eta_s(trials, trial, now)
        return "ETA ? (no step rate yet)" if seconds is None else "ETA " + format_duration(seconds)

    def line(self, what: str, trial, trials, now: str | None = None, after: str = "") -> str:
        """``[done/total] <what> <trial><after> (counts; elapsed, ETA)``."""
        c = self.counts(trials, trial, now)
        eta = self._eta_text(trials, trial, now)
        done = c["finished"] + c["stopped early"] + c["errored"]
        stopped = f"{c['stopped early']} stopped early, " if c["stopped early"] else ""
        return (f"[{done}/{sum(c.values())}] {what} {_trial_name(trial)}{after} ({c['finished']} finished, {stopped}"
                f"{c['running']} running, {c['pending']} pending, {c['errored']} errored; "
                f"{format_duration(self.clock() - self.start)} elapsed, {eta})")

    def doing(self, trial) -> str:
        """Where a running trial is, from its last progress report: ``fine-tuning step 120/300``, ``pretraining stage
        2/2 step 40/80``, ``pretraining stage 1/2 loaded from the cache``, or ``starting`` before its first report."""
        at = self.progress.get(trial.trial_id)
        if not at:
            return "starting"
        if at.get("phase") == "pretraining":
            where = "loaded from the cache" if at.get("stage_cached") else f"step {at.get('phase_step')}/{at.get('phase_steps')}"
            return f"pretraining stage {at.get('stage')}/{at.get('stages')} {where}"
        return f"fine-tuning step {at.get('phase_step')}/{at.get('phase_steps')}"

    def heartbeat(self, trials) -> str:
        """``[done/total] running: <trial> <where>, ... (elapsed, ETA)``."""
        c = self.counts(trials)
        eta = self._eta_text(trials)
        running = ", ".join(f"{_trial_name(t)} {self.doing(t)}" for t in trials if self.category(t) == "running")
        done = c["finished"] + c["stopped early"] + c["errored"]
        return f"[{done}/{sum(c.values())}] running: {running} ({format_duration(self.clock() - self.start)} elapsed, {eta})"

    def _print(self, msg: str) -> None:
        self.last_line = self.clock()
        log_line(msg)

    # -- Tune hooks ----------------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        """Tune calls it after each step of its loop (about every 0.1 s); prints the heartbeat when it is due."""
        if self.clock() - self.last_line >= self.heartbeat_s and any(self.category(t) == "running" for t in trials):
            self._print(self.heartbeat(trials))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Keeps a trial's progress report (phase, step, step rate) and what it says about shared stages."""
        phase = result.get("phase")
        if phase not in ("pretraining", "fine-tuning"):
            return  # the final, skipped or errored report
        first = trial.trial_id not in self.progress
        self.progress[trial.trial_id] = {key: result.get(key) for key in _PROGRESS_KEYS}
        i = self.plan_index(trial)
        if first:
            self._note_first_report(trial.trial_id, i, result)
        stages = self.plans[i].stages if i is not None else ()
        number = int(result.get("stage") or 0) if phase == "pretraining" else len(stages) + 1
        rate = result.get("steps_per_s")
        if isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0:
            # keyed like the plan's phase (cost_key), so a row without the contrast term keeps its own rate
            if i is None:
                key = str(result.get("objective"))
            elif phase == "fine-tuning":
                key = self.plans[i].fine_tuning.objective
            else:
                key = stages[number - 1].objective if 1 <= number <= len(stages) else str(result.get("objective"))
            self.step_s[key] = 1.0 / rate
        if i is None:
            return
        self.stage_done.update(stage.stage for stage in stages[: max(0, number - 1)])  # stages behind it are done
        if phase == "pretraining" and 1 <= number <= len(stages):
            stage = stages[number - 1].stage
            if result.get("stage_cached") or int(result.get("phase_step") or 0) >= int(result.get("phase_steps") or 0):
                self.stage_done.add(stage)
            if not result.get("stage_cached"):
                self.trained.setdefault(trial.trial_id, set()).add(stage)
                self.stage_trainer[stage] = i

    def _note_first_report(self, trial_id: str, i: int | None, result: Mapping) -> None:
        """At a trial's first progress report in this run: its start-up (the seconds since it started less the steps
        the report's rate timed: the first ``eval.log_every`` steps of its first phase; a stage loaded from the cache
        times none), kept if it started warm (after the run's first report), and the units it had done, which its
        seconds per unit leaves out. Not for a trial resumed from a checkpoint (its first report's rate times the
        steps after it; it is left out of the seconds per unit anyway)."""
        now = self.clock()
        cold = self.any_report_at is None
        if cold:
            self.any_report_at = now
        began = self.attempt_started.get(trial_id)  # a retry's own start: its failed attempt is no start-up (the diff review)
        if began is None or i is None or self.resumed_from.get(trial_id, 0) > 0:
            return
        if not cold and began >= self.any_report_at:
            rate, steps = result.get("steps_per_s"), int(result.get("phase_step") or 0)
            timed = steps / rate if isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0 else 0.0
            self.warm_startups.append((began, max(0.0, now - began - timed)))
        self.first_report[trial_id] = (now, _units_done(self.plans[i], result))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, self.clock())
        self.attempt_started[trial.trial_id] = self.clock()
        i = self.plan_index(trial)
        if i is not None and self.plans[i].existed and not self.plans[i].scoring_only:  # Tune only skips it: its
            return  # "finished (result existed)" line says so
        attempt = f" (attempt {trial.num_failures + 1})" if getattr(trial, "num_failures", 0) else ""
        # a finished trial scored on --test-root was "finished (result existed)" alone, its scoring unpriced (the progress
        # review)
        after = ", to score its weights on --test-root (trained earlier)" if i is not None and self.plans[i].scoring_only \
            else self._resuming(i, trial)
        self._print(self.line(f"started{attempt}", trial, trials, now="running", after=after))

    def _resuming(self, i: int | None, trial) -> str:
        """``, resuming at step N/M`` when the trial of plan ``i`` has an interrupted fine-tuning's checkpoint (a rerun
        after Ctrl-C said only "started": the workflow probe); "" otherwise. A searched sample's folder is keyed by its
        sampled config and Tune's trial id, not by the plan (its resume went unsaid: the search walkthrough). A retry on a
        node whose trial folder lacks the checkpoint (restored from Tune's copy once the trial runs) says only "started"."""
        if i is None or getattr(self, "study_dir", None) is None:
            return ""
        from medseg_platform.plan import resume_point
        from medseg_platform.results import trial_folder
        from medseg_platform.study.trainable import trial_config_and_key

        key = self.plans[i].key
        params = getattr(trial, "config", None) or {}
        if params.get("search") and isinstance(params.get("trial"), Mapping):
            try:
                key = trial_config_and_key(params, trial.trial_id)[1]
            except Exception:  # noqa: BLE001 - a sample the trainable will refuse: it says why; no resume to tell
                return ""
        point = resume_point(trial_folder(self.study_dir, key))
        # at its first start in this run (setup() makes the dict, also for a callback restored from an older pickle); a
        # retry's checkpoint is this run's work
        self.resumed_from.setdefault(trial.trial_id, int(point[0]) if point else 0)
        return f", resuming at step {point[0]}/{self.plans[i].fine_tuning.steps}" if point else ""

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = getattr(trial, "last_result", None) or {}
        began = self.started.pop(trial.trial_id, None)
        self.attempt_started.pop(trial.trial_id, None)
        i = self.plan_index(trial)
        if began is not None and i is not None and not any(result.get(k) for k in ("skipped", "errored", "rescored")):
            # after its first progress report: its start-up is priced apart (the class docstring)
            began, before = self.first_report.get(trial.trial_id, (began, 0.0))
            units = self._spent_units(self.plans[i], trial.trial_id) - before
            if units > 0:  # not a resumed trial (its seconds fit no share of its units)
                self.finished_work.append((self.clock() - began, units))
        if result.get("errored"):
            self._print(self.line("ERRORED", trial, trials, now="errored") + f": {result.get('error', '?')}")
        elif _asha_stopped(result):
            self._print(self.line(f"stopped early (ASHA, step {result.get('step', '?')})", trial, trials, now="finished"))
        else:
            scored_only = i is not None and self.plans[i].scoring_only
            how = (" (scored on --test-root; trained earlier)" if result.get("skipped") and scored_only else
                   " (result existed)" if result.get("skipped") else
                   " (scored from a finished trial's checkpoint, not trained)" if result.get("rescored") else "")
            self._print(self.line("finished" + how, trial, trials, now="finished"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.started.pop(trial.trial_id, None)
        self.attempt_started.pop(trial.trial_id, None)
        retries = max(0, getattr(trial, "num_failures", 1) - 1)
        self._print(self.line(f"ERRORED after {retries} retr{'y' if retries == 1 else 'ies'}", trial, trials, now="errored"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # the retry resumes from the trial's last checkpoint: its start time and last progress report stay; its attempt
        # starts anew (until then it is charged a whole start-up)
        self.attempt_started.pop(trial.trial_id, None)
        self._print(self.line(f"retry {trial.num_failures}/{trial.max_failures} of", trial, trials, now="pending")
                    + ": its worker failed, resuming from its last checkpoint")


def _fine_tuning_units(plan: TrialPlan, report: Mapping | None) -> float:
    """The cost units of ``plan``'s fine-tuning and evaluations up to the step of a fine-tuning progress ``report``
    (their share of the steps: evaluations counted evenly), all of them without one."""
    steps = max(1, plan.fine_tuning.steps)
    share = min(1.0, int(report.get("phase_step") or 0) / steps) if report is not None else 1.0
    return share * (plan.fine_tuning.units + plan.evaluations * EVALUATION_COST)


def _units_done(plan: TrialPlan, report: Mapping) -> float:
    """The cost units of ``plan`` done at a trial's first progress ``report``: the steps of the stage it reports (none
    for a stage loaded from the cache) or the fine-tuning's share (:func:`_fine_tuning_units`). A first report comes
    at the first phase the trial runs: the stages before a reported one were loaded from the cache (each reports)."""
    if report.get("phase") != "pretraining":
        return _fine_tuning_units(plan, report)
    number = int(report.get("stage") or 0)
    if not 1 <= number <= len(plan.stages) or report.get("stage_cached"):
        return 0.0
    stage = plan.stages[number - 1]
    return min(int(report.get("phase_step") or 0), stage.steps) * stage.units / max(1, stage.steps)


def _asha_stopped(result: Mapping) -> bool:
    """Whether a terminated trial's last result is that of a trial ASHA stopped: a report without the test Dice that only
    a trial's final report carries (Tune sets done=True on a stopped trial too; ``analysis.search`` tells them apart the
    same way). Read from the result, so a restored experiment's stopped samples count as such too (the review)."""
    return bool(result) and not result.get("errored") and not result.get("skipped") and "test_dice" not in result


def _trial_name(trial) -> str:
    """The trial's key (grid trials), or "sample" and Tune's trial id (searched trials get their key inside the trial;
    the id is the one ``search_history.csv`` lists in its ``trial_id`` column)."""
    config = getattr(trial, "config", None) or {}
    if config.get("search"):
        return f"sample {getattr(trial, 'trial_id', '?')}"
    grid_trial = config.get("trial")
    key = grid_trial.get("key") if isinstance(grid_trial, Mapping) else None
    return key or str(getattr(trial, "trial_id", "?"))
