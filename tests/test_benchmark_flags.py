"""The hand-run scripts under ``benchmarks/`` refuse bad flags with one argparse line (exit 2) before any work, and
``check_exact_resume.py`` refuses a ``--work`` folder whose old runs it would compare with themselves (it used to
pass without testing anything: the benchmarks probe)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*command], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script, flags, message", [
    ("bench_methods.py", ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("bench_samplers.py", ["--reps", "1"], "argument --reps: must be >= 2, got 1"),
    ("bench_sgd.py", ["--methods", "unet"], "argument --methods: invalid choice: 'unet'"),
    ("bench_table_marker.py", ["--rows", "1"], "argument --rows: must be >= 2, got 1"),
    ("bench_augment.py", ["--batch", "0"], "argument --batch: must be >= 1, got 0"),
    ("phantom_gap.py", ["--labelled", "0"], "argument --labelled: expected 'all' or a whole number >= 1, got '0'"),
    ("bench_validation.py", ["--checkpoint", "no/such.pt"], "--checkpoint no/such.pt: no such file"),
    ("val_noise.py", ["no/such/study"], "no/such/study: no trials/ folder"),
    ("val_noise.py", [".", "--steps", "1"], "argument --steps: must be >= 2, got 1"),
    ("check_exact_resume.py", ["--steps", "5", "--val-every", "5", "supervised"], "--val-every 5 must be below --steps 5"),
    ("eqv_batchnorm.py", ["mona", "1", "1"], "the following arguments are required: --work"),
    ("eqv_batchnorm.py", ["--work", "unused", "mona", "1"], "give METHOD LABELLED SEED [KEY=VALUE ...]"),
])
def test_a_bad_flag_is_one_usage_error(script, flags, message):
    done = _run(sys.executable, f"benchmarks/{script}", *flags)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_exact_resume_refuses_a_work_folder_with_earlier_runs(tmp_path):
    (tmp_path / "supervised" / "straight").mkdir(parents=True)
    # refused before any run: mona, listed first and with an empty folder, is not trained either
    done = _run(sys.executable, "benchmarks/check_exact_resume.py", "--work", str(tmp_path), "mona", "supervised", "mona")
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{tmp_path / 'supervised'} already holds runs" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supervised"]  # nothing trained
    assert sorted(p.name for p in (tmp_path / "supervised").iterdir()) == ["straight"]


def test_gpu_check_prints_its_help_and_refuses_without_a_gpu_before_making_its_folder(tmp_path):
    done = _run("bash", "benchmarks/gpu_check.sh", "--help")
    assert done.returncode == 0 and done.stdout.startswith("The GPU checks of this project as one script"), done.stderr
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run its checks")
    out = tmp_path / "out"
    done = _run("bash", "benchmarks/gpu_check.sh", str(out))
    assert done.returncode == 2 and "no CUDA GPU here" in done.stderr and not out.exists()
