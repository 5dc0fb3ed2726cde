"""Subcommand modules of `chextriev`; each has `register(subparsers)` setting `handler`."""

from service.commands import demo

COMMAND_MODULES = [demo]
