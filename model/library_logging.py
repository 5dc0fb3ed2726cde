"""Libraries that print to the console on their own: PyTorch Lightning adds a plain handler to its
loggers when it is imported. Where the application has configured logging (the service's JSON
lines), their records go through the application's handlers instead, once."""

from __future__ import annotations

import logging

OWN_CONSOLE_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def route_library_logs_to_root() -> None:
    """Drop the libraries' own console handlers and let their records propagate to the root logger."""
    for name in OWN_CONSOLE_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
        library_logger.setLevel(logging.NOTSET)
