"""Output folders checked before any work (medseg_platform.io.check_output_folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_platform.errors import ConfigError
from medseg_platform.io import check_output_folder


def test_a_folder_that_can_be_made_passes_and_nothing_is_left_behind(tmp_path):
    check_output_folder(tmp_path / "new" / "deeper", "--out")
    check_output_folder(tmp_path, "--out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the write check's temporary folder


def test_a_file_on_the_path_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"--out .*/f: is a file, not a folder"):
        check_output_folder(tmp_path / "f", "--out")
    with pytest.raises(ConfigError, match=r"is inside .*/f, a file"):
        check_output_folder(tmp_path / "f" / "sub", "--out")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_place_no_folder_can_be_made_is_an_error_before_any_work():
    """It used to pass, and the command failed with a traceback after its work (evaluate: after every metric)."""
    with pytest.raises(ConfigError, match=r"--results-dir /proc/medseg-x: cannot write there \(its nearest existing "
                                          r"folder is /proc\)"):
        check_output_folder("/proc/medseg-x", "--results-dir")
