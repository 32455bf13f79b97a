"""The ``medseg`` console command (also ``python -m medseg_platform``).

Each command group lives next to the code it drives and exposes ``add_cli(subparsers)``, which adds
its parsers and sets ``func(args) -> int`` on them. Errors of type :class:`MedsegError` are printed as
one line (``error: ...``) with exit code 2; no traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from medseg_platform import __version__
from medseg_platform.errors import MedsegError


def command_parser(subparsers, name: str, help: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` ends with a copy-paste example."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    from analysis import cli as report_cli
    from medseg_platform import predict, train_cli
    from medseg_platform.data import cli as data_cli
    from medseg_platform.evaluation import cli as evaluation_cli

    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Semi-supervised contrastive medical image segmentation: data, evaluation, studies.",
        epilog="example:\n  medseg data phantom --out data/phantom && medseg data check data/phantom",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medseg-platform {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_cli.add_cli(subparsers)
    evaluation_cli.add_cli(subparsers)
    report_cli.add_cli(subparsers)
    train_cli.add_cli(subparsers)
    predict.add_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group given without its sub-command: show that group's help
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `medseg ... | head`: the reader went away, not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
