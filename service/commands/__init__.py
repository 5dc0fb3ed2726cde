"""The service's subcommands of `chextriev`; each module has `register(subparsers)` setting `handler`.

They are found through the `chextriev.commands` entry points (see service.cli), not imported here.
"""
