"""The package as a user meets it: imports from the repo root, the console command and its help texts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.console import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_imports_from_repository_root_do_not_shadow_stdlib():
    code = "import medseg_platform, methods, analysis, ray, torch, pandas, h5py, platform; print(platform.system())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Linux"


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subcommands(sub, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in _subcommands(build_parser())], ids=" ".join)
def test_every_subcommand_has_help_with_an_example(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"medseg {' '.join(path)}" in out.split("example:")[1]
    assert "``" not in out and ":func:`" not in out and ":mod:`" not in out  # `data check` printed its docstring's markup


def test_python_dash_m_and_console_script_agree():
    proc = subprocess.run([sys.executable, "-m", "analysis", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("medseg-platform ")
    assert main(["data"]) == 2  # a group without its sub-command prints the group's help


def test_a_command_whose_reader_went_away_does_not_exit_0():
    """The README audit: `medseg predict ... | head -1` stopped after one prediction (its folder marked unfinished) and
    exited 0, as if it had finished. A real run: the reader closes the pipe after one line."""
    script = ("import sys; from medseg_platform.cli import run_cli; import argparse\n"
              "p = argparse.ArgumentParser(); p.set_defaults(func=lambda a: [print(i, flush=True) for i in range(100000)])\n"
              "sys.exit(run_cli(p, []))")
    proc = subprocess.run(f"{sys.executable} -c '{script}' | head -1; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert proc.returncode == 141 and proc.stdout == "0\n", (proc.returncode, proc.stderr[-500:])



@pytest.mark.parametrize("handled_by", ["command", "run_cli"])
def test_an_interrupt_that_left_exec_generated_code_still_exits_130_under_python_m(tmp_path, handled_by):
    """The flaky kill test: a stop signal whose KeyboardInterrupt left code that exec() ran from a string (dataclasses
    build their methods that way, e.g. while torch imports its optimiser's helpers) made `python -m analysis train
    --in-process` die by SIGINT at exit (CPython's record of an unhandled interrupt) after it had printed how to resume
    and returned 130."""
    module = tmp_path / "stopped_command.py"
    module.write_text(
        "import argparse, sys\n"
        "from medseg_platform.cli import run_cli\n"
        "def stop(args):\n"
        "    if args.handled_by == 'run_cli':\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        print('stopped; rerun to resume', file=sys.stderr)\n"
        "        return 130\n"
        "p = argparse.ArgumentParser(); p.add_argument('handled_by'); p.set_defaults(func=stop)\n"
        "raise SystemExit(run_cli(p))\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "stopped_command", handled_by], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-800:])  # -2 (killed by SIGINT) before the fix


def test_the_shared_cli_module_run_on_its_own_names_the_command():
    """The data walkthrough: `python -m medseg_platform.cli predict --bogus` ran nothing and exited 0."""
    proc = subprocess.run([sys.executable, "-m", "medseg_platform.cli", "predict", "--bogus"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert proc.returncode == 1 and "`python -m analysis`" in proc.stderr, (proc.returncode, proc.stderr[-500:])


def test_a_broken_pipe_that_is_not_the_readers_is_an_error(capsys):
    """The review: every BrokenPipeError (a worker's, a socket's) ended silently with 141 as if the reader had gone."""
    import argparse

    from medseg_platform.cli import run_cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=broken)
    assert run_cli(parser, []) == 1
    assert capsys.readouterr().err.strip() == "error: [Errno 32] Broken pipe"
