"""The offline trainer's subcommands of `chextriev` (features, train, evaluate, embed).

Each module has `register(subparsers)` setting `handler`; service.cli finds them through the
`chextriev.commands` entry points and imports only the one that runs.
"""
