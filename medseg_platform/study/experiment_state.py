"""A Tune experiment's trials read from its state file as plain JSON (docs/ray.md, 'Reading an experiment without
unpickling it').

Ray's ``ExperimentAnalysis`` rebuilds each trial by unpickling fields its ``experiment_state-*.json`` stores as
``cloudpickle`` hex text, so reading a results folder someone else wrote ran any code it carried (the security audit:
a report of a copied search folder printed a planted payload). The search history, the report and the dry run read
only what is plain JSON in Ray 2.60 (the version ``constraints.txt`` pins). Resuming an experiment is another matter:
``Tuner.restore`` unpickles ``tuner.pkl``, so resume only results folders you or your group wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_platform.errors import MedsegError


@dataclass(frozen=True)
class TuneTrialState:
    """What the history reads of one Tune trial (the attributes of Tune's ``Trial`` it uses)."""

    trial_id: str
    experiment_tag: str
    status: str
    config: dict
    last_result: dict
    error_file: str


def experiment_restorable(experiment: Path) -> bool:
    """Whether a Tune experiment folder can be resumed: its ``tuner.pkl`` (what ``Tuner.can_restore`` checks) and a saved
    ``experiment_state-*.json``. A driver stopped between the two (SIGKILL, or Ctrl-C at that moment) left a folder
    that ``can_restore`` accepted and every rerun then failed on: a search with "no experiment_state-*.json", a grid
    with a phantom errored trial on every resume (the fault review)."""
    return (experiment / "tuner.pkl").is_file() and any(experiment.glob("experiment_state-*.json"))


def tune_trial_states(experiment: Path) -> list[TuneTrialState]:
    """The trials of a Tune experiment folder, read as JSON from its newest ``experiment_state-*.json``: the trial id,
    tag, status, config, last result and error file name; the pickled fields are never decoded (module docstring)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        raise MedsegError(f"{experiment}: no experiment_state-*.json (Tune saved no state yet); rerun the study command")
    try:
        document = json.loads(states[-1].read_text(encoding="utf-8"))
        out = []
        for state_text, runtime_text in document["trial_data"]:
            state, runtime = json.loads(state_text), json.loads(runtime_text)
            out.append(TuneTrialState(str(state["trial_id"]), str(state.get("experiment_tag") or ""), str(state.get("status") or ""),
                                      _plain(state.get("config")), _plain(runtime.get("last_result")),
                                      str(runtime.get("error_filename") or "")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedsegError(f"{states[-1]}: not a Tune experiment state this version reads ({type(exc).__name__}: {exc}); the "
                          "history and best configuration cannot be built") from None
    return out


def resumes_trials(experiment: Path, grid_trials: int) -> bool:
    """Whether ``Tuner.restore(..., resume_errored=True)`` of a grid study's experiment of ``grid_trials`` trials would
    run any, under the limits it was started with: one whose status is not TERMINATED, or one its grid has not created
    yet (Tune creates them as slots free up); the trials it considers done but that have no result run in a fresh
    experiment under the command's own (``medseg_platform.study.runner``). True when the state cannot be read (the
    caller then says what a restore keeps)."""
    try:
        states = tune_trial_states(experiment)
    except MedsegError:
        return True
    return len(states) < grid_trials or any(trial.status != "TERMINATED" for trial in states)


def _plain(value: Any) -> dict:
    """A JSON object as read, or {} for anything else (Tune's ``CLOUDPICKLE_FALLBACK`` entries are never decoded)."""
    return value if isinstance(value, dict) and value.get("_type") != "CLOUDPICKLE_FALLBACK" else {}
