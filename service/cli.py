"""The `chextriev` command line: one thin subcommand module per job, each calling package code."""

from __future__ import annotations

import argparse
import sys

from service.commands import COMMAND_MODULES
from service.logging_setup import configure_logging


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="chextriev", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chextriev` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
