"""ASHA early stopping whose rungs survive a resumed search (docs/ray.md, 'ASHA across a resume').

Ray 2.60's ``Tuner.restore`` restores the search algorithm's state, but the scheduler comes back as it was pickled
when the experiment started: ASHA's rungs are empty again. A sample restored mid-run has passed rung 1 long ago;
its later reports and its final one are then recorded at the rungs it passes again, with its *late* validation
Dice. New samples at their first validation are compared with those late values, so a resumed search stopped
samples that the same search, uninterrupted, finished (4 of 6 in a smoke search, where the uninterrupted run
stopped none): the result depended on whether it had been interrupted.

:class:`ResumableASHA` is Ray's ASHA plus a small JSON file of its rungs (per milestone, trial id -> recorded
value), written after every result that changes them and read back at its first use after a restore. Tune keeps a
trial's id when it restores an experiment, so a restored sample finds its own records and is not recorded again,
and every later sample meets the rungs an uninterrupted search would have shown it. The file's path is bound by
the driver each run (:func:`bind_state_file`), not pickled into the experiment, so a copied results folder never
writes into the original's file.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler

from medseg_platform.io import read_json_object, write_json_atomic

#: beside a Tune experiment's folder: its ASHA rungs
STATE_SUFFIX = ".asha.json"
_STATE_FILES: dict[str, Path] = {}  # experiment name -> its rungs' file, for this driver process


def bind_state_file(experiment: str, path: Path) -> None:
    """Where the scheduler of ``experiment`` keeps its rungs in this run (call before ``fit``)."""
    _STATE_FILES[experiment] = Path(path)


class ResumableASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` (same arguments, plus the Tune ``experiment`` name) whose rungs persist across a
    restore (without a bound file, :func:`bind_state_file`, they live in memory only, as Ray's do).

    ``max_t`` counts a sample's validations plus its final report (``medseg_platform.study.runner.tune_config``), so
    the last validation is ``max_t - 1``. Ray's rungs are at ``grace_period * 4^k`` for k up to
    ``int(log4(max_t / grace_period))``, so with 4, 16 or 64 validations (grace period 1) one sits on the last
    validation; a sample stopped there had trained fully and lost only its test (the search review). Rungs at or after
    the last validation are dropped (in a new experiment: a restored one unpickles the scheduler it started with)."""

    def __init__(self, experiment: str, **kwargs):
        super().__init__(**kwargs)
        self._experiment = experiment
        self._state_read = False
        last_validation = kwargs["max_t"] - 1
        for bracket in self._brackets:
            bracket._rungs = [(milestone, recorded) for milestone, recorded in bracket._rungs if milestone < last_validation]

    def __getstate__(self) -> dict:  # pickled into the experiment when it starts: a restore reads the file again
        return {**self.__dict__, "_state_read": False}

    def _state_file(self) -> Path | None:
        return _STATE_FILES.get(self._experiment)

    def _read_state(self) -> None:
        if self._state_read:
            return
        self._state_read = True
        path = self._state_file()
        saved = read_json_object(path) if path is not None else None
        if not saved:
            return
        for bracket, rungs in zip(self._brackets, saved.get("brackets", [])):
            by_milestone = {float(saved_milestone): values for saved_milestone, values in rungs}
            for milestone, recorded in bracket._rungs:  # a rung saved by an older version and dropped here is left out
                recorded.update({str(trial): float(value) for trial, value in by_milestone.get(float(milestone), {}).items()})
        self._num_stopped = int(saved.get("num_stopped", self._num_stopped))

    def _rung_records(self) -> list:
        return [[[float(milestone), dict(recorded)] for milestone, recorded in bracket._rungs] for bracket in self._brackets]

    def _write_state(self, before: list) -> None:
        path = self._state_file()
        now = self._rung_records()
        if path is not None and now != before:
            write_json_atomic(path, {"brackets": now, "num_stopped": self._num_stopped})

    def on_trial_add(self, tune_controller, trial) -> None:
        self._read_state()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._read_state()
        before = self._rung_records()
        action = super().on_trial_result(tune_controller, trial, result)
        self._write_state(before)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._read_state()
        before = self._rung_records()
        super().on_trial_complete(tune_controller, trial, result)
        self._write_state(before)
