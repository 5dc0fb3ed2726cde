"""Markers of the trainer tests."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "torchrun: starts processes through torch.distributed.run (deselect with -m 'not torchrun')")
