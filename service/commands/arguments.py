"""Argument types shared by the service's subcommands."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A positive integer, or argparse's error naming the text."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. "1,8,32"."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values
