"""A demo work directory built by `chextriev demo --build-only`, once per test session, for every module
that needs a built demo (the build, its warm start's imports, the HTTP benchmark).

The demo is built without occlusion embeddings (the default: they cost ~140 backbone crops per case,
minutes for all 48 on a small CPU). tests/service/conftest.py makes the fixture every service test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo work directory built by the command line, with a salt of its own (none configured)."""
    work_dir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        build_demo_dir(work_dir, patch)
    return work_dir


def build_demo_dir(work_dir: Path, patch: pytest.MonkeyPatch, *options: str) -> None:
    """`chextriev demo --build-only [options]` with no configured salt (the work directory's is used)."""
    patch.delenv("CHEXTRIEV_PATIENT_SALT", raising=False)
    assert main(["demo", "--work-dir", str(work_dir), "--build-only", *options]) == 0
