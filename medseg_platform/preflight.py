"""The data preflight of a study: every file its trials will read is opened once, before Ray starts.

A trial reads the training slices of its dataset (labelled and unlabelled sets together are all of
``train_slices.list``) and the validation and test volumes. A truncated or otherwise bad file found only
inside a trial errors every trial of the study one by one, after Ray and the workers have started; the
preflight finds it first and stops the study with one line naming the file, before anything starts.

The check is ``medseg data check`` (:func:`medseg_platform.data.check.check_dataset`): keys, dtypes,
shape agreement of image and label, finite images in [0, 1], labels in ``0..num_classes-1``, disjoint
splits (by case and by patient), the manifest's class names against ``data.num_classes``, and the files against the
SHA-256 the manifest records (an edited file would keep the dataset's identity). It runs once per distinct
(dataset root, number of classes) of the study's trials; the trials of one study must also agree on
the class names (its tables have one set of class columns).

A passed check is cached in ``<study folder>/preflight.json``, keyed by a fingerprint of the dataset:
the number of classes and the size and modification time of the list files, the manifest, every
file the trials read and every file the manifest records a checksum for (a few thousand ``stat`` calls, milliseconds). A rerun of an unchanged study skips
the reading; any change to a file (rewritten, truncated, replaced) changes its fingerprint and the
dataset is checked again. Failed checks are never cached, and nothing is written when the check fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from medseg_platform.data.check import check_dataset, manifest_num_classes
from medseg_platform.data.layout import MANIFEST, TEST_LIST, TRAIN_LIST, VAL_LIST, AcdcLayout, recorded_checksums
from medseg_platform.errors import DataError
from medseg_platform.io import write_json_atomic

PREFLIGHT_FILE = "preflight.json"
#: Bump when the check itself changes, so cached verdicts are not trusted any more. 2: repeated list ids and HDF5 groups
#: are problems; 3: patients in two splits, changed checksums; 4: a split without any foreground label.
PREFLIGHT_VERSION = 4


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def files_read_by_trials(layout: AcdcLayout) -> list[Path]:
    """Every data file a trial on ``layout`` reads: all training slices, then the val and test volumes."""
    return ([layout.slice_path(sid) for sid in layout.train_slices]
            + [layout.volume_path(case) for case in [*layout.val_cases, *layout.test_cases]])


def dataset_fingerprint(layout: AcdcLayout) -> str:
    """SHA-256 over the check's version, ``num_classes`` and (name, size, mtime) of the lists, manifest and data files
    (those the trials read, then the others the manifest records a checksum for, e.g. training volumes).

    A missing file enters as ``None`` (the check then reports it, and a failed check is not cached).
    """
    paths = [layout.root / name for name in (TRAIN_LIST, VAL_LIST, TEST_LIST, MANIFEST)] + files_read_by_trials(layout)
    seen = set(paths)
    paths += [layout.root / rel for rel in sorted(recorded_checksums(layout.manifest)) if layout.root / rel not in seen]
    entries: list[object] = [PREFLIGHT_VERSION, layout.num_classes, *(_stat_entry(layout.root, p, with_time=True) for p in paths)]
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()


def _stat_entry(root: Path, path: Path, with_time: bool) -> list:
    """``[name relative to root, size(, mtime_ns)]``, or ``[name, None]`` for a missing file."""
    name = path.relative_to(root).as_posix()
    try:
        st = os.stat(path)
    except OSError:
        return [name, None]
    return [name, st.st_size, st.st_mtime_ns] if with_time else [name, st.st_size]


def dataset_identity(root: str | os.PathLike, num_classes: int = 4) -> str | None:
    """What a trial trained on, recorded with its result and with each pretraining stage: the SHA-256 of the content
    checksums a converter's or the phantom's manifest records (``sha256``, every data and list file) with its class
    names, else (a released folder without them) of the three lists' bytes and the sizes of every file a trial reads.
    No file times and no package version: a dataset generated or converted again into the same bytes keeps it on every
    node; other data (or the same data written into other bytes, e.g. by another HDF5/zlib version) gets another. None
    when ``root`` is no folder."""
    root = Path(root)
    if not root.is_dir():
        return None
    layout = AcdcLayout(root, num_classes)
    manifest = layout.manifest
    if isinstance(manifest.get("sha256"), dict) and manifest["sha256"]:
        content: object = {"sha256": manifest["sha256"], "class_names": manifest.get("class_names")}
    else:
        lists = [(root / name).read_text(encoding="utf-8") if (root / name).is_file() else None
                 for name in (TRAIN_LIST, VAL_LIST, TEST_LIST)]
        content = {"lists": lists, "sizes": [_stat_entry(layout.root, p, with_time=False) for p in files_read_by_trials(layout)]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def check_for_trials(layout: AcdcLayout, log: Callable[[str], None] | None = None) -> tuple[str, ...]:
    """Check one dataset with :func:`check_dataset`; returns its class names, and ``log``s its notes (classes a split
    never holds).

    Raises a one-line :class:`DataError` naming the first bad file (and how many more problems there are).
    """
    report = check_dataset(layout.root, layout.num_classes)
    for note in report.notes if log is not None else ():
        log(f"data preflight: {layout.root}: note: {note}")
    if not report.ok:
        more = f" ({len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else ""
        raise DataError(f"data preflight, nothing started: {report.problems[0]}{more}; "
                        f"'medseg data check {layout.root} --num-classes {layout.num_classes}' lists every problem")
    return report.class_names


def _read_cache(path: Path) -> dict[str, dict]:
    """The cached verdicts ``{fingerprint: {...}}`` of ``preflight.json``; {} when absent or unreadable."""
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8")).get("passed", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def datasets_of_trials(trials: Iterable[Mapping]) -> list[tuple[str, int]]:
    """Distinct (data root, num_classes) of the trials' configs, in order of first appearance."""
    pairs = ((str(t["config"]["data"]["root"]), int(t["config"]["data"].get("num_classes", 4))) for t in trials)
    return list(dict.fromkeys(pairs))


def check_class_count(root: str, num_classes: int) -> None:
    """A one-line :class:`DataError` when the dataset's manifest records another number of classes than the trials'
    ``data.num_classes`` (4 unless set): the message says which ``--set`` trains on it."""
    recorded = manifest_num_classes(root)
    if recorded is not None and recorded != num_classes:
        raise DataError(f"{root}: a dataset of {recorded} classes (background included; its {MANIFEST}), but the trials are set "
                        f"up for data.num_classes = {num_classes}; train on it with --set data.num_classes={recorded}")


def preflight_datasets(datasets: Sequence[tuple[str, int]], cache_dir: str | os.PathLike,
                       log: Callable[[str], None] = _stderr) -> None:
    """Check every (root, num_classes) once (cached in ``cache_dir/preflight.json``); one-line DataError on failure.

    Also a DataError when the datasets name their classes differently (one study, one set of class columns).
    """
    cache_path = Path(cache_dir) / PREFLIGHT_FILE
    cached = _read_cache(cache_path)
    passed: dict[str, dict] = {}
    for root, num_classes in datasets:
        check_class_count(root, num_classes)
        start = time.perf_counter()
        layout = AcdcLayout(root, num_classes)
        key = dataset_fingerprint(layout)  # before reading: a file changed during the check changes the next key
        verdict = cached.get(key)
        if isinstance(verdict, dict) and isinstance(verdict.get("class_names"), list):
            log(f"data preflight: {layout.root} unchanged since its last check ({verdict.get('files')} files)")
        else:
            names = check_for_trials(layout, log)
            files = len(files_read_by_trials(layout))
            verdict = {"root": str(layout.root), "num_classes": num_classes, "class_names": list(names), "files": files}
            log(f"data preflight: {files} files of {layout.root} OK ({time.perf_counter() - start:.1f} s)")
        passed[key] = verdict
    named = list(dict.fromkeys((v["root"], tuple(v["class_names"])) for v in passed.values()))
    if len({names for _, names in named}) > 1:
        (root_a, names_a), (root_b, names_b) = named[0], next(n for n in named if n[1] != named[0][1])
        raise DataError(f"{root_b}: class names {', '.join(names_b)} differ from {', '.join(names_a)} of {root_a} "
                        "(one study's trials must share one dataset's classes; run them as separate studies)")
    if passed != cached:
        write_json_atomic(cache_path, {"version": PREFLIGHT_VERSION, "passed": passed})

