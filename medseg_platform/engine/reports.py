"""What :func:`medseg_platform.engine.train_trial` reports while it runs (the Tune function trainable passes a
``report(metrics, checkpoint_dir)`` callback that calls ``ray.tune.report``; the engine knows nothing about Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

#: ``report(metrics, checkpoint_dir)``: ``checkpoint_dir`` is the trial's checkpoint folder at a validation, None
#: for a progress-only report.
Reporter = Callable[[dict, "Path | None"], None]


def progress_fields(objective: str, phase: str, stage: int, stages: int, step: int, steps: int, steps_per_s: float,
                    evaluations: int, cached: bool = False) -> dict:
    """Where a trial is, added to every report of :func:`medseg_platform.engine.train_trial` (the study's progress
    lines and their ETA, :mod:`medseg_platform.progress`, read them).

    ``phase`` ``"pretraining"`` (``stage`` = 1-based stage number of ``stages``) or ``"fine-tuning"`` (``stage`` 0);
    ``phase_step`` of ``phase_steps``; ``objective`` of the phase; ``steps_per_s`` of the last curve row (NaN for a
    stage loaded from the cache, ``stage_cached``); ``evaluations`` = validations done so far, the time attribute of
    the study's ASHA scheduler (a report between validations does not advance it).

    Between validations (every curve row, ``eval.log_every``) and at every curve row of a pretraining stage,
    ``train_trial`` sends a progress-only report: these fields, the last known val Dice, no checkpoint.
    """
    return {"phase": phase, "objective": objective, "stage": stage, "stages": stages, "phase_step": step, "phase_steps": steps,
            "steps_per_s": steps_per_s, "stage_cached": cached, "evaluations": evaluations}
