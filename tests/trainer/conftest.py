"""Markers and shared fixtures of the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.anatomy_model import SHIPPED_MODEL


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "torchrun: starts processes through torch.distributed.run (deselect with -m 'not torchrun')")


@pytest.fixture(scope="session")
def shipped_anatomy_model() -> Path:
    """The anatomy model file shipped in the package."""
    return SHIPPED_MODEL
