"""The Milvus back end: each published snapshot version is a collection of its own, with its manifest
(fingerprint, dimension, count, canary rows, digests) in the collection's properties; the active
version is an alias, moved atomically. Occlusion embeddings, which only saliency reads one case at a
time, and the per-region vectors of region-level search stay in local sidecar files per version
(`<sidecar root>/<version>/occlusion.npy`, `region_embeddings.npy`).

Publishing builds a staging collection and its sidecar, writes the manifest property last, then
renames both to the version's names: a version is either complete or absent.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

from index_store.errors import (
    SnapshotCorruptError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotIncompatibleError,
    SnapshotInputError,
    SnapshotNotFoundError,
)
from index_store.files import FileDigest, write_new_file
from index_store.gallery import GalleryData, validate_gallery
from index_store.manifest import (
    MANIFEST_FILE,
    OCCLUSION_FILE,
    Manifest,
    check_version_name,
    new_version_name,
    parse_manifest,
    utc_timestamp,
)
from index_store.milvus_layout import (
    CASE_ID,
    COLLECTION_PREFIX,
    FACTORY_PREFIX,
    GROUP_KEY,
    MANIFEST_PROPERTY,
    MAX_STRING,
    NO_GROUP,
    REQUIRED_ENTRIES,
    ROW,
    VECTOR,
    ContentDigests,
    build_parameters,
    collection_name,
    default_search_parameters,
    index_type,
    staging_age,
    staging_name,
)
from index_store.milvus_snapshot import MilvusSnapshot, milvus_errors, open_collection
from index_store.region_search import region_count, write_region_file
from index_store.snapshot import CANARY_COUNT, canary_candidates, read_gallery
from index_store.store import StoreEntry, publishing, remove_abandoned_staging, rename_into_store

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "chextriev_active"
_INSERT_ROWS = 2048


@dataclass(frozen=True)
class MilvusConfig:
    """Where Milvus is (a milvus-lite file such as `./var/milvus.db`, or `http://milvus:19530`), its token,
    the alias that names the active version, and the local directory of the occlusion sidecars."""

    uri: str
    sidecar_root: Path
    token: str = ""
    alias: str = DEFAULT_ALIAS


class MilvusBackend:
    """Publish, list and open snapshot versions as Milvus collections; `mark_active` moves the alias."""

    name = "milvus"

    def __init__(self, config: MilvusConfig):
        self.config = config
        self.where = f"Milvus at {config.uri}"
        if _is_lite(config.uri):
            Path(config.uri).parent.mkdir(parents=True, exist_ok=True)
        with milvus_errors(f"connecting to {config.uri}"):
            self.client = MilvusClient(uri=config.uri, token=config.token)

    def publish_gallery(
        self,
        gallery: GalleryData,
        *,
        model_fingerprint: str,
        factory: str | None = None,
        search_parameters: str | None = None,
        version: str | None = None,
    ) -> Manifest:
        """Insert `gallery` into a new collection with a FLAT (exact), HNSW or IVF_FLAT index, choose its
        canary rows, record its manifest and publish it under its version."""
        validate_gallery(gallery)
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise SnapshotInputError("a snapshot needs a non-empty model fingerprint")
        _check_strings(gallery)
        now = datetime.now(UTC)
        version = check_version_name(version if version is not None else new_version_name(now))
        kind = index_type(factory or "FLAT")
        with milvus_errors(f"publishing snapshot {version}"):
            manifest = self._publish(gallery, model_fingerprint, kind, search_parameters, version, now)
        log.info("snapshot published", extra={"version": version, "collection": collection_name(version),
                                               "factory": manifest.factory})
        return manifest

    def publish_directory(self, source: Path, *, version: str | None = None) -> Manifest:
        """Publish the gallery of the verified exact local snapshot `source` as an exact (FLAT) collection,
        under its version or `version`, with the same model fingerprint."""
        gallery, manifest = read_gallery(source)
        return self.publish_gallery(gallery, model_fingerprint=manifest.model_fingerprint,
                                    version=version or manifest.version)

    def remove_abandoned_staging(self, older_than_seconds: float = 86400) -> list[str]:
        """Drop the staging collections created more than `older_than_seconds` ago (their publisher died:
        a publish takes minutes) and the sidecar staging directories of dead publishers; returns them."""
        now = time.time()
        with milvus_errors("removing abandoned staging collections"):
            abandoned = [name for name in self.client.list_collections()
                         if (staging_age(name, now) or 0) > older_than_seconds]
            for name in abandoned:
                self.client.drop_collection(name)
                log.warning("abandoned staging collection dropped", extra={"collection": name})
        return abandoned + [str(path) for path in remove_abandoned_staging(self._sidecar_root())]

    def list_snapshots(self) -> list[StoreEntry]:
        """Every published version with its manifest, oldest first; unreadable ones last, with their problem."""
        readable: list[StoreEntry] = []
        broken: list[StoreEntry] = []
        with milvus_errors("listing the collections"):
            collections = sorted(self.client.list_collections())
        for collection in collections:
            if not collection.startswith(COLLECTION_PREFIX):
                continue
            try:
                with milvus_errors(f"reading the manifest of {collection}"):
                    manifest = self._manifest(collection)
                readable.append(StoreEntry(manifest.version, manifest))
            except SnapshotError as exc:
                broken.append(StoreEntry(collection, None, str(exc)))
        readable.sort(key=lambda entry: (entry.manifest.created, entry.version))
        return readable + broken

    def open_version(
        self,
        version: str,
        *,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        device: str = "cpu",
    ) -> MilvusSnapshot:
        """Open, fully verified (manifest, fingerprint, dimension, count, every digest, canary), `version`'s
        collection; `device` is Milvus's affair and ignored."""
        collection = collection_name(check_version_name(version))
        with milvus_errors(f"opening snapshot {version}"):
            snapshot = self._open(version, collection, expected_fingerprint, expected_dimension)
        log.info("snapshot opened", extra={"version": version, "count": snapshot.manifest.count,
                                           "collection": collection})
        return snapshot

    def _open(self, version: str, collection: str, expected_fingerprint: str | None,
              expected_dimension: int | None) -> MilvusSnapshot:
        if not self.client.has_collection(collection):
            raise SnapshotNotFoundError(f"no snapshot version {version!r} in Milvus", Path(collection))
        manifest = self._manifest(collection)
        where = Path(collection) / MANIFEST_FILE
        if manifest.version != version:
            raise SnapshotCorruptError(f"collection {collection} records version {manifest.version!r}, not "
                                       f"{version!r}", where)
        if expected_fingerprint is not None and manifest.model_fingerprint != expected_fingerprint:
            raise SnapshotIncompatibleError(
                f"snapshot {version}: model fingerprint {manifest.model_fingerprint!r} is not the expected "
                f"{expected_fingerprint!r}", where)
        if expected_dimension is not None and manifest.dimension != expected_dimension:
            raise SnapshotIncompatibleError(
                f"snapshot {version}: dimension {manifest.dimension} is not the expected {expected_dimension}", where)
        self._check_schema(collection, manifest)
        return open_collection(self.client, collection, manifest, self._sidecar_root() / version)

    def mark_active(self, version: str) -> None:
        """Move the alias to `version`'s collection in one step (searches through the alias switch over;
        this service's searches hold their concrete collection)."""
        target = collection_name(version)
        exists = self.active_collection() is not None
        with milvus_errors(f"moving the alias {self.config.alias} to {target}"):
            if exists:
                self.client.alter_alias(target, self.config.alias)
            else:
                self.client.create_alias(target, self.config.alias)
        log.info("alias moved", extra={"alias": self.config.alias, "version": version, "collection": target})

    def active_collection(self) -> str | None:
        """The collection the alias names now, or None before the first activation."""
        with milvus_errors(f"reading the alias {self.config.alias}"):
            if self.config.alias not in self.client.list_aliases()["aliases"]:
                return None
            return self.client.describe_alias(self.config.alias)["collection_name"]

    def close(self) -> None:
        """Close the client; with milvus-lite (a `.db` file) also stop its embedded server, which otherwise
        runs until the process exits (one back end per file and process, as the service and the CLI have)."""
        self.client.close()
        if _is_lite(self.config.uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.config.uri)

    def _publish(self, gallery: GalleryData, model_fingerprint: str, kind: str, search_parameters: str | None,
                 version: str, now: datetime) -> Manifest:
        """Staging collection and sidecar, filled, canary rows chosen, manifest written last, renamed."""
        target = collection_name(version)
        self._refuse_existing(version, target)
        staging = staging_name(time.time())
        with publishing(self._sidecar_root()) as sidecar:
            try:
                digests = self._create_and_fill(staging, gallery, kind)
                manifest = Manifest(
                    version=version, created=utc_timestamp(now), model_fingerprint=model_fingerprint,
                    dimension=gallery.embeddings.shape[1], count=gallery.embeddings.shape[0],
                    factory=FACTORY_PREFIX + kind,
                    search_parameters=search_parameters if search_parameters is not None
                    else default_search_parameters(kind),
                    occlusion_regions=None if gallery.occlusion_embeddings is None
                    else gallery.occlusion_embeddings.shape[1],
                    canary_rows=self._canary_rows(staging, gallery, kind),
                    files={**digests.entries(gallery.group_keys is not None), **_write_occlusions(sidecar, gallery),
                           **write_region_file(sidecar, gallery.region_embeddings)},
                    region_count=region_count(gallery.region_embeddings))
                self.client.alter_collection_properties(
                    staging, properties={MANIFEST_PROPERTY: manifest.to_json().decode()})
                self._rename_into_place(staging, sidecar, version, target)
            except BaseException:
                if self.client.has_collection(staging):
                    self.client.drop_collection(staging)
                raise
        return manifest

    def _manifest(self, collection: str) -> Manifest:
        properties = self.client.describe_collection(collection).get("properties", {})
        where = Path(collection) / MANIFEST_FILE
        if MANIFEST_PROPERTY not in properties:
            raise SnapshotCorruptError(f"collection {collection} has no manifest", where)
        manifest = parse_manifest(properties[MANIFEST_PROPERTY].encode(), where, REQUIRED_ENTRIES)
        if collection_name(manifest.version) != collection:
            raise SnapshotCorruptError(f"collection {collection} records version {manifest.version!r}", where)
        return manifest

    def _check_schema(self, collection: str, manifest: Manifest) -> None:
        fields = {field["name"]: field for field in self.client.describe_collection(collection)["fields"]}
        dimension = fields.get(VECTOR, {}).get("params", {}).get("dim")
        count = self.client.get_collection_stats(collection)["row_count"]
        if dimension is None or int(dimension) != manifest.dimension or count != manifest.count:
            raise SnapshotCorruptError(
                f"collection {collection} holds {count} {dimension}-d vectors; its manifest says "
                f"{manifest.count} {manifest.dimension}-d", Path(collection) / MANIFEST_FILE)

    def _refuse_existing(self, version: str, collection: str) -> None:
        if self.client.has_collection(collection) or (self._sidecar_root() / version).exists():
            raise SnapshotExistsError(f"snapshot version {version!r} is already published in Milvus",
                                      Path(collection))

    def _sidecar_root(self) -> Path:
        self.config.sidecar_root.mkdir(parents=True, exist_ok=True)
        return self.config.sidecar_root

    def _create_and_fill(self, collection: str, gallery: GalleryData, kind: str) -> ContentDigests:
        """Create `collection` with its index, insert the gallery row by row number, flush and load it."""
        count, dimension = gallery.embeddings.shape
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ROW, DataType.INT64, is_primary=True)
        schema.add_field(CASE_ID, DataType.VARCHAR, max_length=MAX_STRING)
        schema.add_field(GROUP_KEY, DataType.VARCHAR, max_length=MAX_STRING)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dimension)
        index = self.client.prepare_index_params()
        index.add_index(field_name=VECTOR, index_type=kind, metric_type="IP", params=build_parameters(kind, count))
        self.client.create_collection(collection, schema=schema, index_params=index, consistency_level="Strong")
        digests = ContentDigests()
        group_keys = gallery.group_keys or (NO_GROUP,) * count
        for start in range(0, count, _INSERT_ROWS):
            stop = min(start + _INSERT_ROWS, count)
            vectors = gallery.embeddings[start:stop]
            self.client.insert(collection, [
                {ROW: row, CASE_ID: gallery.case_ids[row], GROUP_KEY: group_keys[row], VECTOR: vector}
                for row, vector in zip(range(start, stop), vectors.tolist(), strict=True)])
            digests.add(vectors, gallery.case_ids[start:stop], group_keys[start:stop])
        self.client.flush(collection)
        self.client.load_collection(collection)
        return digests

    def _canary_rows(self, collection: str, gallery: GalleryData, kind: str) -> tuple[int, ...]:
        """Up to CANARY_COUNT evenly spread rows whose own vector finds them first in this collection."""
        embeddings = gallery.embeddings
        candidates = canary_candidates(len(embeddings))
        found = self.client.search(collection, data=embeddings[candidates].tolist(), limit=1, output_fields=[ROW],
                                   anns_field=VECTOR, search_params={"metric_type": "IP"})
        rows = tuple(int(row) for row, hits in zip(candidates, found, strict=True)
                     if hits and int(hits[0]["entity"][ROW]) == row)[:CANARY_COUNT]
        if not rows:
            raise SnapshotInputError(f"no gallery vector finds itself first in a Milvus {kind} index: the index is "
                                     "too lossy or the gallery vectors are duplicates")
        return rows

    def _rename_into_place(self, staging: str, sidecar: Path, version: str, target: str) -> None:
        """Publish: the sidecar directory first (refused if the version exists), then the collection.

        A rename reported as failed that Milvus carried out counts as done. At 1M vectors milvus-lite
        answered a rename after 7 minutes, and pymilvus's retry then failed for want of the staging
        collection. The staging collection gone and the target, absent just before, present means
        the rename happened.
        """
        self._refuse_existing(version, target)
        rename_into_store(sidecar, self.config.sidecar_root, version)
        try:
            self.client.rename_collection(staging, target)
        except BaseException:
            if self._renamed(staging, target):
                log.warning("a rename reported as failed was carried out: the version is published",
                            extra={"version": version, "collection": target})
                return
            shutil.rmtree(self.config.sidecar_root / version, ignore_errors=True)
            raise

    def _renamed(self, staging: str, target: str) -> bool:
        """Whether `staging` is gone and `target` is there (False when Milvus cannot say)."""
        try:
            return not self.client.has_collection(staging) and self.client.has_collection(target)
        except Exception:  # noqa: BLE001 - Milvus unreachable: the rename's own error is the one raised
            return False


def _is_lite(uri: str) -> bool:
    """True for a milvus-lite file (pymilvus's rule: a URI ending in `.db`)."""
    return uri.endswith(".db")


def _check_strings(gallery: GalleryData) -> None:
    longest = max(len(value.encode("utf-8")) for value in gallery.case_ids + (gallery.group_keys or ()))
    if longest > MAX_STRING:
        raise SnapshotInputError(f"case ids and group keys must be at most {MAX_STRING} bytes in Milvus")


def _write_occlusions(sidecar: Path, gallery: GalleryData) -> dict[str, FileDigest]:
    occlusion = gallery.occlusion_embeddings
    if occlusion is None:
        return {}
    digest = write_new_file(sidecar / OCCLUSION_FILE,
                            lambda f: np.save(f, np.ascontiguousarray(occlusion), allow_pickle=False))
    return {OCCLUSION_FILE: digest}
