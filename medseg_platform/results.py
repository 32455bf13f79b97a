"""The on-disk results of a study and its trials: the source of truth for every table and plot, and the one
place that names the layout of a results directory (the constants and path functions below).

A results directory holds one folder per study and the pretraining stages its studies share::

    <results>/pretrain-cache/<stage key>/   a pretraining stage (medseg_platform.engine.pretrain): checkpoint.pt
                                            while it trains, final.pt when done
    <results>/<study>/
        study.json       what the analysis needs besides the trial files (Study.description)
        last_run.json    timing of the last run of the study command
        settings.json    the study command's flags (written by the command line)
        ray/             Tune's experiments; ray-train/: the Ray Train runs of multi-worker trials
        trials/<key>/    one folder per trial, named by the trial's key (a hash of its resolved config)

    <results>/<study>/trials/<key>/
        config.json      the resolved TrialConfig (plus the study's tags for this trial)
        labelled.json    labelled patients and slice counts (medseg_platform.data.splits)
        per_case.csv     test metrics: case, class, dice, jaccard, hd95, asd, ...
        curves.csv       training curves: step, lr, steps_per_s, loss terms
        val_curve.csv    step, val_dice
        qualitative.npz  a few test slices for the overlay plots (below; written by the engine)
        per_case_test_root.csv  only with a study's ``--test-root``: the selected weights' per-case metrics on that
                         external dataset's test split (same columns as per_case.csv); result.json then records
                         ``test_root``: {"root", "num_test_cases", "test" (means as "test"), "fingerprint"}
        test_root_error.json    only while scoring on the ``--test-root`` failed: {"root", "error"} (listed by the report)
        result.json      written last: status, seed, labelled patients, best step, test means, timing,
                         finished_at (epoch seconds), class_names (of labels 1..N-1, from the dataset),
                         per_case_sha256 and val_curve_sha256 (of per_case.csv and val_curve.csv as written),
                         attempts (how many times the trial started, retries and resumes included), and for a
                         trial scored from a finished trial's checkpoint instead of trained, scored_from
                         (medseg_platform.rescore)
        attempts.json    one entry per start of the trial (pid, host, time), written before training; with
                         pretrain_stages once that attempt has run the pretraining stages (read or trained)
        error.json       only for an errored trial: the reason (kind, message, step/terms of a NaN loss)
        checkpoint/checkpoint.pt  the engine's resumable checkpoint (and the selected weights)

``qualitative.npz`` (``medseg_platform.engine.QualitativeSlices``) holds the middle slice of the first
three test cases sorted by id (the same slices for every trial on a dataset), N <= 3: ``cases`` (N,)
str, ``slices`` (N,) int64 slice index, ``spacing`` (N, 2) float64 in-plane mm (NaN when unknown), and
per sample i ``image_i`` (H_i, W_i) float16 in [0, 1], ``label_i`` and ``prediction_i`` (H_i, W_i)
uint8 class indices (the model selected on val). Shapes can differ between cases.

Every file is written atomically and ``result.json`` last, so a folder whose ``result.json`` reads back
complete, beside a ``per_case.csv`` that gives the test means it records, is a finished trial; anything else
(missing, truncated, wrong schema, per-case rows missing or changed) is unfinished and the trial is run again. Ray's own experiment state is never read for tables.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from medseg_platform.config import is_real, is_whole
from medseg_platform.errors import MedsegError
from medseg_platform.io import read_json_object, sha256_file, write_json_atomic, write_text_atomic
from medseg_platform.stats import nan_mean

RESULT_SCHEMA = "medseg-trial-result/1"

# ------------------------------------------------------------------------------------- folder layout
STUDY_FILE = "study.json"
LAST_RUN_FILE = "last_run.json"
SETTINGS_FILE = "settings.json"
SEARCH_HISTORY_FILE = "search_history.csv"  # an Optuna search's samples (analysis.search writes it with the report)
TRIALS_DIR = "trials"
TUNE_DIR = "ray"
RAY_TRAIN_DIR = "ray-train"
PRETRAIN_CACHE_DIR = "pretrain-cache"
#: a trial's own files
CONFIG_FILE = "config.json"
LABELLED_FILE = "labelled.json"
PER_CASE_FILE = "per_case.csv"
CURVES_FILE = "curves.csv"
VAL_CURVE_FILE = "val_curve.csv"
TEST_ROOT_PER_CASE = "per_case_test_root.csv"
TEST_ROOT_ERROR_FILE = "test_root_error.json"
QUALITATIVE_FILE = "qualitative.npz"
RESULT_FILE = "result.json"
ATTEMPTS_FILE = "attempts.json"
ERROR_FILE = "error.json"
CHECKPOINT_DIR = "checkpoint"
#: a resumable training state: in a trial's ``checkpoint/`` and in a pretraining stage's folder
CHECKPOINT_FILE = "checkpoint.pt"
#: a finished pretraining stage's state, in its folder
STAGE_FINAL_FILE = "final.pt"
STAGE_DATA_FILE = "data.json"  # beside a stage's final.pt: the dataset root and identity it was trained on
#: where a trial run outside a study (no shared cache) keeps its pretraining stages
OWN_PRETRAIN_DIR = "pretrain"


def trial_folder(study_dir: str | os.PathLike, key: str) -> Path:
    """The folder of trial ``key`` of the study in ``study_dir``."""
    return Path(study_dir) / TRIALS_DIR / key


def checkpoint_folder(trial_dir: str | os.PathLike) -> Path:
    """The folder of a trial's resumable checkpoint (what Tune's checkpoints copy)."""
    return Path(trial_dir) / CHECKPOINT_DIR


def checkpoint_path(trial_dir: str | os.PathLike) -> Path:
    """A trial's resumable checkpoint, which also holds its selected weights."""
    return checkpoint_folder(trial_dir) / CHECKPOINT_FILE


def pretrain_cache_dir(study_dir: str | os.PathLike) -> Path:
    """Finished pretraining stages, shared by every study under the same results directory."""
    return Path(study_dir).parent / PRETRAIN_CACHE_DIR


def stage_folder(cache_dir: str | os.PathLike, key: str) -> Path:
    """The folder of the pretraining stage with cache key ``key`` (:func:`medseg_platform.engine.stage_key`)."""
    return Path(cache_dir) / key


def tune_storage(study_dir: str | os.PathLike) -> Path:
    """Where the study's Tune experiments live (``<tune_storage>/<experiment name>``)."""
    return Path(study_dir) / TUNE_DIR


def ray_train_storage(study_dir: str | os.PathLike) -> Path:
    """Where the Ray Train runs of the study's multi-worker trials live."""
    return Path(study_dir) / RAY_TRAIN_DIR
REQUIRED_KEYS = ("schema", "status", "trial_key", "config", "seed", "labelled", "tags")
PER_CASE_FIELDS = ("case", "class", "dice", "jaccard", "hd95", "asd")


#: Part of the trial key of an objective's trials: bump an objective's number when a change to the platform changes
#: what its trials train with an unchanged config, so that a results folder's trials of the earlier code are not
#: taken for this code's (they stay in the folder; the tables leave them out). An objective not listed keeps the keys
#: it always had. 2 (2026-12-06): the released AdvMorph conventions and Pillow's blur in the strong view, and
#: MONA/ARCO's discarded student pass on x_l^c (``copy_bn_update``).
KEY_REVISIONS = {"mona": 2, "arco": 2, "action": 2}

#: A revision that replaces :data:`KEY_REVISIONS`' entry for one strong-view mix (``data.strong_mix``) of an objective:
#: the change touched only the trials with that mix. 3 (2026-12-06): MONA/ARCO's entropy percentiles over the pixels
#: whose mixed pseudo-label is kept, as released (``cutout`` ignores a box; the other mixes keep every pixel).
KEY_REVISIONS_BY_MIX = {("mona", "cutout"): 3, ("arco", "cutout"): 3}

#: A further revision in the key of a trial under mixed precision (``optim.amp`` other than "off"): the highest entry
#: of its objective and its pretraining stages' objectives; full-precision trials keep their keys. 1 (2026-12-07):
#: MONA/ARCO's TPS warp and ISD's global logits computed in float32 under autocast (they ran in the autocast dtype),
#: so every trial trained by or after one of them. Stages under autocast get :data:`AMP_STAGE_REVISION` in their own key.
#: 2 (isd_pretrain, 2026-12-07): the local term's rows normalised and divided by the temperatures in float32 (they were
#: in the autocast dtype before its KL's float32): every trial with an ISD stage under --amp. 2 (every objective; isd_pretrain
#: 3), 2026-12-07: the supervised Dice loss's probabilities in float32 (CPU autocast computed them, and the loss, in
#: bf16; CUDA's autocast already ran softmax in float32, so a GPU trial trains as before but is keyed anew).
KEY_REVISIONS_UNDER_AMP = {"supervised": 2, "mean_teacher": 2, "mona": 2, "arco": 2, "action": 2, "isd_pretrain": 3}
#: The pretraining stages' counterpart of :data:`KEY_REVISIONS_UNDER_AMP` (``medseg_platform.engine.pretrain.stage_key``).
AMP_STAGE_REVISION = 3

#: A revision in the key of a trial with random streams other than the fine-tuning's own, rank 0's: pretraining stages
#: or several workers. 1 (2026-12-07): those streams derived by ``medseg_platform.seeding.stream_seed`` (they were the
#: seed plus offsets, which coincided across seeds); single-worker trials without pretraining keep their keys.
STREAMS_REVISION = 1


def trial_key(config: Mapping[str, Any]) -> str:
    """A readable, unique folder name for a resolved config: ``<objective>-l<labelled>-s<seed>-<hash10>``.

    Only the config counts (not the study's display tags), and the objective's :data:`KEY_REVISIONS` entry where it
    has one (:data:`KEY_REVISIONS_BY_MIX`' for its strong-view mix, where that has one; under ``--amp`` also its
    :data:`KEY_REVISIONS_UNDER_AMP` entry; with pretraining or several workers :data:`STREAMS_REVISION`): renaming or
    reordering table
    rows never makes a finished trial look new. ``conv_kernels`` counts only when it is not ``"auto"``, its default: a
    config keeps the key it had before the field existed (docs/methods.md, 'CPU convolution kernels').
    """
    if config.get("conv_kernels") == "auto":
        config = {k: v for k, v in config.items() if k != "conv_kernels"}
    objective, mix = str(config.get("objective")), (config.get("data") or {}).get("strong_mix")
    revision = KEY_REVISIONS_BY_MIX.get((objective, mix), KEY_REVISIONS.get(objective))
    amp_revision = _amp_revision(config) if (config.get("optim") or {}).get("amp", "off") not in ("off", None) else None
    other_streams = STREAMS_REVISION and (bool(config.get("pretrain")) or config.get("workers", 1) not in (1, None))
    canonical = json.dumps({"config": config, **({"revision": revision} if revision else {}),
                            **({"amp_revision": amp_revision} if amp_revision else {}),
                            **({"streams_revision": STREAMS_REVISION} if other_streams else {})}, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    labelled = str(config.get("data", {}).get("labelled", "")).replace("%", "pct")
    return f"{config.get('objective', 'trial')}-l{labelled}-s{config.get('seed', 0)}-{digest}"


def keyed_by_this_code(folder_name: str, config: Mapping[str, Any]) -> bool:
    """Whether a trial folder named ``folder_name`` holds ``config`` under this code's :func:`trial_key` (a search
    sample's folder: that key and its Tune trial id). False for a trial of an earlier :data:`KEY_REVISIONS` (or
    by-mix, or under-amp) entry, which other code trained: its weights must not score a trial of this code's key (a
    bumped revision was scored from the old checkpoints instead of trained: the extension review), and an accumulating
    folder leaves it out of its tables. False for a config the key cannot be computed of."""
    try:
        key = trial_key(config)
    except (TypeError, ValueError, AttributeError):
        return False
    return folder_name == key or folder_name.startswith(key + "-")


def _amp_revision(config: Mapping[str, Any]) -> int | None:
    """:data:`KEY_REVISIONS_UNDER_AMP`' highest entry over the trial's objective and its pretraining stages' (None: none)."""
    stages = config.get("pretrain") or []
    objectives = [config.get("objective"), *(stage.get("objective") for stage in stages if isinstance(stage, Mapping))]
    revisions = [KEY_REVISIONS_UNDER_AMP[name] for name in objectives if name in KEY_REVISIONS_UNDER_AMP]
    return max(revisions) if revisions else None


def search_trial_key(config: Mapping[str, Any], tune_trial_id: str) -> str:
    """The folder of one Optuna sample: :func:`trial_key` of its config plus Tune's trial id.

    Two samples can resolve to the same config (a categorical, integer or quantised domain proposed twice);
    each still trains in its own folder, never in one shared by two running trials. Tune keeps a trial's id
    when an experiment is restored, so a resumed sample finds its folder again.
    """
    return f"{trial_key(config)}-{tune_trial_id}"


def _csv_text(rows: Iterable[Mapping[str, Any]], fields: Iterable[str] | None = None) -> str:
    rows = list(rows)
    if fields is None:
        fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def search_history_statuses(study_dir: Path) -> dict[str, str]:
    """``{trial_key: status}`` of a search's ``search_history.csv`` (``analysis.search.STATUSES``; the only record of a
    sample ASHA stopped early, which writes no result files); {} when there is none or it cannot be read."""
    try:
        with open(Path(study_dir) / SEARCH_HISTORY_FILE, newline="", encoding="utf-8") as fh:
            return {str(row.get("trial_key")): str(row.get("status")) for row in csv.DictReader(fh)}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written here, numbers converted back to float where they parse."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if key not in ("case",) else value
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return rows


def test_means(per_case: list[Mapping[str, Any]], metrics=("dice", "jaccard", "hd95", "asd")) -> dict[str, dict[str, float]]:
    """Per class and averaged: NaN-aware means over cases, plus the count of undefined values."""
    classes = sorted({int(r["class"]) for r in per_case})
    out: dict[str, dict[str, float]] = {}
    for c in classes:
        rows = [r for r in per_case if int(r["class"]) == c]
        out[str(c)] = {m: nan_mean(float(r[m]) for r in rows) for m in metrics}
        out[str(c)].update({f"{m}_undefined": sum(1 for r in rows if math.isnan(float(r[m]))) for m in metrics})
    out["mean"] = {m: nan_mean(out[str(c)][m] for c in classes) for m in metrics}
    out["mean"].update({f"{m}_undefined": sum(out[str(c)][f"{m}_undefined"] for c in classes) for m in metrics})
    return out


def dataset_class_names_record(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{"class_names": [...]}`` of the trial's dataset (``data.root``), so tables name the classes even when the
    data folder is gone later; {} when the config names no existing dataset folder (the analysis then uses defaults)."""
    data = config.get("data") or {}
    root = data.get("root")
    if not root or not Path(root).is_dir():
        return {}
    from medseg_platform.data.layout import dataset_class_names

    return {"class_names": list(dataset_class_names(root, int(data.get("num_classes", 4))))}


def recorded_class_names(result: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of labels 1..N-1 a finished trial was trained on: its ``result.json``'s ``class_names``, else the defaults
    of its ``data.num_classes`` (a result written before class names were recorded)."""
    names = result.get("class_names")
    if isinstance(names, list) and names:
        return tuple(str(name) for name in names)
    from medseg_platform.data.layout import default_class_names

    data = (result.get("config") or {}).get("data") or {}
    return default_class_names(int(data.get("num_classes", 4)))


def dataset_generator_record(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"data_generator": "phantom"}`` when the trial's dataset was generated, not converted from images (its
    manifest's ``source.generator``): the report shows the papers' numbers beside real ACDC runs only, and a 100-patient
    phantom has ACDC's 70 training patients and class names (the published-numbers review); {} otherwise."""
    data = config.get("data") or {}
    root = data.get("root")
    if not root or not Path(root).is_dir():
        return {}
    from medseg_platform.data.layout import read_manifest

    try:
        source = read_manifest(root).get("source")
    except MedsegError:  # a broken manifest: the trial itself names it
        return {}
    generator = source.get("generator") if isinstance(source, dict) else None
    return {"data_generator": str(generator)} if generator else {}


def dataset_identity_record(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"data_identity": ...}`` of the trial's dataset (:func:`medseg_platform.preflight.dataset_identity`): a study
    that finds a finished trial trained on another version of its dataset says so instead of mixing the two; {} when
    the config names no existing dataset folder."""
    from medseg_platform.preflight import dataset_identity

    data = config.get("data") or {}
    identity = dataset_identity(data["root"], int(data.get("num_classes", 4))) if data.get("root") else None
    return {"data_identity": identity} if identity else {}


def retag_finished_trials(study_dir: Path, trials: Sequence[Mapping[str, Any]]) -> int:
    """Give each finished trial of ``trials`` (``key``, ``tags``) the study's current display tags where they differ (row
    label, order, variant, axes), in ``result.json`` and ``config.json``; returns how many were rewritten. Keys hash the
    config only, so a renamed or reordered row keeps its results, and the tables read the tags from ``result.json``:
    without this, old results kept the old label and a seed added later made a second row of one configuration.
    Not for a search's samples (their folders are not ``trials``' keys)."""
    rewritten = 0
    for trial in trials:
        folder = trial_folder(Path(study_dir), trial["key"])
        result = read_json_object(folder / RESULT_FILE)
        tags = dict(trial["tags"])
        if not result or result.get("tags") == tags or not trial_finished(folder):
            continue
        write_json_atomic(folder / RESULT_FILE, {**result, "tags": tags})
        config = read_json_object(folder / CONFIG_FILE)
        if config:
            write_json_atomic(folder / CONFIG_FILE, {**config, "tags": tags})
        rewritten += 1
    return rewritten


def write_trial_config(trial_dir: Path, config: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
    """``config.json``: the trial's resolved config and its study tags (written when the trial starts, and again with
    its results)."""
    write_json_atomic(Path(trial_dir) / CONFIG_FILE, {"config": dict(config), "tags": dict(tags)})


def read_trial_config(trial_dir: Path) -> dict:
    """The resolved config in a trial's ``config.json``; ``OSError``/``ValueError``/``KeyError``/``TypeError`` when it is
    missing or unreadable."""
    return json.loads((Path(trial_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["config"]


def write_trial_results(trial_dir: Path, *, config: Mapping[str, Any], tags: Mapping[str, Any], outcome, seed: int, extra: Mapping[str, Any] | None = None) -> dict:
    """Write every result file of a finished trial (``result.json`` last) and return the result record."""
    trial_dir = Path(trial_dir)
    write_trial_config(trial_dir, config, tags)
    write_json_atomic(trial_dir / LABELLED_FILE, outcome.labelled.to_dict())
    fields = list(PER_CASE_FIELDS) + [k for k in (outcome.test_rows[0] if outcome.test_rows else {}) if k not in PER_CASE_FIELDS]
    write_text_atomic(trial_dir / PER_CASE_FILE, _csv_text(outcome.test_rows, fields))
    write_text_atomic(trial_dir / CURVES_FILE, _csv_text(outcome.curves))
    write_text_atomic(trial_dir / VAL_CURVE_FILE, _csv_text(outcome.val_curve, ("step", "val_dice")))
    record = {
        "schema": RESULT_SCHEMA,
        "status": "completed",
        "trial_key": trial_dir.name,
        "config": dict(config),
        "tags": dict(tags),
        "seed": seed,
        "labelled": outcome.labelled.to_dict(),
        "best_step": outcome.best_step,
        "best_val_dice": outcome.best_val_dice,
        "test": test_means(outcome.test_rows),
        "num_test_cases": len({r["case"] for r in outcome.test_rows}),
        "per_case_sha256": sha256_file(trial_dir / PER_CASE_FILE),  # read_trial compares the file with it
        "val_curve_sha256": sha256_file(trial_dir / VAL_CURVE_FILE),  # and this one (trial health reads the curve)
        "timing": outcome.timing,
        "resumed_from_step": outcome.resumed_from_step,
        "attempts": max(1, read_attempts(trial_dir)["attempts"]),  # 1 when run outside a study (no attempts.json)
        "finished_at": time.time(),  # epoch seconds: orders a search's trials in its history plot
        **dataset_class_names_record(config),
        **dataset_identity_record(config),
        **dataset_generator_record(config),
        **dict(getattr(outcome, "extra", None) or {}),
        **dict(extra or {}),
    }
    write_json_atomic(trial_dir / RESULT_FILE, record)
    return record


def write_trial_error(trial_dir: Path, *, config: Mapping[str, Any], tags: Mapping[str, Any], seed: int, error: str,
                      kind: str = "error", details: Mapping[str, Any] | None = None, run: str = "") -> None:
    """Record why a trial failed (``error.json``); an errored trial has no ``result.json``.

    ``kind``: ``"application"`` (a deterministic :class:`~medseg_platform.errors.MedsegError` such as a
    NaN loss: never retried), ``"infrastructure"`` (anything else: retried by Tune from the last
    checkpoint while retries are left) or ``"exception"`` (anything else in ``medseg train --in-process``, which
    does not retry). ``details``: structured fields (e.g. ``step`` and ``terms`` of a
    non-finite loss). ``run``: the id of the study run that wrote it (a rerun of the command retries
    trials that errored in earlier runs, not those that errored in this one).
    """
    write_json_atomic(Path(trial_dir) / ERROR_FILE, {"status": "error", "error": error, "kind": kind, "details": dict(details or {}),
                                                     "run": run, "attempts": read_attempts(trial_dir)["attempts"],
                                                     "config": dict(config), "tags": dict(tags), "seed": seed})


def read_attempts(trial_dir: Path) -> dict:
    """``attempts.json`` of a trial: ``{"attempts": n, "history": [{"attempt", "pid", "host", "time"}, ...]}`` (n = 0 if
    none); an entry whose attempt ran pretraining stages also has ``pretrain_stages`` (:func:`record_attempt_stages`).

    An unreadable file counts as no attempt (it is only bookkeeping; the count restarts).
    """
    try:
        data = json.loads((Path(trial_dir) / ATTEMPTS_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("attempts"), int) and isinstance(data.get("history"), list):
            return data
    except (OSError, ValueError):
        pass
    return {"attempts": 0, "history": []}


def start_attempt(trial_dir: Path) -> int:
    """Count one more start of the trial in ``attempts.json`` (atomically, before training); returns the count.

    Each entry records the process that runs the attempt (pid, host), so a test or an operator can find
    the trial's worker process.
    """
    data = read_attempts(trial_dir)
    count = data["attempts"] + 1
    history = data["history"] + [{"attempt": count, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}]
    write_json_atomic(Path(trial_dir) / ATTEMPTS_FILE, {"attempts": count, "history": history})
    return count


def record_attempt_stages(trial_dir: Path, stages: Sequence[Mapping[str, Any]]) -> None:
    """Add the pretraining stages the trial's current attempt ran (``{"stage", "objective", "key", "cached"}`` each,
    :func:`medseg_platform.engine.pretrain.run_pretraining`) to its entry of ``attempts.json``, so that a retry knows
    which stages an earlier attempt trained (:func:`stages_over_attempts`). Nothing without ``attempts.json``."""
    data = read_attempts(trial_dir)
    if not data["history"] or not isinstance(data["history"][-1], dict):
        return
    history = data["history"][:-1] + [{**data["history"][-1], "pretrain_stages": [dict(stage) for stage in stages]}]
    write_json_atomic(Path(trial_dir) / ATTEMPTS_FILE, {"attempts": data["attempts"], "history": history})


def stages_over_attempts(trial_dir: Path, stages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The trial's pretraining stages for ``result.json``'s ``pretrain_stages``: ``stages`` (the current attempt's), or,
    when the attempt resumed its fine-tuning and ran none, the last earlier attempt's (``attempts.json``,
    :func:`record_attempt_stages`); a stage is ``"cached"`` only if no attempt of this trial trained it. A retry
    after the trial had trained its stages used to record them as read from the cache (it found them there), or
    record none, and the report counted the stages that trial trained as trained by none."""
    recorded = [entry.get("pretrain_stages") for entry in read_attempts(trial_dir)["history"] if isinstance(entry, dict)]
    recorded = [runs for runs in recorded if isinstance(runs, list) and runs]
    base = list(stages) or (recorded[-1] if recorded else [])
    trained = {stage.get("key") for runs in recorded + [list(stages)] for stage in runs  # a hand-edited entry counts for none
               if isinstance(stage, Mapping) and isinstance(stage.get("key"), str) and stage.get("cached") is False}
    return [{**stage, "cached": bool(stage.get("cached")) and stage.get("key") not in trained}
            for stage in base if isinstance(stage, Mapping)]


def write_test_root_results(trial_dir: Path, root: str | os.PathLike, rows: list[dict], fingerprint: str | None = None) -> dict:
    """Record a finished trial's evaluation on an external test set (``--test-root``): ``per_case_test_root.csv``,
    then ``result.json`` rewritten with its ``test_root`` block (both atomically, result.json last); returns the block.
    ``fingerprint``: of the test split that was scored (:func:`medseg_platform.predict.test_split_fingerprint`), so a
    dataset replaced at the same path is scored again.

    The trial must be finished (its ``result.json`` readable); a previous evaluation on another root is replaced.
    """
    trial_dir = Path(trial_dir)
    record = read_trial(trial_dir)
    if record is None:
        raise FileNotFoundError(f"{trial_dir / RESULT_FILE}: the trial is not finished")
    fields = list(PER_CASE_FIELDS) + [k for k in (rows[0] if rows else {}) if k not in PER_CASE_FIELDS]
    write_text_atomic(trial_dir / TEST_ROOT_PER_CASE, _csv_text(rows, fields))
    block = {"root": str(root), "num_test_cases": len({r["case"] for r in rows}), "test": test_means(rows),
             **({"fingerprint": fingerprint} if fingerprint else {})}
    write_json_atomic(trial_dir / RESULT_FILE, {**record.result, "test_root": block})
    return block


def drop_test_root_results(trial_dir: Path) -> None:
    """Remove a finished trial's external test set evaluation (``result.json``'s ``test_root`` block first, then
    ``per_case_test_root.csv``); nothing to do when it has none or is not finished."""
    trial_dir = Path(trial_dir)
    try:
        record = read_trial(trial_dir)
    except CorruptResult:
        return
    if record is None or "test_root" not in record.result:
        return
    write_json_atomic(trial_dir / RESULT_FILE, {k: v for k, v in record.result.items() if k != "test_root"})
    (trial_dir / TEST_ROOT_PER_CASE).unlink(missing_ok=True)


def read_test_root(record: "TrialRecord") -> tuple[str, list[dict]] | None:
    """``(root, per-case rows)`` of a finished trial's external test set evaluation; None when it has none (no
    ``test_root`` block, or a per-case file that is missing or does not cover the block's cases: evaluated again)."""
    block = record.result.get("test_root")
    if not isinstance(block, dict) or not block.get("root"):
        return None
    path = Path(record.path) / TEST_ROOT_PER_CASE
    try:
        rows = read_csv(path)
        check_per_case(rows, block.get("num_test_cases"), block.get("test"), path)
    except (OSError, csv.Error, UnicodeDecodeError, CorruptResult):
        return None
    return str(block["root"]), rows


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial read back from disk."""

    path: Path
    result: dict
    per_case: list[dict]


class CorruptResult(Exception):
    """A result file exists but cannot be used (truncated JSON, wrong schema, per-case rows missing, cut short or
    changed: :func:`check_per_case`)."""


def _same_number(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same float (NaN equal to NaN) up to rounding."""
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_per_case(rows: list[dict], num_cases: Any, means: Any, path: Path) -> None:
    """Raise :class:`CorruptResult` unless ``rows`` (read by :func:`read_csv`) are the per-case file its trial wrote.

    Checks, naming the first offence: every row has a value in every column of the header (and no more), an
    integer class and a number (or ``nan``) in each metric column; each (case, class) pair appears once and every
    case has the same classes; there are ``num_cases`` cases; and the rows' means (:func:`test_means`) equal
    ``means``, the ``test`` block written beside them (so a metric changed after the trial finished is found also in
    results written before :func:`read_trial` compared the file's checksum).
    """
    pairs: dict[str, set[int]] = {}
    for line, row in enumerate(rows, 2):  # line 1 is the header
        missing = [k for k in PER_CASE_FIELDS if row.get(k) in (None, "")] + [k for k, v in row.items()
                                                                              if k not in PER_CASE_FIELDS and v is None]
        if missing:
            raise CorruptResult(f"{path}: line {line} has no {', '.join(missing)} (the file is cut short or edited)")
        if None in row:  # csv.DictReader's key for fields beyond the header
            raise CorruptResult(f"{path}: line {line} has more fields than the header (the file is edited)")
        cls, case = row["class"], str(row["case"])
        if not isinstance(cls, float) or not cls.is_integer() or cls < 0:
            raise CorruptResult(f"{path}: line {line}: class {cls!r} is not a label number")
        bad = [k for k in PER_CASE_FIELDS[2:] if not isinstance(row[k], float)]
        if bad:
            raise CorruptResult(f"{path}: line {line}: {bad[0]} {row[bad[0]]!r} is not a number")
        if int(cls) in pairs.setdefault(case, set()):
            raise CorruptResult(f"{path}: line {line}: case {case} class {int(cls)} appears twice")
        pairs[case].add(int(cls))
    if len(pairs) != num_cases:
        raise CorruptResult(f"{path}: {len(pairs)} case(s) do not cover the {num_cases} test cases of result.json")
    classes = set().union(*pairs.values()) if pairs else set()
    short = sorted(case for case, seen in pairs.items() if seen != classes)
    if short:
        raise CorruptResult(f"{path}: case {short[0]} lacks rows of class(es) "
                            f"{', '.join(map(str, sorted(classes - pairs[short[0]])))} (the file is cut short or edited)")
    recomputed = test_means(rows)
    if not isinstance(means, dict) or set(means) != set(recomputed) or any(
            not isinstance(means[c], dict) or set(means[c]) != set(recomputed[c])
            or not all(_same_number(means[c][k], v) for k, v in recomputed[c].items()) for c in recomputed):
        raise CorruptResult(f"{path}: its values do not give the test means recorded beside it (the file was changed "
                            "after the trial finished)")


def _wrongly_typed_field(result: Mapping) -> str:
    """The empty string when the fields of a result record that the tables and report read have the types the engine
    writes, else the first that does not, in words (an edited ``result.json`` crashed ``medseg report`` with a traceback
    that stopped every study after it: the report review)."""
    for name in ("config", "tags", "labelled"):
        if not isinstance(result[name], dict):
            return f"'{name}' is a {type(result[name]).__name__}, not an object"
    for name in ("timing", "environment", "scored_from"):
        if result.get(name) is not None and not isinstance(result[name], dict):
            return f"'{name}' is a {type(result[name]).__name__}, not an object"
    if not is_whole(result["seed"]):
        return f"'seed' is {result['seed']!r}, not a whole number"
    if "seed" in result["config"] and result["config"]["seed"] != result["seed"]:  # the trial writes one seed twice
        return f"'seed' is {result['seed']!r} but 'config.seed' is {result['config']['seed']!r} (one of them was edited)"
    labelled = result["labelled"]
    patients = labelled.get("patients")
    if patients is not None and not (isinstance(patients, list) and all(isinstance(p, str) for p in patients)):
        return f"'labelled.patients' is {patients!r}, not a list of patient ids"
    for name, ok, kind in (("num_patients", is_whole, "a whole number"), ("percent_patients", is_real, "a number")):
        if name in labelled and not ok(labelled[name]):
            return f"'labelled.{name}' is {labelled[name]!r}, not {kind}"
    bad = [key for key, value in (result.get("timing") or {}).items() if not is_real(value)]
    if bad:
        return f"'timing.{bad[0]}' is {result['timing'][bad[0]]!r}, not a number of seconds"
    for section in ("optim", "eval", "data"):
        if not isinstance(result["config"].get(section, {}), dict):
            return f"'config.{section}' is not an object"
    for section, key in (("optim", "max_steps"), ("eval", "val_every")):  # the report reads them as whole numbers
        fields = result["config"].get(section) or {}
        if key in fields and not is_whole(fields[key]):
            return f"'config.{section}.{key}' is {fields[key]!r}, not a whole number"
    return ""


def read_trial(trial_dir: Path, in_its_study: bool = True) -> TrialRecord | None:
    """The finished trial in ``trial_dir``; None if it has no ``result.json``; :class:`CorruptResult` if broken.
    ``in_its_study``: the folder is a study's ``trials/<key>``, whose name must be the key the result records (a study
    tables a trial by its folder's name); False for a trial folder a user copied or moved (``medseg predict --trial``)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptResult(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:  # unreadable (permissions): a traceback stopped the study command and the whole report
        raise CorruptResult(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(result, dict) or result.get("schema") != RESULT_SCHEMA or any(k not in result for k in REQUIRED_KEYS):
        raise CorruptResult(f"{path}: not a {RESULT_SCHEMA} record (missing keys or wrong schema)")
    wrong = _wrongly_typed_field(result)
    if wrong:
        raise CorruptResult(f"{path}: {wrong}")
    if in_its_study and result["trial_key"] != Path(trial_dir).name:  # a trial writes its own folder's name: copied here
        raise CorruptResult(f"{path}: the result of trial {result['trial_key']!r}, not of this folder's (copied or moved "
                            "here; it was tabled under this folder's row)")
    if "val_curve_sha256" in result and "per_case_sha256" not in result:  # code that writes the one writes both
        raise CorruptResult(f"{path}: records a checksum of val_curve.csv but none of per_case.csv (edited after the trial "
                            "finished)")
    per_case_path = Path(trial_dir) / PER_CASE_FILE
    try:
        per_case = read_csv(per_case_path)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise CorruptResult(f"{per_case_path}: unreadable ({exc})") from None
    check_per_case(per_case, result.get("num_test_cases"), result.get("test"), per_case_path)
    if "per_case_sha256" in result and sha256_file(per_case_path) != result["per_case_sha256"]:
        raise CorruptResult(f"{per_case_path}: its bytes differ from the file the trial wrote (changed or cut short "
                            "after the trial finished)")
    curve_path = Path(trial_dir) / VAL_CURVE_FILE
    if "val_curve_sha256" in result:  # trial health judges the trial from it (an edited curve moved its verdict)
        try:
            same = sha256_file(curve_path) == result["val_curve_sha256"]
        except OSError as exc:
            raise CorruptResult(f"{curve_path}: unreadable ({exc.strerror or exc})") from None
        if not same:
            raise CorruptResult(f"{curve_path}: its bytes differ from the file the trial wrote (changed or cut short "
                                "after the trial finished)")
    return TrialRecord(Path(trial_dir), result, per_case)


def scan_study(study_dir: Path) -> tuple[list[TrialRecord], list[str]]:
    """All finished trials in a study folder (sorted by key) and one line per corrupt or errored trial: every trial the
    folder holds, also those of earlier commands with other rows or settings. The study as its last command defined it
    (``study.json``'s trials) is :func:`analysis.report.study_records`, which the tables and report read."""
    records, problems = [], []
    trials_dir = Path(study_dir) / TRIALS_DIR
    for trial_dir in sorted(p for p in trials_dir.glob("*") if p.is_dir()) if trials_dir.is_dir() else []:
        try:
            record = read_trial(trial_dir)
        except CorruptResult as exc:
            problems.append(f"corrupt result: {exc}")
            continue
        if record is not None:
            records.append(record)
            failed = read_json_object(trial_dir / TEST_ROOT_ERROR_FILE)
            if failed is not None:
                problems.append(f"external test set not scored: {trial_dir / TEST_ROOT_ERROR_FILE}: {failed.get('root', '?')}: "
                                f"{failed.get('error', '?')}")
        elif (trial_dir / ERROR_FILE).is_file():
            try:
                error = json.loads((trial_dir / ERROR_FILE).read_text(encoding="utf-8")).get("error", "?")
            except (OSError, ValueError, AttributeError):  # unreadable, not JSON or not UTF-8, not an object
                error = "error.json unreadable"
            problems.append(f"errored trial {trial_dir.name}: {error}")
    return records, problems


def trial_finished(trial_dir: Path, log: Callable[[str], None] | None = None) -> bool:
    """True if ``trial_dir`` holds a complete result; a corrupt one is unfinished (``log``: told, naming the file)."""
    try:
        return read_trial(trial_dir) is not None
    except CorruptResult as exc:
        if log is not None:
            log(f"warning: corrupt result {exc}; the trial will be run again")
        return False


def errored_in_run(trial_dir: Path, run_id: str, kind: str | None = None) -> bool:
    """True if the trial's ``error.json`` was written by study run ``run_id`` (not by an earlier run), and, with
    ``kind``, records an error of that kind ("application" or "infrastructure")."""
    try:
        record = json.loads((Path(trial_dir) / ERROR_FILE).read_text(encoding="utf-8"))
        return record.get("run") == run_id and (kind is None or record.get("kind") == kind)
    except (OSError, ValueError, AttributeError):
        return False
