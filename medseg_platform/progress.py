"""The terminal progress of a running study: a Ray Tune callback (imports ``ray.tune``; :mod:`medseg_platform.study`
imports this module only when it starts Tune, so study scripts' ``--help`` and validation stay free of Ray).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Mapping

from ray.tune import Callback


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ProgressCallback(Callback):
    """One terminal line per trial start, finish, error and retry, with the study's counts and an ETA::

        [3/16] finished mona-l1-s1-0123abcd (3 finished, 2 running, 11 pending, 0 errored; 4.2 min elapsed, ETA 12.5 min)
        [3/16] retry 1/2 of supervised-l1-s1-4567ef01 (...): its worker failed, resuming from its last checkpoint

    Counts come from the ``trials`` list Tune passes to every hook (so a restored experiment's earlier trials
    count); the trial of the event is counted as what the event says (Tune updates its status only after the
    hook). A trial that ended with an ``errored`` report (an application error, :func:`medseg_platform.study.run_trial_in_tune`)
    counts as errored. ETA = mean wall time of the trials that ran to the end in this run (trials skipped
    because their result existed do not count) x (running + pending) / the most trials seen running at once:
    a rough figure, shown only once a trial has finished.
    """

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.clock = clock  # tests pass a fake clock
        self.setup()

    def setup(self, **info) -> None:  # Tune calls it when an experiment starts, restored ones included (this object is unpickled)
        self.start = self.clock()
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.peak_running = 0

    # -- formatting (no Ray needed: tests pass objects with trial_id, status, config, last_result) ----------
    @staticmethod
    def category(trial) -> str:
        """``finished`` / ``errored`` / ``running`` / ``pending`` from a Tune trial's status and last result."""
        status = getattr(trial, "status", "PENDING")
        if status == "ERROR" or (status == "TERMINATED" and (getattr(trial, "last_result", None) or {}).get("errored")):
            return "errored"
        return {"TERMINATED": "finished", "RUNNING": "running"}.get(status, "pending")

    def counts(self, trials, trial=None, now: str | None = None) -> dict[str, int]:
        counts = dict.fromkeys(("finished", "running", "pending", "errored"), 0)
        for t in trials:
            counts[now if (trial is not None and now and t is trial) else self.category(t)] += 1
        if trial is not None and now and not any(t is trial for t in trials):
            counts[now] += 1
        counts["pending"] += max(0, self.total - sum(counts.values()))  # trials Tune has not created yet
        return counts

    def line(self, what: str, trial, trials, now: str | None = None) -> str:
        c = self.counts(trials, trial, now)
        self.peak_running = max(self.peak_running, c["running"], 1)
        left = c["running"] + c["pending"]
        if not left:
            eta = "done"
        elif self.durations:
            eta = "ETA " + _duration(sum(self.durations) / len(self.durations) * left / self.peak_running)
        else:
            eta = "ETA ? (after the first trial finishes)"
        done = c["finished"] + c["errored"]
        return (f"[{done}/{sum(c.values())}] {what} {_trial_name(trial)} ({c['finished']} finished, {c['running']} running, "
                f"{c['pending']} pending, {c['errored']} errored; {_duration(self.clock() - self.start)} elapsed, {eta})")

    # -- Tune hooks ----------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.clock()
        attempt = f" (attempt {trial.num_failures + 1})" if getattr(trial, "num_failures", 0) else ""
        _log(self.line(f"started{attempt}", trial, trials, now="running"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = getattr(trial, "last_result", None) or {}
        began = self.started.pop(trial.trial_id, None)
        if began is not None and not result.get("skipped") and not result.get("errored"):
            self.durations.append(self.clock() - began)
        if result.get("errored"):
            _log(self.line("ERRORED", trial, trials, now="errored") + f": {result.get('error', '?')}")
        else:
            _log(self.line("finished" + (" (result existed)" if result.get("skipped") else ""), trial, trials, now="finished"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.started.pop(trial.trial_id, None)
        retries = max(0, getattr(trial, "num_failures", 1) - 1)
        _log(self.line(f"ERRORED after {retries} retr{'y' if retries == 1 else 'ies'}", trial, trials, now="errored"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.started.pop(trial.trial_id, None)
        _log(self.line(f"retry {trial.num_failures}/{trial.max_failures} of", trial, trials, now="pending")
             + ": its worker failed, resuming from its last checkpoint")


def _trial_name(trial) -> str:
    """The trial's key (grid trials) or Tune's trial id (searched trials get their key inside the trial)."""
    config = getattr(trial, "config", None) or {}
    grid_trial = config.get("trial") if not config.get("search") else None
    key = grid_trial.get("key") if isinstance(grid_trial, Mapping) else None
    return key or str(getattr(trial, "trial_id", "?"))


def _duration(seconds: float) -> str:
    """``45 s``, ``2.5 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
