"""Optuna TPE through Tune, with a sample that ended in an application error told to Optuna as *failed*
(docs/ray.md, 'Optuna through Tune').

A trial that hits an application error (a NaN loss, bad data) ends normally with an ``errored`` report whose metric
is NaN (:func:`medseg_platform.study.trainable.end_errored`), so that Tune spends no retry on it. Ray 2.60's
``OptunaSearch`` tells Optuna that NaN as a COMPLETE value; Optuna refuses it, Ray logs the refusal ("The value nan
is not acceptable") and the Optuna trial stays RUNNING in the study and its journal for good. :class:`TPESearch`
tells Optuna such a sample as ``FAIL`` with no value, without the warning; every other completion is Ray's. (A search
started before this class existed restores Ray's ``OptunaSearch`` with its experiment: Tune pickles the searcher.)
"""

from __future__ import annotations

import math

from ray.tune.search.optuna import OptunaSearch

from medseg_platform.study.search_journal import STUDY_FOLDER_ATTR

#: the report key an application error sets (trainable.end_errored)
ERRORED_KEY = "errored"


class TPESearch(OptunaSearch):
    """``OptunaSearch`` (same arguments) that records an errored sample as an Optuna ``FAIL`` without a value; Optuna's
    INFO lines ("A new study created in memory ...", at every start) are left out of the study's console, its warnings
    kept. ``study_folder``: recorded in the Optuna study it creates (user attribute ``STUDY_FOLDER_ATTR``; a study
    loaded from the journal keeps the folder that created it), so that the same search run from another folder is
    told apart (:func:`medseg_platform.study.search_journal.check_journal_holds_no_other_search`)."""

    def __init__(self, *args, study_folder: str | None = None, **kwargs) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study_folder = study_folder
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode) -> None:
        import optuna

        folder = getattr(self, "_study_folder", None)  # a searcher pickled before the attribute existed has none
        # only a study this call creates: one of older code loaded from the journal names no folder, and naming the
        # folder that loaded it made a later refusal name the wrong one (the third diff review)
        creates = self._storage is None or self._study_name not in optuna.get_all_study_names(self._storage)
        super()._setup_study(mode)
        if folder is not None and creates:
            self._ot_study.set_user_attr(STUDY_FOLDER_ATTR, folder)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return  # a sample the searcher already ended, resumed by a restored experiment: see on_trial_complete
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get(ERRORED_KEY):
            result, error = None, True  # Ray's path for a trial that raised: state FAIL, nothing told as a value
        if trial_id in self._completed_trials:
            self._tell_resumed(trial_id, result, error)
            return
        super().on_trial_complete(trial_id, result, error)

    def _tell_resumed(self, trial_id: str, result: dict | None, error: bool) -> None:
        """A sample whose worker was killed is told to Optuna as failed; when the experiment was stopped before Tune
        saved that, a rerun resumes the sample, and Ray's searcher logged a warning with the whole result for each of its
        reports and dropped its value (the runner review: 11 lines, and TPE never learnt it). Its value is added to the
        Optuna study as a finished trial of the same parameters (an ended Optuna trial cannot change state)."""
        value = (result or {}).get(self.metric)
        ot_trial = self._ot_trials.get(trial_id)
        if error or ot_trial is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        import optuna

        self._ot_study.add_trial(optuna.trial.create_trial(params=ot_trial.params, distributions=ot_trial.distributions,
                                                           value=float(value)))
