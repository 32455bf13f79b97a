"""The ``medseg`` console command (``medseg`` once installed, or ``python -m analysis``).

It sits on the top package floor because it gathers the commands of every floor below: the platform's
(:func:`medseg_platform.cli.platform_groups`: data, evaluate, train, predict) and the report
(:mod:`analysis.cli`). Argument handling and the one-line errors are :func:`medseg_platform.cli.run_cli`'s.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from analysis import cli as report_cli
from medseg_platform.cli import platform_groups, run_cli, top_parser


def build_parser() -> argparse.ArgumentParser:
    """The ``medseg`` parser with every command group."""
    parser, subparsers = top_parser()
    for group in [*platform_groups(), report_cli]:
        group.add_cli(subparsers)
    subparsers.choices["train"].set_defaults(func=report_cli.train_then_report)  # the folder's report follows its trial
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
