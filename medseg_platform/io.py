"""Atomic file writes: a reader never sees a half-written file, and a killed writer leaves the old file.

Each writer writes to a temporary file in the destination folder, flushes and fsyncs it, then
``os.replace``-s it over the destination (atomic on POSIX within one filesystem).

Folder writers (the phantom, the converters) build a hidden staging folder and rename it into place. While one is
registered with :func:`removed_if_terminated`, SIGTERM runs :func:`exit_on_sigterm`, which removes it and exits (the
handler removes it itself: an exception raised from a signal handler can land in a weakref callback and be ignored).
Ctrl-C raises KeyboardInterrupt as usual, and is also recorded: a writer calls :func:`raise_if_interrupted` between
items and before it renames its folder into place, so an interrupt that Python swallowed (the same weakref callbacks,
e.g. h5py freeing an object) still stops it instead of replacing the old output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def check_output_folder(path: str | os.PathLike, flag: str, writes: str | None = "inside") -> None:
    """An output folder that can be one, checked before any work: neither ``path`` nor the nearest existing folder
    above it is a file, and (unless ``writes`` is None) the command can create what it will write
    (:func:`check_folder_writable`). ``writes``: "inside" (files or folders inside ``path``), "beside" (a staging
    folder next to ``path``, renamed onto it), None (nothing is written, e.g. a dry run).
    :class:`~medseg_platform.errors.ConfigError` naming ``flag`` otherwise."""
    from medseg_platform.errors import ConfigError

    path = Path(path).expanduser().resolve()
    too_long = [part for part in path.parts if len(part.encode()) > 255]
    if too_long:  # each name in a path has at most 255 bytes (a later mkdir failed with a traceback)
        raise ConfigError(f"{flag} {path}: the name {too_long[0][:40]}... has {len(too_long[0].encode())} bytes; a file "
                          "system takes at most 255 per name: give a shorter one")
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is a file" if existing == path else f"is inside {existing}, a file"
                raise ConfigError(f"{flag} {path}: {where}, not a folder; give a folder")
            break
    if writes is not None:
        check_folder_writable(path, flag, beside=writes == "beside")


def check_folder_writable(path: str | os.PathLike, flag: str, beside: bool = False) -> None:
    """A folder can be made where the command will write: in the nearest existing folder from ``path`` up (from its
    parent up with ``beside``: a staging folder made next to ``path``). Tried with a temporary folder, removed at once:
    permissions alone miss read-only file systems and /proc-like trees. :class:`~medseg_platform.errors.ConfigError`
    naming ``flag`` otherwise."""
    from medseg_platform.errors import ConfigError

    path = Path(path).expanduser().resolve()
    start = path.parent if beside else path
    existing = next(p for p in (start, *start.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".medseg-write-check-", dir=existing))
    except OSError as exc:
        where = "" if existing == path else f" (the folder it would be written from is {existing})"
        raise ConfigError(f"{flag} {path}: cannot write there{where}: {exc.strerror or exc}; give a folder you "
                          "can write to") from None


_STAGING: set[Path] = set()


@contextlib.contextmanager
def removed_if_terminated(path: Path) -> Iterator[Path]:
    """Register the staging folder ``path`` for removal by :func:`exit_on_sigterm` while the block runs; in the main
    thread, with SIGTERM at its default (nobody else handles it), that handler is installed for the block."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    install = main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    previous_int = signal.getsignal(signal.SIGINT)
    record_interrupts = main and previous_int in (signal.default_int_handler, interrupt_on_signal)
    _STAGING.add(path)
    outer = set(_INTERRUPTED)  # a block inside another keeps the outer one's record (and hands its own up)
    _INTERRUPTED.clear()
    if install:
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    if record_interrupts:
        signal.signal(signal.SIGINT, _recorded_interrupt)
    try:
        yield path
    finally:
        _STAGING.discard(path)
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if record_interrupts:
            signal.signal(signal.SIGINT, previous_int)
        if not _STAGING:  # the outermost block: the record ends with it
            _INTERRUPTED.clear()
        _INTERRUPTED.update(outer)


_INTERRUPTED: set[int] = set()  # holds SIGINT once Ctrl-C came while a staging folder is registered


def _recorded_interrupt(signum, frame) -> None:
    """SIGINT handler while a folder is staged: Python's KeyboardInterrupt, remembered (:func:`raise_if_interrupted`)."""
    _INTERRUPTED.add(signum)
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt when Ctrl-C came during the current :func:`removed_if_terminated` block, also one whose
    exception Python ignored; a folder writer calls it between items and before renaming its folder into place."""
    if _INTERRUPTED:
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (a rename of a finished folder into place must not be cut in
    two; the caller checks :func:`raise_if_interrupted` just before it): in the main thread their handlers only record
    them, and a recorded one is raised again after the block, through the handler it had before. A blocked signal mask
    would not do: a signal that lands on another thread still runs Python's handler in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum in signums:
            signal.signal(signum, previous[signum] if previous[signum] is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


_STOP_SIGNALS: set[int] = set()  # signals :func:`interrupt_on_signal` turned into a KeyboardInterrupt, until forgotten


def interrupt_on_signal(signum, frame) -> None:
    """Signal handler: KeyboardInterrupt, and the signal remembered (:func:`raise_if_stopped`). A handler's exception
    lands wherever the main thread is; inside a callback that Python calls from C (a weakref's, at a garbage
    collection) it is printed as "Exception ignored" and lost, and a killed ``medseg train --in-process`` went on
    training (the SIGTERM test's flake)."""
    _STOP_SIGNALS.add(signum)
    raise KeyboardInterrupt


def raise_if_stopped() -> None:
    """KeyboardInterrupt when :func:`interrupt_on_signal` ran and its signal was not forgotten since: a training loop
    calls it every step, so a stop whose exception Python ignored still stops (one set lookup)."""
    if _STOP_SIGNALS:
        raise KeyboardInterrupt


def forget_stop_signals() -> None:
    """End the record of :func:`interrupt_on_signal` (the block that installed it is over)."""
    _STOP_SIGNALS.clear()


@contextlib.contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Ctrl-C (SIGINT) through :func:`interrupt_on_signal` inside the block, Python's own handler again after it (main
    thread, where Python's handler is in place; elsewhere the block changes nothing): a Ctrl-C whose KeyboardInterrupt
    Python ignored (it landed in a weakref's callback) still stops the training loop at its next step, as a SIGTERM
    does. For training in this process (``medseg train --in-process``); Tune handles a study's Ctrl-C itself."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, interrupt_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        forget_stop_signals()


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM handler: remove the registered staging folders, say so, and exit with 143."""
    for path in list(_STAGING):
        shutil.rmtree(path, ignore_errors=True)
    os.write(2, b"terminated\n")  # not print: the signal may have landed inside a write to sys.stderr
    os._exit(143)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Use for writers that want a file name (h5py, numpy, matplotlib)::

        with atomic_path(out / "case.h5") as tmp:
            with h5py.File(tmp, "w") as f: ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_texts_atomic(files: dict) -> None:
    """Write several text files (path -> text, UTF-8) as one set: every file is written and synced to a temporary
    file beside it first, and only then do they replace the earlier versions, one rename each; on an error before the
    renames nothing is replaced and the temporary files are removed. (A crash between two renames, an instant, can
    still leave a mixed set.)"""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((Path(tmp_name), path))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp_name, 0o666 & ~_current_umask())
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def working_folder() -> str | None:
    """The process's working folder, for a settings file to record where a command ran (its relative paths and
    ``./results`` start there); None when it was deleted while the command ran (``os.getcwd`` raises then, and the
    settings and the report after a finished study must still be written)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path`` for a file the platform wrote itself: None when the file is missing, {} when it is
    unreadable, not JSON or not an object (the caller treats that as "nothing usable recorded")."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than json's recursion limit
        return {}
    return value if isinstance(value, dict) else {}


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (stable bytes for equal objects)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


#: the lock file a running study holds in its folder (:func:`folder_lock`)
LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str, keep: bool = True, name: str = LOCK_FILE,
                busy: Callable[[str], str] | None = None, note: str = "") -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``folder/.lock`` (created with its parents) for the block; the file
    names this process (pid, host, start). A second holder is a one-line :class:`ConfigError` naming the first (``what``
    is the command's subject, e.g. "study ablation_tailness-quick"). The kernel drops the lock when the holder dies, so a
    killed run never leaves a stale one; where the filesystem has no ``flock`` (some network mounts), nothing is held.
    ``keep=False`` removes the file when the block ends (a folder of outputs others copy: ``medseg predict``'s).
    ``name``: another lock file of ``folder`` (a search's lock beside its Optuna journal); ``busy(holder)``: the
    error's text then, instead of "running there already"; ``note``: appended to the holder's line (what a refused
    command needs to know of the holder, e.g. its results folder)."""
    import datetime
    import fcntl
    import socket

    from medseg_platform.errors import ConfigError

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open_lock_file(path)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ConfigError(busy(holder) if busy is not None else _running_there(folder, what, holder)) from None
        except OSError:  # no flock on this filesystem: run unlocked, as before
            fh.close()
            yield
            return
        if _same_file(fh, path):
            break
        fh.close()  # a run with keep=False removed the file between our open and our lock: lock the one there now
    with fh:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}{note}\n")
        fh.flush()
        with contextlib.suppress(OSError):  # some FUSE mounts have no fsync
            os.fsync(fh.fileno())  # other nodes of a cluster read it (study.ray_runtime.check_nodes_see): NFS shows synced data
        held = str(path.resolve())
        _HELD_HERE.add(held)
        try:
            yield
        finally:
            _HELD_HERE.discard(held)
            if not keep:  # while still held; a run that opened it meanwhile sees it gone and locks a new one (_same_file)
                path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


#: The lock files of the :func:`folder_lock` this process holds now (resolved paths), for :func:`other_holder`.
_HELD_HERE: set[str] = set()


def open_lock_file(path: Path):
    """``path`` opened for reading and writing (created 0666 less the umask if absent, as ``open`` does), never through a symbolic link and only as a
    regular file: a ``.lock`` planted as a link to another file had that file emptied and overwritten with the
    holder's line (the security review). A one-line :class:`ConfigError` otherwise."""
    import errno
    import stat

    from medseg_platform.errors import ConfigError

    remedy = "this command's lock file is a plain file it creates; remove it and rerun"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)  # less the umask
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path}: is a symbolic link; {remedy}") from None
        raise ConfigError(f"{path}: cannot open this command's lock file ({exc.strerror or exc}); check the folder's "
                          "permissions (another user's lock file in a shared folder) or remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: is not a regular file; {remedy}")
    return os.fdopen(fd, "r+", encoding="utf-8")


def _same_file(fh, path: Path) -> bool:
    """Whether the open file ``fh`` is still the file at ``path`` (not removed or replaced since it was opened)."""
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _running_there(folder, what: str, holder: str) -> str:
    return (f"{folder}: {what} is running there already ({holder}); wait for it to end, or run this one into another "
            "folder (--name or --results-dir)")


def check_folder_free(folder: str | os.PathLike, what: str) -> None:
    """The :class:`ConfigError` :func:`folder_lock` would raise, now: for checks that come before the lock is taken and
    take long (a study's data preflight reads every file of its datasets)."""
    from medseg_platform.errors import ConfigError

    holder = folder_holder(folder)
    if holder is not None:
        raise ConfigError(_running_there(folder, what, holder))


def other_holder(folder: str | os.PathLike) -> str | None:
    """:func:`folder_holder`, but None where the holder is this process: a study's command that writes its own report at
    its end (after a Ctrl-C, say) still holds its folder, and its report said its unfinished trials were "running there",
    "a snapshot", after the command had stopped; its stale tables and plots were never removed (the workflow review)."""
    if str((Path(folder) / LOCK_FILE).resolve()) in _HELD_HERE:
        return None
    return folder_holder(folder)


def folder_holder(folder: str | os.PathLike, name: str = LOCK_FILE) -> str | None:
    """Who holds ``folder``'s :func:`folder_lock` (of lock file ``name``) now ("pid 123 on host, since ..."), or None
    when no process does (or where the filesystem has no ``flock``). Never creates the lock file; tries a shared lock
    for an instant."""
    import fcntl

    try:
        fh = open(Path(folder) / name, encoding="utf-8")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
