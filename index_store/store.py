"""The index store: a directory of published snapshot versions; atomic publishing, listing and opening.

A publisher builds its snapshot in `snapshot/` inside a staging directory `.publishing-*` of the store,
holding an exclusive flock on the staging directory's lock file for the whole publish, then renames
`snapshot/` to the version's name. A staging directory whose lock is free belongs to a publisher that
died (e.g. killed): the next publish, or `remove_abandoned_staging`, removes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from index_store.errors import SnapshotCorruptError, SnapshotError, SnapshotExistsError, SnapshotNotFoundError
from index_store.faiss_index import EXACT_FACTORY
from index_store.files import copy_new_file, fsync_directory, write_new_file
from index_store.gallery import GalleryData
from index_store.manifest import MANIFEST_FILE, Manifest, check_version_name, parse_manifest, utc_timestamp
from index_store.snapshot import Snapshot, open_snapshot, write_snapshot

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".publishing-"
_STAGING_LOCK = "publisher.lock"
_STAGED_SNAPSHOT = "snapshot"


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
    with publishing(store) as staged:
        manifest = write_snapshot(
            staged,
            gallery,
            model_fingerprint=model_fingerprint,
            factory=factory,
            search_parameters=search_parameters,
            version=version,
        )
        rename_into_store(staged, store, manifest.version)
    return manifest


def publish_directory(source: Path, store: Path, *, version: str | None = None) -> Manifest:
    """Verify the snapshot in `source` (full load and canary), copy it into `store` and publish it atomically.

    With `version`, the copy is published under that version (created now, the files unchanged): the
    same gallery again, e.g. to rehearse activations and rollbacks."""
    snapshot = open_snapshot(source)
    manifest = snapshot.manifest
    snapshot.close()
    published = manifest if version is None else replace(
        manifest, version=check_version_name(version), created=utc_timestamp(datetime.now(UTC)))
    _refuse_existing(store, published.version)
    with publishing(store) as staged:
        for name, expected in manifest.files.items():
            if copy_new_file(source / name, staged / name) != expected:
                raise SnapshotCorruptError(
                    f"{name} in {source} changed while it was being published", source / name
                )
        if version is None:
            copy_new_file(source / MANIFEST_FILE, staged / MANIFEST_FILE)
        else:
            write_new_file(staged / MANIFEST_FILE, lambda f: f.write(published.to_json()))
        if parse_manifest((staged / MANIFEST_FILE).read_bytes(), staged / MANIFEST_FILE) != published:
            raise SnapshotCorruptError(
                f"{MANIFEST_FILE} in {source} changed while it was being published", source / MANIFEST_FILE
            )
        rename_into_store(staged, store, published.version)
    return published


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


def remove_abandoned_staging(store: Path) -> list[Path]:
    """Remove the staging directories of publishers that died (their lock is free); returns those removed.

    The staging directory of a live publisher (its lock held, by any process) is left alone.
    """
    if not store.is_dir():
        raise SnapshotNotFoundError(f"index store {store} does not exist", store)
    removed = []
    for path in sorted(store.iterdir()):
        if path.name.startswith(_STAGING_PREFIX) and path.is_dir() and _remove_if_abandoned(path):
            log.warning("abandoned staging directory removed", extra={"path": str(path)})
            removed.append(path)
    return removed


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
def publishing(store: Path) -> Iterator[Path]:
    """An empty directory to build a snapshot in, inside a new staging directory locked for the whole publish.

    Abandoned staging directories are removed first; this one is removed afterwards, its snapshot
    renamed into place unless publishing failed.
    """
    store.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(store)
    staging, lock = _new_locked_staging(store)
    try:
        staged = staging / _STAGED_SNAPSHOT
        staged.mkdir()
        os.chmod(staged, 0o755)
        yield staged
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def _new_locked_staging(store: Path) -> tuple[Path, int]:
    """A new staging directory in `store` and the descriptor holding its lock.

    A concurrent clean may take the directory in the instant before this lock is held (it found no
    holder); it removes that one, and another is made.
    """
    while True:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=store))
        lock = _try_lock(staging)
        if lock is not None:
            if os.fstat(lock).st_nlink:  # still linked: no clean removed it before we locked it
                return staging, lock
            os.close(lock)


def _remove_if_abandoned(staging: Path) -> bool:
    """Remove `staging` if no process holds its lock; True if it is gone now."""
    lock = _try_lock(staging)
    if lock is None:
        return False
    try:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(lock)
    return not staging.exists()


def _try_lock(staging: Path) -> int | None:
    """A descriptor holding the exclusive lock on `staging`'s lock file (created if missing), or None if
    another process holds it or the directory is gone."""
    try:
        lock = os.open(staging / _STAGING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None
    except BaseException:
        os.close(lock)
        raise
    return lock


def rename_into_store(staged: Path, store: Path, version: str) -> None:
    """Rename the complete snapshot in `staged` to `store/version`, never replacing an existing version."""
    target = store / version
    _refuse_existing(store, version)
    fsync_directory(staged)
    try:
        os.rename(staged, target)  # fails on a non-empty target
    except OSError as exc:
        raise SnapshotExistsError(
            f"snapshot version {version!r} is already published in {store}", target
        ) from exc
    fsync_directory(store)
    log.info("snapshot published", extra={"version": version, "store": str(store)})
