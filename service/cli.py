"""The `chextriev` command line: one thin subcommand module per job, each calling package code.

Subcommands are registered as entry points of the group `chextriev.commands` (pyproject.toml), each
naming its module: the service's under `service.commands`, the offline trainer's under
`trainer.commands`. Only the module of the subcommand that runs is imported, so `chextriev serve`
never loads the trainer (Lightning, scipy) and the top-level help loads none of them: it reads
each module's one-line summary from its source.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from service.logging_setup import configure_logging

COMMAND_GROUP = "chextriev.commands"


def command_modules() -> dict[str, str]:
    """Subcommand name -> the module that implements it, from the installed entry points."""
    return {entry.name: entry.module for entry in entry_points(group=COMMAND_GROUP)}


def build_parser(argv: list[str], modules: dict[str, str]) -> argparse.ArgumentParser:
    """The parser: the chosen subcommand's module registers its options; the others appear by name."""
    parser = argparse.ArgumentParser(prog="chextriev", description=__doc__.splitlines()[0],
                                     epilog="`chextriev COMMAND --help` describes a command's options.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = chosen_command(argv, modules)
    for name, module_name in sorted(modules.items()):
        if name == chosen:
            importlib.import_module(module_name).register(subparsers)
        else:
            subparsers.add_parser(name, help=module_summary(module_name), add_help=False)
    return parser


def chosen_command(argv: list[str], modules: dict[str, str]) -> str | None:
    """The subcommand named in `argv` (the first argument that is not a top-level option)."""
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--log-level":
            next(arguments, None)
        elif not argument.startswith("-"):
            return argument if argument in modules else None
    return None


def module_summary(module_name: str) -> str:
    """The first line of a module's docstring, read from its source without importing it or its
    packages (`importlib.util.find_spec` of a submodule would import the packages above it)."""
    source = module_source(module_name)
    if source is None:
        return ""
    docstring = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    first_line = docstring.splitlines()[0] if docstring else ""
    return first_line.split("`: ", 1)[1] if first_line.startswith("`chextriev") else first_line


def module_source(module_name: str) -> Path | None:
    """The source file of a module inside a package, found from the package's top-level location."""
    top, *inner = module_name.split(".")
    spec = importlib.util.find_spec(top)
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location, *inner).with_suffix(".py")
        if path.is_file():
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chextriev` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    modules = command_modules()
    if not modules:
        print(f"error: no subcommands are registered under {COMMAND_GROUP!r}; install the package "
              "(pip install -e .)", file=sys.stderr)
        return 2
    args = build_parser(argv, modules).parse_args(argv)
    configure_logging(args.log_level)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
