"""The index store: a directory of published snapshot versions; atomic publishing, listing and opening."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from index_store.errors import SnapshotCorruptError, SnapshotError, SnapshotExistsError, SnapshotNotFoundError
from index_store.faiss_index import EXACT_FACTORY
from index_store.files import copy_new_file, fsync_directory
from index_store.gallery import GalleryData
from index_store.manifest import MANIFEST_FILE, Manifest, check_version_name, parse_manifest
from index_store.snapshot import Snapshot, open_snapshot, write_snapshot

log = logging.getLogger(__name__)

_TEMP_PREFIX = ".publishing-"


@dataclass(frozen=True)
class StoreEntry:
    """One version directory of a store: its manifest, or why its manifest cannot be read."""

    version: str
    manifest: Manifest | None
    problem: str | None = None

    def summary(self) -> dict[str, object]:
        """The manifest summary (or just the version) and the problem (None when readable), for listings."""
        details = self.manifest.summary() if self.manifest else {"version": self.version}
        return {**details, "problem": self.problem}


def build_snapshot(
    directory: Path,
    gallery: GalleryData,
    *,
    model_fingerprint: str,
    factory: str = EXACT_FACTORY,
    search_parameters: str | None = None,
    version: str | None = None,
) -> Manifest:
    """Write a snapshot into the new staging `directory` (for a later `publish_directory`); refuses an existing one."""
    try:
        directory.mkdir(parents=True)
    except FileExistsError as exc:
        raise SnapshotExistsError(
            f"{directory} already exists; a snapshot is built into a new directory", directory
        ) from exc
    try:
        return write_snapshot(
            directory,
            gallery,
            model_fingerprint=model_fingerprint,
            factory=factory,
            search_parameters=search_parameters,
            version=version,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def publish_gallery(
    store: Path,
    gallery: GalleryData,
    *,
    model_fingerprint: str,
    factory: str = EXACT_FACTORY,
    search_parameters: str | None = None,
    version: str | None = None,
) -> Manifest:
    """Build a snapshot of `gallery` inside `store` and publish it atomically under its version."""
    if version is not None:
        _refuse_existing(store, check_version_name(version))
    with _publishing(store) as temp:
        manifest = write_snapshot(
            temp,
            gallery,
            model_fingerprint=model_fingerprint,
            factory=factory,
            search_parameters=search_parameters,
            version=version,
        )
        _rename_into_store(temp, store, manifest.version)
    return manifest


def publish_directory(source: Path, store: Path) -> Manifest:
    """Verify the snapshot in `source` (full load and canary), copy it into `store` and publish it atomically."""
    snapshot = open_snapshot(source)
    manifest = snapshot.manifest
    snapshot.close()
    _refuse_existing(store, manifest.version)
    with _publishing(store) as temp:
        for name, expected in manifest.files.items():
            if copy_new_file(source / name, temp / name) != expected:
                raise SnapshotCorruptError(
                    f"{name} in {source} changed while it was being published", source / name
                )
        copy_new_file(source / MANIFEST_FILE, temp / MANIFEST_FILE)
        if parse_manifest((temp / MANIFEST_FILE).read_bytes(), temp / MANIFEST_FILE) != manifest:
            raise SnapshotCorruptError(
                f"{MANIFEST_FILE} in {source} changed while it was being published", source / MANIFEST_FILE
            )
        _rename_into_store(temp, store, manifest.version)
    return manifest


def list_snapshots(store: Path) -> list[StoreEntry]:
    """Every published version with its manifest, oldest first; unreadable ones last, with their problem."""
    if not store.is_dir():
        raise SnapshotNotFoundError(f"index store {store} does not exist", store)
    readable: list[StoreEntry] = []
    broken: list[StoreEntry] = []
    for path in sorted(store.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        manifest_path = path / MANIFEST_FILE
        try:
            readable.append(StoreEntry(path.name, parse_manifest(manifest_path.read_bytes(), manifest_path)))
        except FileNotFoundError:
            broken.append(StoreEntry(path.name, None, f"{MANIFEST_FILE} is missing"))
        except (OSError, SnapshotError) as exc:
            broken.append(StoreEntry(path.name, None, str(exc)))
    readable.sort(key=lambda entry: (entry.manifest.created, entry.version))
    return readable + broken


def open_version(
    store: Path,
    version: str,
    *,
    expected_fingerprint: str | None = None,
    expected_dimension: int | None = None,
    device: str = "cpu",
) -> Snapshot:
    """Open, fully verified, the published `version` of `store`."""
    path = store / check_version_name(version)
    if not path.is_dir():
        raise SnapshotNotFoundError(f"no snapshot version {version!r} in {store}", path)
    return open_snapshot(
        path,
        expected_version=version,
        expected_fingerprint=expected_fingerprint,
        expected_dimension=expected_dimension,
        device=device,
    )


def _refuse_existing(store: Path, version: str) -> None:
    if (store / version).exists():
        raise SnapshotExistsError(
            f"snapshot version {version!r} is already published in {store}", store / version
        )


@contextmanager
def _publishing(store: Path) -> Iterator[Path]:
    """A hidden temporary directory inside the store, removed afterwards unless it was renamed into place."""
    store.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=store))
    os.chmod(temp, 0o755)
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _rename_into_store(temp: Path, store: Path, version: str) -> None:
    """Rename the complete snapshot in `temp` to `store/version`, never replacing an existing version."""
    target = store / version
    _refuse_existing(store, version)
    fsync_directory(temp)
    try:
        os.rename(temp, target)  # fails on a non-empty target
    except OSError as exc:
        raise SnapshotExistsError(
            f"snapshot version {version!r} is already published in {store}", target
        ) from exc
    fsync_directory(store)
    log.info("snapshot published", extra={"version": version, "store": str(store)})
