"""`chextriev db upgrade|downgrade|current`: the service database's schema, via Alembic migrations."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from service.db.migrate import current_revision, downgrade, head_revision, upgrade
from service.db.session import DatabaseUrlError
from service.settings import SettingsError, get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `db` subcommand and its actions."""
    parser = subparsers.add_parser("db", help="migrate the service database")
    actions = parser.add_subparsers(dest="action", required=True)

    up = actions.add_parser("upgrade", help="apply migrations up to a revision (default: the newest)")
    up.add_argument("--revision", default="head", help='target revision (default "head")')
    up.set_defaults(handler=_upgrade)

    down = actions.add_parser("downgrade", help='undo migrations down to a revision ("base": empty)')
    down.add_argument("--revision", required=True, help='target revision, e.g. "base" or "-1"')
    down.set_defaults(handler=_downgrade)

    current = actions.add_parser("current", help="print the database's revision and the newest one")
    current.set_defaults(handler=_current)

    for action in (up, down, current):
        action.add_argument("--url", help="database URL (default: $CHEXTRIEV_DATABASE_URL or ./var/chextriev.db)")


def _upgrade(args: argparse.Namespace) -> int:
    return _report(lambda url: upgrade(url, args.revision), args)


def _downgrade(args: argparse.Namespace) -> int:
    return _report(lambda url: downgrade(url, args.revision), args)


def _current(args: argparse.Namespace) -> int:
    return _report(current_revision, args)


def _report(action: Callable[[str], str | None], args: argparse.Namespace) -> int:
    """Run `action(url)` and print the revision it leaves the database at, or why it failed."""
    try:
        revision = action(args.url or get_settings().database_url)
    except (CommandError, SQLAlchemyError, DatabaseUrlError, SettingsError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"revision: {revision or 'base (empty)'}; newest: {head_revision()}")
    return 0
