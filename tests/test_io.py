"""Output folders checked before any work (medseg_platform.io.check_output_folder / check_folder_writable)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from medseg_platform.errors import ConfigError
from medseg_platform.io import check_folder_writable, check_output_folder


def test_a_folder_that_can_be_made_passes_and_nothing_is_left_behind(tmp_path):
    check_output_folder(tmp_path / "new" / "deeper", "--out")
    check_output_folder(tmp_path, "--out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the write check's temporary folder


def test_a_file_on_the_path_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    for writes in ("inside", "beside", None):
        with pytest.raises(ConfigError, match=r"--out .*/f: is a file, not a folder"):
            check_output_folder(tmp_path / "f", "--out", writes=writes)
        with pytest.raises(ConfigError, match=r"is inside .*/f, a file"):
            check_output_folder(tmp_path / "f" / "sub", "--out", writes=writes)


def test_the_write_is_tried_where_the_command_writes(tmp_path, monkeypatch):
    """Inside the output folder for commands that write into it, in its parent for those that stage a folder next to
    it and rename it (phantom, convert), and nowhere for a dry run."""
    tried = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: tried.append(Path(kw["dir"])) or real(**kw))
    out = tmp_path / "out"
    out.mkdir()
    check_output_folder(out, "--out")
    check_output_folder(out, "--out", writes="beside")
    check_output_folder(out / "new", "--out", writes="beside")
    check_output_folder(out, "--out", writes=None)
    assert tried == [out, tmp_path, out]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_place_no_folder_can_be_made_is_an_error_before_any_work():
    """It used to pass, and the command failed with a traceback after its work (evaluate: after every metric)."""
    with pytest.raises(ConfigError, match=r"--results-dir /proc/medseg-x: cannot write there \(the folder it would be "
                                          r"written from is /proc\)"):
        check_output_folder("/proc/medseg-x", "--results-dir")
    with pytest.raises(ConfigError, match="cannot write there"):
        check_folder_writable("/proc/medseg-x/y", "--out", beside=True)
    check_output_folder("/proc/medseg-x", "--results-dir", writes=None)  # a dry run writes nothing: no error


def test_signals_deferred_holds_ctrl_c_until_the_block_is_done_then_raises_it():
    """A rename pair of a finished folder must not be cut in two; a mask would not do (a signal landing on another
    thread still runs Python's handler in the main thread)."""
    import signal

    from medseg_platform.io import signals_deferred

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                done.append("the block went on")
        assert done == ["the block went on"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_recorded_in_a_nested_staged_block_reaches_the_outer_one(tmp_path):
    import signal

    from medseg_platform.io import raise_if_interrupted, removed_if_terminated

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with removed_if_terminated(tmp_path / "outer"):
            with removed_if_terminated(tmp_path / "inner"):
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:  # swallowed
                    pass
            with pytest.raises(KeyboardInterrupt):
                raise_if_interrupted()  # the outer block still knows
        raise_if_interrupted()  # after the outermost block the record is gone
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_lock_removed_between_open_and_lock_is_not_held_twice(tmp_path, monkeypatch):
    """The review: with keep=False, run A removes .lock and unlocks while run B has opened the old file; B then locked
    the removed file, and a run C created a new .lock and locked it too: two predictions wrote into one folder."""
    import medseg_platform.io as io
    from medseg_platform.errors import ConfigError

    folder = tmp_path / "out"
    a = io.folder_lock(folder, "medseg predict", keep=False)
    a.__enter__()
    real_open = io.open_lock_file

    def open_then_let_a_finish(path):  # A ends between B's open and B's lock
        fh = real_open(path)
        monkeypatch.setattr(io, "open_lock_file", real_open)
        a.__exit__(None, None, None)
        return fh

    monkeypatch.setattr(io, "open_lock_file", open_then_let_a_finish)
    with io.folder_lock(folder, "medseg predict", keep=False):
        with pytest.raises(ConfigError, match="medseg predict is running there already"):
            with io.folder_lock(folder, "medseg predict", keep=False):
                pass


def test_a_lock_file_planted_as_a_link_or_a_fifo_is_refused_and_its_target_untouched(tmp_path):
    """The security review: folder_lock opened .lock through a symbolic link, then emptied and overwrote the file it
    pointed to with the holder's line (any command on a folder someone else can write)."""
    import os

    import medseg_platform.io as io

    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT\n")
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / ".lock").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"\.lock: is a symbolic link; this command's lock file is a plain file"):
        with io.folder_lock(folder, "study x"):
            pytest.fail("the lock must not be held")
    assert victim.read_text() == "IMPORTANT\n"
    (folder / ".lock").unlink()
    os.mkfifo(folder / ".lock")
    with pytest.raises(ConfigError, match=r"\.lock: is not a regular file"):
        with io.folder_lock(folder, "study x"):
            pytest.fail("the lock must not be held")
    (folder / ".lock").unlink()
    (folder / ".lock").mkdir()  # what cannot be opened at all: a one-line error, not an OSError's traceback
    with pytest.raises(ConfigError, match=r"\.lock: cannot open this command's lock file \(Is a directory\)"):
        with io.folder_lock(folder, "study x"):
            pytest.fail("the lock must not be held")
    (folder / ".lock").rmdir()
    previous = os.umask(0o002)  # a group's shared folder: the lock file follows the umask, as open() made it (the diff review)
    try:
        with io.folder_lock(folder, "study x"):  # a plain lock file as before
            assert (folder / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        os.umask(previous)
    assert (folder / ".lock").stat().st_mode & 0o777 == 0o664


def test_atomic_path_writes_beside_the_file_and_replaces_it_only_on_success(tmp_path):
    """The test audit: writing in place, or leaving the temporary file behind on an error, passed every test."""
    import os

    from medseg_platform.io import atomic_path

    target = tmp_path / "result.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent and tmp.name.startswith(".result.json.")
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing replaced before the block ends
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600

    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_write_texts_atomic_replaces_no_file_when_any_write_fails(tmp_path, monkeypatch):
    """The set is staged first: a failure writing the second file leaves the first file's old version in place."""
    import os

    from medseg_platform import io

    first, second = tmp_path / "per_case.csv", tmp_path / "summary.csv"
    first.write_text("old 1")
    second.write_text("old 2")
    io.write_texts_atomic({first: "new 1", second: "new 2"})
    assert (first.read_text(), second.read_text()) == ("new 1", "new 2")

    real_fdopen, calls = os.fdopen, []

    def failing_second(fd, *args, **kwargs):
        calls.append(fd)
        if len(calls) == 2:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(io.os, "fdopen", failing_second)
    with pytest.raises(OSError, match="No space left"):
        io.write_texts_atomic({first: "newer 1", second: "newer 2"})
    assert (first.read_text(), second.read_text()) == ("new 1", "new 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_case.csv", "summary.csv"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored interrupt, on purpose
def test_a_sigterm_whose_interrupt_python_ignored_still_stops_the_training_loop():
    """The SIGTERM test's flake: the handler's KeyboardInterrupt landed in a weakref callback, Python printed "Exception
    ignored" and `medseg train --in-process` went on training. The loop's check raises it again; the record ends with
    the block."""
    import signal
    import weakref

    from medseg_platform.io import raise_if_stopped
    from medseg_platform.study.ray_runtime import sigterm_as_interrupt

    class Thing:
        pass

    with sigterm_as_interrupt():
        raise_if_stopped()  # nothing yet
        thing = Thing()
        ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))
        del thing  # the callback runs from C: its KeyboardInterrupt is printed and lost
        assert ref() is None  # reached: the KeyboardInterrupt did not get out of the callback
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
    raise_if_stopped()  # forgotten with the block: a notebook's next run is not stopped by it


def test_a_ctrl_c_python_ignored_still_stops_an_in_process_training_loop():
    """As for SIGTERM above: a Ctrl-C whose KeyboardInterrupt lands in a weakref's callback is printed and lost, and an
    in-process trial went on training; inside ``ctrl_c_recorded`` the loop's next step raises it again, and staging
    blocks inside it still record their own Ctrl-C and give the handler back."""
    import signal

    from medseg_platform.io import ctrl_c_recorded

    class Thing:
        pass

    # Python's own handler, as in a terminal (a process started in the background inherits SIGINT ignored, and the block
    # then leaves it so: the first fresh-clone CI run of this test, started under nohup)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_python_ignored(Thing)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with ctrl_c_recorded():  # an ignored Ctrl-C stays ignored
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def _ctrl_c_python_ignored(Thing) -> None:
    import signal
    import weakref

    from medseg_platform.io import ctrl_c_recorded, interrupt_on_signal, raise_if_interrupted, raise_if_stopped, removed_if_terminated

    with ctrl_c_recorded():
        assert signal.getsignal(signal.SIGINT) is interrupt_on_signal
        with removed_if_terminated(Path("/nonexistent-staging")):
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                raise_if_interrupted()  # the staging block's own record
        assert signal.getsignal(signal.SIGINT) is interrupt_on_signal  # given back, not Python's default
        thing = Thing()
        ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
        del thing
        assert ref() is None  # reached: the KeyboardInterrupt did not get out of the callback
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    raise_if_stopped()  # forgotten with the block
