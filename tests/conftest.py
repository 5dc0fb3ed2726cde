"""Shared fixtures: the bundled sample radiographs and, when present, ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.demo.samples import load_sample_cases

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEXTRIEV_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets of ../shared/data; tests using it skip on a clone without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (set CHEXTRIEV_SHARED_DATA); "
                    "a fresh clone runs only the bundled-sample tests")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_cases():
    """The 48 openly licensed radiographs bundled with the package."""
    return load_sample_cases()
