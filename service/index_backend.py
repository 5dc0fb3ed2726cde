"""The index back end the settings choose (CHEXTRIEV_INDEX_BACKEND): the local snapshot store, or
Milvus (pymilvus is imported only then)."""

from __future__ import annotations

from pathlib import Path

from index_store.backend import IndexBackend
from index_store.local_backend import LocalBackend
from service.settings import Settings


def make_backend(settings: Settings) -> IndexBackend:
    """The configured back end; with Milvus, `index_store` is the directory of the occlusion sidecars."""
    if settings.index_backend == "milvus":
        from index_store.milvus_backend import MilvusBackend, MilvusConfig

        token = settings.milvus_token.get_secret_value() if settings.milvus_token is not None else ""
        return MilvusBackend(MilvusConfig(uri=settings.milvus_uri, sidecar_root=Path(settings.index_store),
                                          token=token, alias=settings.milvus_alias))
    return LocalBackend(Path(settings.index_store))
