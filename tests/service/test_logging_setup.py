"""JSON logging set up by every entry point: records reach the stderr of the moment they are emitted."""

from __future__ import annotations

import io
import json
import logging
import sys

from service.logging_setup import configure_logging


def test_records_follow_stderr_when_it_is_replaced_and_the_old_one_closed(monkeypatch):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging("INFO")
        logging.getLogger("chextriev.test").info("first", extra={"case_id": "c1"})
        monkeypatch.setattr(sys, "stderr", second)
        first.close()  # as pytest closes a test's captured stderr, while a service thread still logs
        logging.getLogger("chextriev.test").info("second")
    finally:
        root.handlers[:], root.level = handlers, level
    records = [json.loads(line) for line in second.getvalue().splitlines()]
    assert [(record["message"], record["logger"]) for record in records] == [("second", "chextriev.test")]
    assert "Logging error" not in second.getvalue()
