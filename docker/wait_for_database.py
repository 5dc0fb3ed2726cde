"""Wait until the service database answers; with --require-head, also require the newest migration.

Run by the container entrypoints (docker/*.sh) before they migrate or serve. The database URL comes
from the settings (CHEXTRIEV_DATABASE_URL). A server that refuses connections is retried until the
time is up: its container may still be starting. Exit status:
  0  the database answers (and, with --require-head, is at the newest revision);
  1  it still cannot be reached when the time is up, or the URL is unusable;
  2  with --require-head, its schema is not at the newest revision.
The URL is never logged: it may hold the password.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from sqlalchemy.exc import OperationalError

from service.db.migrate import current_revision, head_revision
from service.db.session import DatabaseUrlError
from service.logging_setup import configure_logging
from service.settings import get_settings

logger = logging.getLogger("chextriev.entrypoint")

UNREACHABLE, NOT_AT_HEAD = 1, 2


class DatabaseUnreachable(Exception):
    """The database did not answer within the time allowed."""


def wait_for_revision(url: str, timeout: float, interval: float) -> str | None:
    """The database's revision (None when unmigrated), retrying unanswered connections until `timeout` s."""
    deadline = time.monotonic() + timeout
    attempt = 1
    while True:
        try:
            return current_revision(url)
        except OperationalError as error:
            reason = str(error.orig or error).strip().splitlines()[0]
            if time.monotonic() + interval > deadline:
                raise DatabaseUnreachable(f"the database did not answer after {attempt} attempts in "
                                          f"{timeout:g} s: {reason}") from error
            logger.info("waiting for the database", extra={"attempt": attempt, "reason": reason})
            time.sleep(interval)
            attempt += 1


def main(argv: list[str] | None = None) -> int:
    """Wait for the configured database and report; the exit status says what was found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to keep trying (default 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between attempts (default 1)")
    parser.add_argument("--require-head", action="store_true",
                        help="fail unless the schema is at the newest migration")
    args = parser.parse_args(argv)
    configure_logging()
    url = get_settings().database_url
    backend = url.split(":", 1)[0]
    try:
        revision = wait_for_revision(url, args.timeout, args.interval)
    except (DatabaseUnreachable, DatabaseUrlError, OSError) as error:  # OSError: a SQLite file's folder
        logger.error(str(error), extra={"backend": backend})
        return UNREACHABLE
    newest = head_revision()
    if args.require_head and revision != newest:
        logger.error(f"the database schema is at revision {revision or 'base (empty)'}, the service needs "
                     f"{newest}: run `chextriev db upgrade` (with compose: the migrate service) first",
                     extra={"backend": backend, "revision": revision, "newest": newest})
        return NOT_AT_HEAD
    logger.info("database ready", extra={"backend": backend, "revision": revision, "newest": newest})
    return 0


if __name__ == "__main__":
    sys.exit(main())
