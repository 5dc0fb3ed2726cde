"""Typed errors of the index store; each message names the snapshot file (when one is at fault) and why."""

from __future__ import annotations

from pathlib import Path


class SnapshotError(Exception):
    """Base class of every error index_store raises; `path` is the file or directory at fault, if any."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class SnapshotCorruptError(SnapshotError):
    """A snapshot's files are damaged or disagree with each other or with their manifest."""


class SnapshotFileChangedError(SnapshotCorruptError):
    """A file of an open, verified snapshot changed on disk afterwards (e.g. truncated): it can no longer be read."""


class SnapshotIncompatibleError(SnapshotError):
    """A sound snapshot that this caller cannot use: other model fingerprint, dimension or format."""


class SnapshotNotFoundError(SnapshotError):
    """No such snapshot version, store, case, or no snapshot is active yet."""


class SnapshotExistsError(SnapshotError):
    """A snapshot of this version is already published; published versions are never overwritten."""


class SnapshotInputError(SnapshotError, ValueError):
    """Data given to build or search a snapshot is invalid (shapes, non-finite or unnormalised vectors, ...)."""


class RegionSearchUnavailableError(SnapshotError):
    """A region-level search was asked of a snapshot published without per-region vectors."""


class IndexUnavailableError(SnapshotError):
    """The index back end (a Milvus server) cannot be reached or refused a request."""
