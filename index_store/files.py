"""Durable file writing: every file is hashed while written, flushed and fsynced; atomic replacement."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from index_store.errors import SnapshotCorruptError

_READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 (hex) and size in bytes of one file."""

    sha256: str
    bytes: int


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self._count = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._count += view.nbytes
        self._raw.write(view)
        return view.nbytes

    def digest(self) -> FileDigest:
        return FileDigest(self._hash.hexdigest(), self._count)


def _fill(raw: BinaryIO, write: Callable[[_HashingWriter], object]) -> FileDigest:
    writer = _HashingWriter(raw)
    write(writer)
    raw.flush()
    os.fsync(raw.fileno())
    return writer.digest()


def write_new_file(path: Path, write: Callable[[_HashingWriter], object]) -> FileDigest:
    """Create `path` (must not exist), let `write` fill it, flush and fsync it; returns its digest."""
    with open(path, "xb") as raw:
        return _fill(raw, write)


def copy_new_file(source: Path, target: Path) -> FileDigest:
    """Copy `source` to the new file `target` durably; returns the digest of the bytes written."""

    def copy(writer: _HashingWriter) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(_READ_CHUNK):
                writer.write(chunk)

    return write_new_file(target, copy)


def file_digest(path: Path) -> FileDigest:
    """Digest of an existing file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        while chunk := src.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(digest.hexdigest(), size)


def verify_digest(path: Path, expected: FileDigest) -> None:
    """Raise SnapshotCorruptError naming `path` if it is missing or its size or SHA-256 differs from `expected`."""
    try:
        actual = file_digest(path)
    except FileNotFoundError as exc:
        raise SnapshotCorruptError(f"{path.name} is missing from {path.parent}", path) from exc
    if actual.bytes != expected.bytes:
        raise SnapshotCorruptError(
            f"{path.name} in {path.parent}: {actual.bytes} bytes, the manifest says {expected.bytes} "
            "(truncated or extended)",
            path,
        )
    if actual.sha256 != expected.sha256:
        raise SnapshotCorruptError(f"{path.name} in {path.parent}: SHA-256 does not match the manifest", path)


def fsync_directory(path: Path) -> None:
    """Make the directory entries of `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with open(fd, "wb") as raw:
            _fill(raw, lambda writer: writer.write(data))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
