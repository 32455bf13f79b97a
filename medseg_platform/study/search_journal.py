"""A search's Optuna journal (``--optuna-storage``): the storage itself, and the checks that keep one search's Optuna
study to the results folder that started it (docs/ray.md, 'Optuna through Tune'; README, 'Running on a cluster')."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from medseg_platform.errors import ConfigError
from medseg_platform.io import folder_holder, folder_lock, read_json_object
from medseg_platform.results import STUDY_FILE, tune_storage
from medseg_platform.study.spec import Study

#: the Optuna study's user attribute naming the study folder that created it (:class:`~medseg_platform.study.tpe.TPESearch`
#: records it; :func:`check_journal_holds_no_other_search` reads it)
STUDY_FOLDER_ATTR = "medseg_study_folder"

def is_optuna_journal(path: Path) -> bool:
    """Whether ``path`` is empty or starts like an Optuna journal file (one JSON object with an ``op_code`` per line)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
            if not first.strip():
                return not fh.read(1 << 20).strip()  # an empty (or blank) file; a journal never starts with a blank line
    except OSError:
        return False
    try:
        entry = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(entry, dict) and "op_code" in entry


def check_search_storage(study: Study, trials: list[dict]) -> None:
    """A search rerun with another ``--optuna-storage`` (or without it) than the one it was started with would start the
    whole search again in a new Tune experiment: refuse, naming the flag to resume with (one-line :class:`ConfigError`)."""

    if study.search_space is None:
        return
    try:
        info = json.loads((study.study_dir / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(info, dict) or not info.get("search") or "optuna_storage" not in info:
        return
    if not (tune_storage(study.study_dir) / f"{study.name}-{info.get('spec_hash')}").is_dir():
        return  # that run never started its Tune experiment: nothing to resume
    recorded = info["optuna_storage"]
    current = str(study.optuna_storage) if study.optuna_storage is not None else None
    if recorded == current:
        from medseg_platform.study.experiment_state import experiment_restorable

        experiment = tune_storage(study.study_dir) / f"{study.name}-{info.get('spec_hash')}"
        if recorded is not None and not Path(recorded).is_file() and experiment_restorable(experiment):
            # the restored searcher replays the journal: a missing one ended in a KeyError traceback, and the record it
            # wrote into the new file made every later rerun fail the same way (the search review)
            raise ConfigError(f"study {study.name}: --optuna-storage {recorded}: missing, and this search's Optuna study "
                              "is in it; put the file back to resume the search, or give --name for a new search")
        return
    given = study.optuna_storage
    study.optuna_storage = Path(recorded) if recorded is not None else None
    try:
        same_search = study.spec_hash(trials) == info.get("spec_hash")
    finally:
        study.optuna_storage = given
    if same_search:
        flag = f"--optuna-storage {recorded}" if recorded is not None else "no --optuna-storage"
        raise ConfigError(f"study {study.name}: this search was started with {flag}; rerun with the same to resume it (a "
                          "different storage would start the search again), or give --name for a new search")


def _journal_lock(study: Study, trials: list[dict]) -> tuple[Path, str, str] | None:
    """(the journal, the search's experiment name, the name of its lock file beside the journal), or None for a study
    without a search journal. The lock's name is hashed: the journal's and the experiment's names together passed the
    file-name limit with a long --name (the diff review)."""
    if study.search_space is None or study.optuna_storage is None:
        return None
    journal = Path(study.optuna_storage)
    name = f"{study.name}-{study.spec_hash(trials)}"  # the Tune experiment's and the Optuna study's
    digest = hashlib.sha256(f"{journal.name}\0{name}".encode()).hexdigest()[:16]
    return journal, name, f".optuna-search-{digest}.lock"


def _journal_busy(journal: Path, name: str, holder: str) -> str:
    return (f"--optuna-storage {journal}: the search {name} is writing its Optuna study there ({holder}); wait for it to "
            "end and rerun this one with that --results-dir to resume it, or give a new --optuna-storage file or --name")


def search_journal_lock(study: Study, trials: list[dict]):
    """A :func:`~medseg_platform.io.folder_lock` on a lock file beside the ``--optuna-storage`` journal, one per search
    (experiment name), for the search's run; a no-op for a study without one. The same search started into two results
    folders a few seconds apart both passed :func:`check_journal_holds_no_other_search` before either had written its
    Optuna study, and then wrote into one (the concurrency review). The lock names the holder's --results-dir; other
    searches may share the journal at the same time, as Optuna's journal allows."""
    lock = _journal_lock(study, trials)
    if lock is None:
        return contextlib.nullcontext()
    journal, name, lock_name = lock
    return folder_lock(journal.parent, f"search {name}", keep=False, name=lock_name,
                       note=f", --results-dir {study.study_dir.parent}", busy=lambda holder: _journal_busy(journal, name, holder))


def check_search_journal_free(study: Study, trials: list[dict]) -> None:
    """The :class:`ConfigError` :func:`search_journal_lock` would raise, now: before the data preflight writes into the
    results folder (a refused search wrote its folder's lock and preflight.json: the diff review)."""
    lock = _journal_lock(study, trials)
    if lock is None:
        return
    journal, name, lock_name = lock
    holder = folder_holder(journal.parent, lock_name)
    if holder is not None:
        raise ConfigError(_journal_busy(journal, name, holder))


def check_journal_holds_no_other_search(study: Study, trials: list[dict]) -> None:
    """Refuse a search whose ``--optuna-storage`` journal already holds an Optuna study of its experiment's name that this
    results folder did not start: the same search run into another results folder, or into one deleted since. Optuna
    then joined that study, and TPE proposed from its trials instead of this search's seeded first samples, silently
    (the search review). A rerun in the folder that started it resumes or continues its own study, as before: the folder
    holds this search's Tune experiment, or the Optuna study names this folder as the one that created it
    (:data:`STUDY_FOLDER_ATTR`), also with no trials yet (a run killed before Tune saved anything). A study that names
    another folder is refused, even an empty one; one that names none (created by older code) is accepted when it is
    empty or this folder's ``study.json`` records the same search and journal (or was written by code that recorded no
    journal). ``study.json`` alone names only the folder's last search (the diff review), and a run stopped before its
    Tune experiment started left one that let this folder join the study another folder then created (the concurrency
    review)."""
    if study.search_space is None or study.optuna_storage is None:
        return
    journal = Path(study.optuna_storage)
    if not journal.is_file() or not is_optuna_journal(journal):
        return
    spec_hash = study.spec_hash(trials)
    name = f"{study.name}-{spec_hash}"  # the Tune experiment's and the Optuna study's
    if (tune_storage(study.study_dir) / name).is_dir():
        return  # this folder started this search (its Tune experiment is here)
    info = read_json_object(study.study_dir / STUDY_FILE) or {}
    # this folder's last search, recorded with this journal (or by code that kept no journal path)
    recorded_here = info.get("spec_hash") == spec_hash and info.get("optuna_storage", str(journal)) == str(journal)
    import optuna

    try:
        held = {summary.study_name: (summary.n_trials, summary.user_attrs.get(STUDY_FOLDER_ATTR))
                for summary in optuna.get_all_study_summaries(optuna_journal(journal), include_best_trial=False)}
    except Exception as exc:  # noqa: BLE001 - a journal Optuna cannot replay: one line, not its traceback
        raise ConfigError(f"--optuna-storage {journal}: Optuna cannot read it ({type(exc).__name__}: {exc}); give a new path") from None
    count, creator = held.get(name, (0, None))
    if creator == str(study.study_dir) or (creator is None and (not count or recorded_here)):
        return  # its own study; or one that names no creator (none yet, or of older code) and is empty or recorded here
    started = (f", started in the study folder {creator}, not in {study.study_dir}" if creator else
               f" run into another results folder (or one deleted since), not into {study.study_dir}")
    raise ConfigError(f"--optuna-storage {journal}: already holds the Optuna study {name} ({count} trial(s)) of this "
                      f"search{started}; this search would join it and TPE would propose from those trials instead of its "
                      "own seeded samples. Give a new --optuna-storage file or --name for a new search, or rerun it with "
                      "the --results-dir it was started in to resume it")


def optuna_journal(path: Path):
    """Optuna's journal file storage at ``path`` (parent folders created): safe with parallel writers, unlike SQLite.

    OptunaSearch (Ray 2.60) takes it as ``storage``; ``optuna-dashboard PATH`` shows the study.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))
