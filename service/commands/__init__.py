"""Subcommand modules of `chextriev`; each has `register(subparsers)` setting `handler`."""

from service.commands import bench, demo, embed, evaluate, features, index, train

COMMAND_MODULES = [demo, index, bench, train, features, evaluate, embed]
