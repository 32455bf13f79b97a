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
    import builtins

    import medseg_platform.io as io
    from medseg_platform.errors import ConfigError

    folder = tmp_path / "out"
    a = io.folder_lock(folder, "medseg predict", keep=False)
    a.__enter__()
    real_open = builtins.open

    def open_then_let_a_finish(*args, **kwargs):  # A ends between B's open and B's lock
        fh = real_open(*args, **kwargs)
        monkeypatch.setattr(io, "open", real_open, raising=False)
        a.__exit__(None, None, None)
        return fh

    monkeypatch.setattr(io, "open", open_then_let_a_finish, raising=False)
    with io.folder_lock(folder, "medseg predict", keep=False):
        with pytest.raises(ConfigError, match="medseg predict is running there already"):
            with io.folder_lock(folder, "medseg predict", keep=False):
                pass
