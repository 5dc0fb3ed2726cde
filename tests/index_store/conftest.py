"""Fixtures for the index store: a small clustered gallery and a store with it published as "v1"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from index_store.gallery import GalleryData
from index_store.store import publish_gallery
from tests.index_store.galleries import FINGERPRINT, make_gallery


@pytest.fixture
def gallery() -> GalleryData:
    return make_gallery()


@pytest.fixture
def store(tmp_path: Path, gallery: GalleryData) -> Path:
    """An index store holding the published exact snapshot "v1" of `gallery`."""
    root = tmp_path / "store"
    publish_gallery(root, gallery, model_fingerprint=FINGERPRINT, version="v1")
    return root


@pytest.fixture
def publish(store: Path) -> Callable[..., Path]:
    """Publish another snapshot into `store`: publish(version, gallery=None, **options) -> its directory."""

    def _publish(version: str, gallery: GalleryData | None = None, **options) -> Path:
        options.setdefault("model_fingerprint", FINGERPRINT)
        publish_gallery(store, gallery or make_gallery(seed=7, prefix=version), version=version, **options)
        return store / version

    return _publish
