"""Finishing a trial from a finished trial's checkpoint when the two train alike and differ only in how they are scored.

A trial's key hashes its whole configuration, the evaluation settings included, so ``--protocol released`` after a
``--protocol corrected`` run (or a ``--set eval.distance_units=voxel``) gives every trial a new key. The settings in
:data:`SCORING_FIELDS` never change what a trial trains: ``eval.distance_units`` is read by the test evaluation only,
``eval.selection`` picks which state is tested, and ``eval.empty_policy`` changes the validation Dice that selects
it, never a training step. Such a trial is therefore scored from the checkpoint of a finished trial instead of being
trained again (docs/evaluation.md, 'Scoring a finished trial again'), when:

1. its configuration equals the finished trial's outside :data:`SCORING_FIELDS` (both through
   :meth:`TrialConfig.to_dict`, so a default added since counts as written);
2. the finished trial's checkpoint holds the state the trial tests: the final state (``eval.selection="final"``:
   the checkpoint is written after the last step), or the best on val when both select on val;
3. its validation Dice, hence its selected state and its ``val_curve.csv``, would be the finished trial's: the two
   empty-mask policies give the same Dice unless a foreground class is absent from a validated case's label
   (docs/evaluation.md, 'Empty masks'), so with another policy every validated case must contain every
   foreground class (read from the data).

The finished trial is one of the study folder's own, else one of another study in the same results folder (a copy
of the study under ``--name``, which may even hold the same configuration). The trial then gets the finished trial's
curves, labelled subset and training record, its own test rows (the selected weights evaluated with its own
settings, on the convolution kernels and thread count the finished trial ran, as its own test evaluation would) and
a checkpoint of its own (the finished trial's, with the selected state the trial tests), so ``medseg predict`` and
``--test-root`` work on it. ``result.json`` records ``scored_from`` (the finished trial's key and study, the fields
that differ, and the environment that computed the test rows); its ``timing`` is the scoring's own. The scoring runs
on the device the study's trials test on (:func:`scoring_device`); where that is a GPU the driver cannot see, on the
CPU, whose predictions may differ from the GPU's by float rounding. A finished trial trained on another version of
the dataset (its recorded ``data_identity``) is never a source. The checkpoint is a full copy (teacher, memory banks and NN pool included,
so it can be the source of a later scoring), as large as the finished trial's.

:func:`scoring_sources` finds the trials that qualify (the dry run lists them); :func:`score_from_sources` scores
them (a study run and ``medseg train``, before anything is trained). An Optuna search's samples are scored one by one
when Tune starts them (:func:`medseg_platform.study.trainable.score_sample_from_finished`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from medseg_platform.config import TrialConfig
from medseg_platform.errors import MedsegError

#: The dotted config fields read only to score a trial (module docstring).
SCORING_FIELDS = ("eval.selection", "eval.empty_policy", "eval.distance_units")
#: ``result.json`` fields a scored trial computes itself; everything else it takes from the finished trial.
_OWN_FIELDS = ("schema", "status", "trial_key", "config", "tags", "seed", "labelled", "best_step", "best_val_dice", "test",
               "num_test_cases", "per_case_sha256", "val_curve_sha256", "timing", "resumed_from_step", "attempts", "finished_at", "test_root",
               "class_names")


@dataclass(frozen=True)
class ScoringSource:
    """A finished trial (``folder``) whose checkpoint gives a pending trial its results; ``fields``: the
    :data:`SCORING_FIELDS` in which the two configurations differ."""

    folder: Path
    fields: tuple[str, ...]


def _split(config: Mapping) -> tuple[dict, dict]:
    """``(training identity, scoring settings)`` of a trial config: the normalised config without
    :data:`SCORING_FIELDS`, and those fields' values."""
    full = TrialConfig.from_dict(dict(config)).to_dict()
    evaluation = dict(full["eval"])
    scoring = {}
    for dotted in SCORING_FIELDS:
        scoring[dotted] = evaluation.pop(dotted.split(".", 1)[1])
    return {**full, "eval": evaluation}, scoring


def _tests_a_held_state(target: Mapping, source: Mapping) -> bool:
    """Condition 2: the source's checkpoint holds the state the target tests."""
    return target["eval.selection"] == "final" or source["eval.selection"] == target["eval.selection"]


def validated_cases_hold_every_class(config: Mapping, cache: dict | None = None) -> bool:
    """Condition 3's data check: every val case a trial of ``config`` validates on (``eval.val_cases``) has every
    foreground class in its label. False when the data cannot be read (the run's preflight then names the file)."""
    import numpy as np

    from medseg_platform.data.layout import AcdcLayout

    cfg = TrialConfig.from_dict(dict(config))
    key = (str(cfg.data.root), cfg.data.num_classes, cfg.eval.val_cases)
    if cache is not None and key in cache:
        return cache[key]
    try:
        layout = AcdcLayout(cfg.data.root, cfg.data.num_classes)
        cases = layout.val_cases[: cfg.eval.val_cases] if cfg.eval.val_cases else layout.val_cases
        classes = np.arange(1, cfg.data.num_classes)
        answer = all(np.isin(classes, np.unique(layout.read_volume(case).label)).all() for case in cases)
    except (MedsegError, OSError):
        answer = False
    if cache is not None:
        cache[key] = answer
    return answer


def _finished_candidates(study_dir: Path):
    """``(folder, result)`` of every trial folder with a ``result.json`` and a checkpoint, keyed by this code
    (:func:`medseg_platform.results.keyed_by_this_code`): the study's own first, then
    those of the other studies of its results folder (a ``--name`` copy of the study), each in key order. Only the
    JSON is read here; :func:`scoring_sources` checks a match in full."""
    from medseg_platform.io import read_json_object
    from medseg_platform.results import RESULT_FILE, TRIALS_DIR, checkpoint_path, keyed_by_this_code

    study_dir = Path(study_dir)
    others = sorted(p for p in study_dir.parent.glob(f"*/{TRIALS_DIR}") if p.parent != study_dir)
    for trials_dir in [study_dir / TRIALS_DIR, *others]:
        if not trials_dir.is_dir():
            continue
        for folder in sorted(p for p in trials_dir.iterdir() if p.is_dir()):
            result = read_json_object(folder / RESULT_FILE) if checkpoint_path(folder).is_file() else None
            # a trial of an earlier key revision: other code trained it (a revision bump must train its rows again)
            if result and isinstance(result.get("config"), dict) and keyed_by_this_code(folder.name, result["config"]):
                yield folder, result


def _same_data(result: Mapping, config: Mapping, cache: dict) -> bool:
    """Whether a finished trial trained on the dataset as it is now: the ``data_identity`` its ``result.json`` records
    equals :func:`medseg_platform.preflight.dataset_identity` now (a result from before identities were recorded
    passes, as the study's own check lets it). Weights of another version of the data are never scored on this one."""
    from medseg_platform.preflight import dataset_identity

    recorded = result.get("data_identity")
    if not recorded:
        return True
    key = (str(config["data"]["root"]), int(config["data"]["num_classes"]))
    if key not in cache:
        try:
            cache[key] = dataset_identity(*key)
        except (MedsegError, OSError):
            cache[key] = None
    return cache[key] == recorded


def scoring_sources(study_dir: Path, pending: Iterable[dict]) -> dict[str, ScoringSource]:
    """``{trial key: ScoringSource}`` for the ``pending`` trials (``{"key", "config", ...}`` dicts of unfinished trials)
    that a finished trial can score (the module docstring's conditions), trained on the dataset as it is now: the one
    that differs in the fewest fields, then ``study_dir``'s own before another study's of the same results folder, then
    by key. Its checkpoint must exist; it is read only when scoring."""
    from medseg_platform.results import CorruptResult, read_trial

    pending = list(pending)
    if not pending:
        return {}
    wanted = {}
    for trial in pending:
        identity, scoring = _split(trial["config"])
        wanted[trial["key"]] = (json.dumps(identity, sort_keys=True), scoring)
    identities = {identity for identity, _ in wanted.values()}
    matches: dict[str, list] = {}
    data_now: dict[tuple[str, int], str | None] = {}
    for folder, result in _finished_candidates(study_dir):
        try:
            identity, scoring = _split(result["config"])
        except (MedsegError, TypeError, KeyError, ValueError, AttributeError):
            continue  # a config this code cannot read: not a source
        identity_text = json.dumps(identity, sort_keys=True)
        if identity_text in identities and _same_data(result, identity, data_now):
            try:
                if read_trial(folder) is None:
                    continue
            except CorruptResult:
                continue
            matches.setdefault(identity_text, []).append((folder, scoring))
    sources: dict[str, ScoringSource] = {}
    data_checks: dict = {}
    for trial in pending:
        identity, scoring = wanted[trial["key"]]
        qualifying = []
        for folder, source_scoring in matches.get(identity, []):
            if not _tests_a_held_state(scoring, source_scoring):
                continue
            if scoring["eval.empty_policy"] != source_scoring["eval.empty_policy"] and \
                    not validated_cases_hold_every_class(trial["config"], data_checks):
                continue
            qualifying.append(ScoringSource(folder, tuple(f for f in SCORING_FIELDS if scoring[f] != source_scoring[f])))
        if qualifying:  # the fewest differing fields first (the same configuration elsewhere), then the candidates' order
            sources[trial["key"]] = min(qualifying, key=lambda source: len(source.fields))
    return sources


@dataclass(frozen=True)
class _RecordedSubset:
    """A finished trial's labelled subset as its ``result.json`` records it (what the results writer reads)."""

    record: Mapping

    def to_dict(self) -> dict:
        return dict(self.record)


def score_trial(source: ScoringSource, trial: Mapping, trial_dir: Path, device) -> dict:
    """Write the results of the pending ``trial`` (``{"key", "config", "tags"}``) into ``trial_dir`` from ``source``'s
    checkpoint (module docstring), evaluating on ``device`` (the one the trial would train on); returns its result
    record. A :class:`MedsegError` when the checkpoint is unreadable or is not the finished trial's last state. Every
    file is written after the evaluation, ``result.json`` last; a failure while writing removes the checkpoint and
    qualitative slices it wrote (and puts back a checkpoint of the trial's own earlier attempt), so the trial trains as
    it would have."""
    import torch

    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.engine import QualitativeSlices, TrialOutcome, build_trial_model, evaluate_volumes
    from medseg_platform.engine.checkpoint import load_checkpoint, save_checkpoint
    from medseg_platform.engine.conv_kernels import recorded_conv_kernels, using_conv_kernels
    from medseg_platform.environment import trial_environment
    from medseg_platform.results import (QUALITATIVE_FILE, CorruptResult, checkpoint_path, read_trial, write_trial_config,
                                         write_trial_results)

    t_start = time.perf_counter()
    try:
        record = read_trial(source.folder)
    except CorruptResult as exc:
        raise MedsegError(str(exc)) from None
    if record is None:
        raise MedsegError(f"{source.folder}: no longer a finished trial")
    cfg = TrialConfig.from_dict(dict(trial["config"]))
    path = checkpoint_path(source.folder)
    state = load_checkpoint(path)
    if int(state.get("step", -1)) != cfg.optim.max_steps or state.get("best_state") is None or not state.get("val_curve"):
        raise MedsegError(f"{path}: not the finished trial's last state (step {state.get('step')} of {cfg.optim.max_steps})")
    val_curve = list(state["val_curve"])
    if cfg.eval.selection == "final":  # the student after the last step (Objective.eval_model is the student)
        prefix = "student."
        selected = {name[len(prefix):]: value for name, value in state["objective"].items() if name.startswith(prefix)}
        best_step, best_val_dice = int(state["step"]), float(val_curve[-1]["val_dice"])
    else:
        selected, best_step, best_val_dice = state["best_state"], int(state["best_step"]), float(state["best_val_dice"])
        if best_step != int(record.result.get("best_step", best_step)):
            raise MedsegError(f"{path}: selected step {best_step} but its result.json records {record.result.get('best_step')}")
    device = torch.device(device)
    model = build_trial_model(cfg, device)
    try:
        model.load_state_dict(selected)
    except RuntimeError as exc:  # missing or mismatched weights: not this configuration's network
        raise MedsegError(f"{path}: its weights do not fit the trial's network ({str(exc).splitlines()[0]})") from None
    model.eval()
    layout = AcdcLayout(cfg.data.root, cfg.data.num_classes)
    qualitative = QualitativeSlices(layout.test_cases)
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(cfg.threads)  # as the trial's own test evaluation runs (engine.trial)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    t0 = time.perf_counter()
    try:
        with using_conv_kernels(recorded_conv_kernels(record.result, cfg, device.type)):
            rows = evaluate_volumes(model, (layout.read_volume(case) for case in layout.test_cases), cfg, device,
                                    on_prediction=qualitative.keep)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the study's trials share this GPU
    test_s = time.perf_counter() - t0
    timing = {"test_s": test_s, "total_s": time.perf_counter() - t_start}
    outcome = TrialOutcome(_RecordedSubset(record.result["labelled"]), best_step, best_val_dice, rows, list(state["curves"]),
                           val_curve, timing)
    kept = {name: value for name, value in record.result.items() if name not in _OWN_FIELDS}
    scored_from = {"trial_key": source.folder.name, "study": source.folder.parent.parent.name,
                   "fields": {f: [_value(record.result["config"], f), _value(trial["config"], f)] for f in source.fields},
                   "environment": trial_environment(device)}  # what computed the test rows (`environment`: the training)
    checkpoint, qualitative_file = checkpoint_path(trial_dir), trial_dir / QUALITATIVE_FILE
    # A failure while writing (a full disk) must not leave the copied checkpoint behind: the trial, trained instead,
    # would resume from it at its last step with another trial's weights and no `scored_from`. A checkpoint of the
    # trial's own earlier attempt is set aside and put back.
    own = checkpoint.with_name(checkpoint.name + ".before-scoring")
    if checkpoint.exists():
        os.replace(checkpoint, own)
    try:
        write_trial_config(trial_dir, trial["config"], trial["tags"])
        save_checkpoint(checkpoint, {**state, "best_state": selected, "best_step": best_step, "best_val_dice": best_val_dice,
                                     "scored_from": source.folder.name, "timing": {}})  # the source's training time is its own
        qualitative.save(qualitative_file)
        result = write_trial_results(trial_dir, config=trial["config"], tags=trial["tags"], outcome=outcome, seed=cfg.seed,
                                     extra={**kept, "resumed_from_step": int(record.result.get("resumed_from_step", 0)),
                                            "scored_from": scored_from})
    except BaseException:
        checkpoint.unlink(missing_ok=True)
        qualitative_file.unlink(missing_ok=True)
        if own.exists():
            os.replace(own, checkpoint)
        raise
    own.unlink(missing_ok=True)
    return result


def _value(config: Mapping, dotted: str):
    """A dotted field of a config dict, with the default where the config does not write it."""
    section, name = dotted.split(".", 1)
    return getattr(getattr(TrialConfig.from_dict(dict(config)), section), name)


def scoring_device(gpus_per_trial: float) -> str:
    """The device a study's trials test on, for scoring them outside their own process: the CPU for CPU-only trials
    (``gpus_per_trial`` 0), a GPU when they get one and this process sees one (else the CPU, which may round
    differently)."""
    if gpus_per_trial <= 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_from_sources(study_dir: Path, pending: Iterable[dict], log: Callable[[str], None], device="cpu") -> set[str]:
    """Score every ``pending`` trial that a finished trial can score (:func:`scoring_sources`, :func:`score_trial`) on
    ``device`` (the trials' own: a study's CPU-only trials are scored on the CPU even where the driver sees a GPU),
    logging one line each; returns the keys that are now finished. A scoring that fails, for whatever reason, is logged
    and leaves its trial to be trained."""
    from medseg_platform.results import trial_folder

    pending = list(pending)
    sources = scoring_sources(study_dir, pending)
    if not sources:
        return set()
    log(f"{len(sources)} trial(s) train as a finished trial did (they differ at most in how they are scored): scoring its "
        "checkpoint instead of training them (docs/evaluation.md, 'Scoring a finished trial again')")
    done = set()
    for trial in pending:
        source = sources.get(trial["key"])
        if source is not None and score_logged(source, trial, trial_folder(study_dir, trial["key"]), device, log) is not None:
            done.add(trial["key"])
    return done


def score_logged(source: ScoringSource, trial: Mapping, trial_dir: Path, device, log: Callable[[str], None]) -> dict | None:
    """:func:`score_trial`, with one log line saying what was scored from what; None, logged, when the scoring fails for
    whatever reason (an unreadable checkpoint, memory, disk): the trial is then trained."""
    from medseg_platform.results import ERROR_FILE

    try:
        result = score_trial(source, trial, trial_dir, device)
    except Exception as exc:  # noqa: BLE001 - any failure: the trial trains instead
        reason = str(exc).splitlines()[0] if str(exc) else ""
        log(f"[{trial['key']}] not scored from {source.folder.name} ({type(exc).__name__}: {reason}); it will be trained")
        return None
    (Path(trial_dir) / ERROR_FILE).unlink(missing_ok=True)  # an error of an earlier attempt is not this result's
    study = source.folder.parent.parent
    where = "" if study == Path(trial_dir).parent.parent else f" of study {study.name}"
    differs = f"differs in {', '.join(source.fields)}" if source.fields else "the same configuration"
    log(f"[{trial['key']}] scored from finished trial {source.folder.name}{where} ({differs}): "
        f"test mean Dice {result['test']['mean']['dice']:.4f}")
    return result
