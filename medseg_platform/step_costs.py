"""The expected cost of a study's trials, in supervised fine-tuning steps: the step-cost priors of each objective
(:data:`STEP_COST`) and a trial's phases (:func:`trial_plan`). The progress lines' ETA
(:class:`medseg_platform.progress.ProgressCallback`) and the dry run (:mod:`medseg_platform.plan`) price trials with
them; this module imports no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from medseg_platform.recipes import MONA_UNLABELLED_WEIGHTS

#: Prior cost of one optimisation step of each objective, in supervised steps, measured as the ETA uses them
#: (``benchmarks/RESULTS.md``, "Step-cost priors"): in the default quick study with the methods as released (a fresh
#: clone of 3a773b6, 3 trials a row, two sharing the 2 cores), the cost unit is the supervised-only trials' seconds
#: (start to end) over their cost units (steps, and :data:`EVALUATION_COST` per evaluation); a row's prior is its
#: trials' seconds less their pretraining, in units, less their evaluations, per fine-tuning step. So a trial's
#: start-up is priced into every row as it is into the unit the ETA learns from the first finished trials. ARCO is
#: the mean of SG and SAG; ``isd_pretrain`` the stages' pretraining units per stage step (MONA/ARCO's and ACTION's
#: together). The rows without the pixel-contrast term have their own keys (:func:`cost_key`). Priors only: once a
#: trial reports its step rate in this run, that rate replaces the prior of its key
#: (:class:`medseg_platform.progress.ProgressCallback`).
#:
#: The rows of ``studies/ablation_losses.py`` that skip more work were measured the same way in its quick run and a
#: ``benchmarks/run_trials.py`` run of MONA's rows (``benchmarks/RESULTS.md``, "The loss terms at the quick profile"),
#: each scaled by its run's full (or w/o contrast) row to this table's: MONA/ARCO without L_eqv (no warped pass) 0.73x
#: the full row, without L_contrast and L_eqv 0.69x the row w/o contrast, and with every unlabelled term at 0
#: ("L_sup only": the supervised pass and the release's discarded pass) 0.23x the full row. Without L_unsup alone a
#: row costs what the full row does (5.87 against 5.79 supervised steps of ``train_s``): no key of its own.
STEP_COST = {"supervised": 1.0, "mean_teacher": 1.5, "mona": 4.9, "arco": 5.3, "action": 3.9, "isd_pretrain": 6.7,
             "mona w/o contrast": 3.9, "arco w/o contrast": 3.9, "action w/o anco": 2.1,
             "mona w/o eqv": 3.6, "arco w/o eqv": 3.8, "mona w/o contrast and eqv": 2.7, "arco w/o contrast and eqv": 2.7,
             "mona L_sup only": 1.2, "arco L_sup only": 1.2}
#: The prior of an objective missing from :data:`STEP_COST` (a newly registered one), until its rate is observed; the
#: dry run names such objectives. ``tests/test_progress.py`` asks every registered objective for a measured entry
#: (docs/methods.md, 'Adding a method').
UNKNOWN_STEP_COST = 1.0
#: One evaluation pass (a validation, or the final test with the trial's set-up), in supervised steps: measured in
#: the same run (a validation of the quick profile's 8 val volumes took 0.19 s, 7 supervised steps).
EVALUATION_COST = 7.0


@dataclass(frozen=True)
class Phase:
    """A training phase of a trial: ``steps`` of ``objective``. ``stage`` identifies a pretraining stage (trials with
    the same identity share its cache entry); None for the fine-tuning."""

    objective: str
    steps: int
    stage: str | None = None

    @property
    def units(self) -> float:
        """Expected cost in supervised steps (:data:`STEP_COST`)."""
        return self.steps * STEP_COST.get(self.objective, UNKNOWN_STEP_COST)


@dataclass(frozen=True)
class TrialPlan:
    """The expected work of one trial: its pretraining stages, its fine-tuning and its evaluation passes
    (validations + the test). ``existed``: its result existed when the study started (Tune only skips it);
    ``scoring_only``: it existed, and its Tune trial scores its weights on ``--test-root`` (one evaluation pass)."""

    key: str
    stages: tuple[Phase, ...]
    fine_tuning: Phase
    evaluations: int
    existed: bool = False
    scoring_only: bool = False


def cost_key(objective: str, params: Mapping) -> str:
    """The :data:`STEP_COST` key of a fine-tuning objective with its parameters: a MONA/ARCO row without the pixel
    contrast (``contrast_weight`` 0), without L_eqv (``eqv_weight`` 0), without both, or with every unlabelled term
    at 0 ("L_sup only"), or an ACTION row without L_anco (``anco_weight`` 0), skips that work."""
    if objective in ("mona", "arco"):
        if all(params.get(name) == 0 for name in MONA_UNLABELLED_WEIGHTS):
            return f"{objective} L_sup only"
        left_out = [term for term, name in (("contrast", "contrast_weight"), ("eqv", "eqv_weight")) if params.get(name) == 0]
        return f"{objective} w/o {' and '.join(left_out)}" if left_out else objective
    if objective == "action" and params.get("anco_weight") == 0:
        return "action w/o anco"
    return objective


def validations(config: Mapping) -> int:
    """How many validations a trial of ``config`` (a ``TrialConfig.to_dict()``) runs: every ``eval.val_every`` steps and
    after the last (``medseg_platform.engine.trial``), ceil(max_steps / val_every)."""
    return -(-int(config["optim"]["max_steps"]) // int(config["eval"]["val_every"]))


def trial_plan(config: Mapping, key: str, existed: bool = False, scoring_only: bool = False) -> TrialPlan:
    """The :class:`TrialPlan` of the trial of ``config`` (a ``TrialConfig.to_dict()``).

    A stage's identity is its chain up to it, the model, the data it reads
    (``medseg_platform.engine.pretrain.stage_data``), the seed, the workers and the mixed precision: the inputs of
    ``medseg_platform.engine.stage_key`` but the labelled subset, which those determine (``data.labelled`` as written:
    the key has the resolved patients, so "1" and "25%" of one patient share a stage the ETA prices twice, which the
    plan does without reading the dataset's lists). Two trials with one identity share the stage: the ETA counts it once.
    """
    from medseg_platform.engine.pretrain import stage_data  # torch: only where a plan is priced

    pretrain = list(config.get("pretrain") or [])
    data = dict(config.get("data") or {})
    amp = dict(config.get("optim") or {}).get("amp", "off")
    chains = [pretrain[: i + 1] for i in range(len(pretrain))]
    stages = tuple(Phase(str(chain[-1]["objective"]), int(chain[-1]["max_steps"]),
                         json.dumps([chain, config.get("model"), stage_data(data, [stage["objective"] for stage in chain]),
                                     config.get("seed"), config.get("workers"), amp], sort_keys=True, default=str))
                   for chain in chains)
    steps = int(config["optim"]["max_steps"])
    fine_tuning = Phase(cost_key(str(config["objective"]), dict(config.get("objective_params") or {})), steps)
    return TrialPlan(key, stages, fine_tuning, validations(config) + 1, existed, scoring_only and existed)


def format_duration(seconds: float) -> str:
    """``45 s``, ``2.5 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
