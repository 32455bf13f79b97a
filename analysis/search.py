"""The outcome of an Optuna search study: its history (every sample, in order) and its best configuration.

Inputs: the study's Tune experiment (``<study_dir>/ray/<name>-<spec_hash>``, named by ``study.json``) for
the samples in the order Optuna proposed them, their sampled values, Tune status and last reported
metrics (a trial that ASHA stopped early has no result files, only what it reported to Tune), and the
per-trial files (``trials/<key>/result.json``, ``error.json``) for what finished. Nothing is trained.

Outputs (written atomically into the study dir):

* ``search_history.csv``: one row per sample: ``order`` (1-based, proposal order), ``trial_id`` (Tune's),
  ``trial_key`` (the trial folder), ``status`` (``completed`` | ``stopped early`` (ASHA) | ``errored`` |
  ``unfinished`` | ``result missing``: it finished, but its ``result.json`` is gone or unreadable), one column
  per searched key (the sampled value), ``last_step`` (the last training step reported), ``best_val_dice``
  (the val mean Dice of the selected weights: the best validation's, or the last one's under ``eval.selection``
  "final", as ``--protocol released`` sets; for a stopped trial the best it reached before it was stopped), ``test_dice``
  (test mean Dice of the selected weights; completed trials only), ``error`` (errored trials).
* ``best_config.json``: the completed sample with the highest ``best_val_dice`` (model selection on the
  val split, never on test): its sampled values, full trial config, trial key, ``best_val_dice`` and
  ``test_dice``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from analysis.tables import as_number
from medseg_platform.study.experiment_state import tune_trial_states
from medseg_platform.study.trainable import trial_config_and_key
from medseg_platform.errors import MedsegError
from medseg_platform.io import write_json_atomic, write_text_atomic
from medseg_platform.results import (ERROR_FILE, RESULT_FILE, SEARCH_HISTORY_FILE, STUDY_FILE, CorruptResult, read_trial,
                                    trial_folder, tune_storage)

#: a sample's status in search_history.csv (module docstring), in the order the summary counts them
STATUSES = ("completed", "stopped early", "errored", "unfinished", "result missing")
HISTORY_FILE = SEARCH_HISTORY_FILE
BEST_FILE = "best_config.json"
FIXED_COLUMNS = ("order", "trial_id", "trial_key", "status")
METRIC_COLUMNS = ("last_step", "best_val_dice", "test_dice", "error")


@dataclass(frozen=True)
class Sample:
    """One search sample as the history reports it."""

    order: int
    trial_id: str
    key: str
    status: str
    values: dict[str, Any]
    config: dict[str, Any]
    last_step: int | None
    best_val_dice: float | None
    test_dice: float | None
    error: str = ""


def experiment_path(study_dir: Path) -> Path:
    """The study's Tune experiment folder (named by ``study.json``'s ``name`` and ``spec_hash``)."""
    try:
        spec = json.loads((Path(study_dir) / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsegError(f"{study_dir}: no readable study.json ({exc})") from None
    if not spec.get("search"):
        raise MedsegError(f"{study_dir}: not a search study (study.json has no search)")
    if not spec.get("name") or not spec.get("spec_hash"):
        raise MedsegError(f"{study_dir}/study.json: no name/spec_hash, so the search's Tune experiment cannot be found")
    path = tune_storage(study_dir) / f"{spec['name']}-{spec['spec_hash']}"
    if not path.is_dir():
        raise MedsegError(f"{path}: the search's Tune experiment is missing (not run yet, or a results folder copied "
                          "without ray/): the history and best configuration cannot be built, and the tables hold every "
                          "sample folder found; a run of the study starts the search again")
    return path


def _order_key(trial: Any, position: int) -> tuple[int, int]:
    """Proposal order: Tune's ``experiment_tag`` starts with the trial's 1-based index (``"3_objective_..."``);
    the position in the experiment state breaks ties and stands in when the tag has no index."""
    prefix = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return (int(prefix), position) if prefix.isdigit() else (position, position)


def load_samples(study_dir: Path) -> list[Sample]:
    """Every sample of the search, in proposal order (see the module docstring)."""
    return samples_from_trials(study_dir, tune_trial_states(experiment_path(study_dir)))


def samples_from_trials(study_dir: Path, tune_trials: Sequence[Any]) -> list[Sample]:
    """The samples of ``tune_trials`` (Tune ``Trial`` objects: ``trial_id``, ``experiment_tag``, ``status``,
    ``config`` = ``{"trial": {...}, "search": {...}}``, ``last_result``) joined with the trial files."""
    study_dir = Path(study_dir)
    trials = sorted(enumerate(tune_trials), key=lambda it: _order_key(it[1], it[0]))
    samples = []
    for order, (_, trial) in enumerate(trials, start=1):
        params = trial.config or {}
        values = dict(params.get("search") or {})
        config, key = trial_config_and_key(params, str(trial.trial_id))  # the folder run_trial_in_tune writes it to
        last = trial.last_result or {}
        try:
            record = read_trial(trial_folder(study_dir, key))
        except CorruptResult:
            record = None
        error_file = trial_folder(study_dir, key) / ERROR_FILE
        error = ""
        if record is not None:
            status = "completed"
        elif trial.status == "ERROR" or error_file.is_file() or last.get("errored"):  # trainable.end_errored
            status = "errored"  # an application error's report says so even where its error.json could not be written
            try:
                error = str(json.loads(error_file.read_text(encoding="utf-8")).get("error", ""))
            except (OSError, json.JSONDecodeError, AttributeError):
                error = str(last.get("error") or getattr(trial, "error_file", "") or "")
        elif trial.status == "TERMINATED" and "test_dice" in last:  # its final report, sent after the result files were written
            status = "result missing"  # (an ASHA stop also ends with done=True, set by Tune; only the final report has test_dice)
        elif trial.status == "TERMINATED":
            status = "stopped early"
        else:
            status = "unfinished"
        best_val = record.result.get("best_val_dice") if record is not None else last.get("best_val_dice")
        test = record.result["test"]["mean"]["dice"] if record is not None else None
        samples.append(Sample(order, str(trial.trial_id), key, status, values, config,
                              int(last["step"]) if as_number(last.get("step")) is not None else None,
                              as_number(best_val), as_number(test), error))
    return samples


def unfinished_search(samples: Sequence[Sample], num_samples: int) -> str:
    """"" for a search whose ``num_samples`` samples have all ended (completed, stopped early or errored); else the line
    that says it is unfinished (a stop signal ended the run: its best configuration is the best so far)."""
    ended = sum(s.status != "unfinished" for s in samples)
    if ended >= num_samples:
        return ""
    return f"search unfinished: {ended} of {num_samples} samples ended; rerun the study command to finish it"


def missing_results(samples: Sequence[Sample]) -> list[str]:
    """Problem lines for samples that finished in Tune but whose result files are gone or unreadable: they are out of
    the tables and the best configuration, and a rerun does not train them again (the restored experiment holds them
    as ended)."""
    return [f"search sample {s.order} ({s.key}) finished but its result.json is missing or unreadable: it is left out of "
            "the tables and the best configuration; restore the trial folder, or run the search again under a new --name"
            for s in samples if s.status == "result missing"]


def unrecorded_errors(study_dir: Path, samples: Sequence[Sample]) -> list[str]:
    """Problem lines (``errored trial KEY: ...``, counted with the errored trials) for errored samples whose trial folder
    holds no ``error.json``: an application error whose file a full disk refused (its report to Tune carries the
    error; ``trainable.end_errored``), or a trial Tune ended as errored. Without them the report said "Problems: none"
    and "0 errored" beside a search line of errored samples (the diff review)."""
    return [f"errored trial {s.key}: {s.error or 'no error recorded'} (search sample {s.order}; no {ERROR_FILE} in its "
            "folder: search_history.csv keeps what Tune reported)"
            for s in samples if s.status == "errored" and not any((trial_folder(Path(study_dir), s.key) / name).exists()
                                                                  for name in (ERROR_FILE, RESULT_FILE))]  # listed already


def best_sample(samples: list[Sample]) -> Sample | None:
    """The completed sample with the highest best_val_dice (ties: the earlier one); None if none completed."""
    done = [s for s in samples if s.status == "completed" and s.best_val_dice is not None]
    return max(done, key=lambda s: (s.best_val_dice, -s.order)) if done else None


def history_csv(samples: list[Sample]) -> str:
    """``search_history.csv``'s text (columns in the module docstring)."""
    import csv
    import io

    keys = list(dict.fromkeys(k for s in samples for k in s.values))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *keys, *METRIC_COLUMNS])
    for s in samples:
        writer.writerow([s.order, s.trial_id, s.key, s.status, *(s.values.get(k, "") for k in keys),
                         "" if s.last_step is None else s.last_step,
                         "" if s.best_val_dice is None else f"{s.best_val_dice:.6f}",
                         "" if s.test_dice is None else f"{s.test_dice:.6f}", s.error])
    return out.getvalue()


def write_search_summary(study_dir: Path) -> tuple[list[Path], Sample | None, list[Sample]]:
    """Write ``search_history.csv`` and (when a sample completed) ``best_config.json``; returns the paths,
    the best sample and all samples."""
    study_dir = Path(study_dir)
    samples = load_samples(study_dir)
    paths = [study_dir / HISTORY_FILE]
    write_text_atomic(paths[0], history_csv(samples))
    best = best_sample(samples)
    best_path = study_dir / BEST_FILE
    if best is not None:
        selected_by = ("best_val_dice (mean Dice on the val split of the weights each sample selected: its best "
                       "validation's, or its last one's under eval.selection final)")
        write_json_atomic(best_path, {"selected_by": selected_by, "order": best.order,
                                      "trial_key": best.key, "best_val_dice": best.best_val_dice, "test_dice": best.test_dice,
                                      "search": best.values, "config": best.config,
                                      "samples": len(samples), "completed": sum(s.status == "completed" for s in samples)})
        paths.append(best_path)
    else:
        best_path.unlink(missing_ok=True)  # never leave a stale best from an earlier search
    return paths, best, samples
