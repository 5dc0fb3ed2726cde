"""Durable file writing (every file hashed while written, flushed and fsynced; atomic replacement) and
reading the rows of a .npy file at their offsets."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from index_store.errors import SnapshotCorruptError, SnapshotFileChangedError

_READ_CHUNK = 8 << 20
_NPY_DTYPE = np.dtype("<f4")
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


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


def write_npy_blocks(path: Path, shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> FileDigest:
    """Write the float32 C-order .npy file of `shape` whose data are `blocks` in order (each converted to
    float32 C order), without holding the whole array; returns its digest. The sizes must add up."""
    expected = _NPY_DTYPE.itemsize * math.prod(shape)

    def write(writer: _HashingWriter) -> None:
        np.lib.format.write_array_header_1_0(writer, {"descr": _NPY_DTYPE.str, "fortran_order": False,
                                                      "shape": shape})
        written = 0
        for block in blocks:
            data = np.ascontiguousarray(block, dtype=_NPY_DTYPE)
            written += writer.write(data.data.cast("B"))
        if written != expected:
            raise ValueError(f"{path.name}: {written} bytes of data written, {expected} expected for {shape}")

    return write_new_file(path, write)


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


class NpyRows:
    """The rows of a float32 C-order .npy file of known shape, read on demand at their offsets.

    Nothing is memory-mapped and only the rows asked for are read: a file truncated while it is open
    makes the read raise SnapshotFileChangedError naming it, where a memory map would kill the process
    with SIGBUS. A malformed file, or one of another dtype, shape or size, raises SnapshotCorruptError.
    Reads are positional (no shared file offset), so threads may read at the same time.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path = path
        self.shape = shape
        self._row_bytes = _NPY_DTYPE.itemsize * math.prod(shape[1:])
        self._file = open(path, "rb", buffering=0)
        try:
            self._data_offset = self._check_header()
        except BaseException:
            self._file.close()
            raise

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new array of shape (stop - start, *shape[1:])."""
        block = np.empty((stop - start, *self.shape[1:]), dtype=_NPY_DTYPE)
        self._read_exactly(memoryview(block).cast("B"), self._data_offset + start * self._row_bytes)
        return block

    def sub_rows(self, row: int, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Entries [start, stop) of row `row` of a file with 3 axes or more: (stop - start, *shape[2:]),
        read into the C-contiguous float32 `out` of that shape when given."""
        shape = (stop - start, *self.shape[2:])
        block = np.empty(shape, dtype=_NPY_DTYPE) if out is None else out
        if block.shape != shape or block.dtype != _NPY_DTYPE or not block.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
        entry_bytes = self._row_bytes // self.shape[1]
        self._read_exactly(memoryview(block).cast("B"),
                           self._data_offset + row * self._row_bytes + start * entry_bytes)
        return block

    def close(self) -> None:
        """Close the file; later reads raise ValueError."""
        self._file.close()

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_header(self) -> int:
        """Check the header (float32, C order, `shape`) and the file's size; returns where the data begins."""
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"format version {version} is not supported")
            shape, fortran_order, dtype = read_header(self._file)
        except ValueError as exc:
            raise self._corrupt(f"not a readable .npy file ({exc})") from exc
        if dtype != _NPY_DTYPE or fortran_order or shape != self.shape:
            order = " in Fortran order" if fortran_order else ""
            raise self._corrupt(f"holds {dtype} {shape}{order}, expected float32 {self.shape}")
        data_offset = self._file.tell()
        expected_size = data_offset + self._row_bytes * self.shape[0]
        if self._size() != expected_size:
            raise self._corrupt(f"{self._size()} bytes, {expected_size} expected for float32 {self.shape}")
        return data_offset

    def _read_exactly(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            count = os.preadv(self._file.fileno(), [buffer[done:]], offset + done)
            if count == 0:
                raise SnapshotFileChangedError(
                    f"{self.path.name} in {self.path.parent} now ends at {self._size()} bytes, before the rows "
                    "asked for: it was truncated after it was opened",
                    self.path,
                )
            done += count

    def _size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def _corrupt(self, why: str) -> SnapshotCorruptError:
        return SnapshotCorruptError(f"{self.path.name} in {self.path.parent}: {why}", self.path)
