"""Subcommand modules of `chextriev`; each has `register(subparsers)` setting `handler`."""

from service.commands import bench, db, demo, embed, evaluate, features, index, serve, train

COMMAND_MODULES = [demo, serve, index, bench, train, features, evaluate, embed, db]
