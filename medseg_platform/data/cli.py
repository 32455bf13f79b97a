"""``medseg data ...``: the data commands, each defined next to its implementation."""

from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    from medseg_platform.data import check, convert, phantom, splits

    group = subparsers.add_parser(
        "data",
        help="make, convert, check and split datasets in the SSL4MIS/ACDC layout",
        description="Make, convert, check and split datasets in the SSL4MIS/ACDC layout.",
        epilog="example:\n  medseg data phantom --out data/phantom --patients 20 --size 128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    phantom.add_cli(commands)
    convert.add_cli(commands)
    check.add_cli(commands)
    splits.add_cli(commands)
