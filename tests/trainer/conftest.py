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
    """The shipped anatomy model file; the test is skipped while it has not been trained and shipped."""
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"the shipped anatomy model {SHIPPED_MODEL} does not exist yet (chextriev anatomy train)")
    return SHIPPED_MODEL
