"""What every ``medseg`` sub-command shares: :func:`command_parser`, the top-level parser, and :func:`run_cli`.

The ``medseg`` console command itself is composed in :mod:`analysis.console` (``python -m analysis``): it includes
``medseg report``, which lives one floor up, in :mod:`analysis`. The platform's own command groups are
:func:`platform_groups`. Each command group lives next to the code it drives and exposes ``add_cli(subparsers)``, which adds
its parsers and sets ``func(args) -> int`` on them. Errors of type :class:`MedsegError` are printed as
one line (``error: ...``) with exit code 2; no traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
import re
from typing import Sequence

from medseg_platform import __version__
from medseg_platform.errors import MedsegError


_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def log_line(msg: str) -> None:
    """One line for the person at the terminal (progress, notes, warnings): on stderr, flushed at once, so that it
    shows between Ray's own lines and stays out of a redirected stdout (the tables)."""
    print(msg, file=sys.stderr, flush=True)


def plain_help(text: str) -> str:
    """A docstring as ``--help`` prints it: reStructuredText roles and literals as plain words
    (":func:`a.b`" -> "a.b", "``x``" -> "x"); the rest as written."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def command_parser(subparsers, name: str, help: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` ends with a copy-paste example (the description in :func:`plain_help`)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=plain_help(description or help),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def platform_groups() -> list:
    """The platform's command-group modules (data, evaluate, train, predict), each with ``add_cli(subparsers)``."""
    from medseg_platform import predict, train_cli
    from medseg_platform.data import cli as data_cli
    from medseg_platform.evaluation import cli as evaluation_cli

    return [data_cli, evaluation_cli, train_cli, predict]


def top_parser() -> tuple[argparse.ArgumentParser, "argparse._SubParsersAction"]:
    """The ``medseg`` parser (``--version``, the sub-command slot) and its sub-parsers, without any command."""
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Semi-supervised contrastive medical image segmentation: data, evaluation, studies.",
        epilog="example:\n  medseg data phantom --out data/phantom && medseg data check data/phantom",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medseg-platform {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command: a :class:`MedsegError` is one line and exit 2."""
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group given without its sub-command: show that group's help
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return _run_command(func, args)
    finally:
        forget_handled_interrupts()


def _run_command(func, args) -> int:
    """``func(args)``'s exit code; the one-line errors and exit codes of :func:`run_cli`."""
    try:
        return int(func(args) or 0)
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if _stdout_reader_gone():  # `medseg ... | head`: the reader of its output went away, and its output with it
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
            return 141  # the shell's code for a command SIGPIPE stopped (it returned 0, as if nothing were missing)
        print(f"error: {exc}", file=sys.stderr)  # another pipe broke (a worker's, a socket's): not the reader's doing
        return 1


def forget_handled_interrupts() -> None:
    """Clear CPython's record of a KeyboardInterrupt that left code run by ``exec``/``eval`` of a string, once the
    command has handled it: CPython (3.8 on) keeps that record even when an outer ``except`` catches the interrupt, and
    under ``python -m`` (``python -m analysis``) it then ends the process by SIGINT at exit instead of returning the
    command's exit code. Dataclasses and typing run generated code that way, e.g. while torch imports its optimiser's
    helpers at the first training steps, so a stop signal landing there made a killed ``medseg train --in-process``
    die by SIGINT (2 of 40 timed kills) rather than exit 130. Any later exec of a string that succeeds clears it."""
    exec("None")  # noqa: S102 - a constant: resets CPython's unhandled-KeyboardInterrupt flag (pythonrun.c)


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end is closed (``poll`` reports an error on its writing end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream), or no poll
        return False


if __name__ == "__main__":  # `python -m medseg_platform.cli predict ...` ran nothing and exited 0 (the walkthrough)
    sys.exit("medseg_platform.cli holds what the medseg commands share; the command is `medseg` (installed) or "
             "`python -m analysis`")
