"""How a snapshot is laid out in Milvus: the collection of a version, its fields, its index types and
search parameters, the manifest kept in the collection's properties, the digests of its contents and
the filter expression of an exclusion."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable

import numpy as np

from index_store.errors import SnapshotInputError
from index_store.files import FileDigest
from index_store.manifest import CASE_IDS_FILE, GROUP_KEYS_FILE
from index_store.search import CaseRows, Exclusion

COLLECTION_PREFIX = "chextriev_v_"
STAGING_PREFIX = "chextriev_staging_"
MANIFEST_PROPERTY = "chextriev.manifest"
# The manifest's digest entries: the float32 little-endian vectors in row order, and the ids and group
# keys as the JSON lists a local snapshot writes (index_store.manifest's file names).
VECTORS_ENTRY = "vectors.f32"
REQUIRED_ENTRIES = (VECTORS_ENTRY, CASE_IDS_FILE)

ROW, CASE_ID, GROUP_KEY, VECTOR = "row", "case_id", "group_key", "vector"
MAX_STRING = 1024
NO_GROUP = ""

FACTORY_PREFIX = "milvus:"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
_DEFAULT_SEARCH = {"FLAT": "", "HNSW": "ef=128", "IVF_FLAT": "nprobe=32"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_]")


def collection_name(version: str) -> str:
    """The collection of `version`: Milvus's naming rules (letters, digits, `_`) plus a hash of the exact
    version, so that versions differing only in `.` or `-` never share a collection."""
    tag = hashlib.sha256(version.encode("utf-8")).hexdigest()[:10]
    return f"{COLLECTION_PREFIX}{_SAFE_NAME.sub('_', version)}_{tag}"


def staging_name(now: float) -> str:
    """A new staging collection's name, holding its creation time (Unix seconds) for `staging_age`."""
    return f"{STAGING_PREFIX}{int(now)}_{uuid.uuid4().hex[:12]}"


def staging_age(name: str, now: float) -> float | None:
    """Seconds since the staging collection `name` was created, or None if `name` is not one."""
    created, _, _ = name.removeprefix(STAGING_PREFIX).partition("_")
    return now - int(created) if name.startswith(STAGING_PREFIX) and created.isdigit() else None


def index_type(factory: str) -> str:
    """The Milvus index type of a factory string: FLAT, HNSW or IVF_FLAT, with or without `milvus:`."""
    name = factory.removeprefix(FACTORY_PREFIX).upper()
    if name not in INDEX_TYPES:
        raise SnapshotInputError(f"unknown Milvus index {factory!r}; expected one of {', '.join(INDEX_TYPES)}")
    return name


def build_parameters(kind: str, count: int) -> dict[str, int]:
    """Build parameters: HNSW M=32, efConstruction=200; IVF nlist = 4 sqrt(N) (at most N)."""
    if kind == "HNSW":
        return {"M": 32, "efConstruction": 200}
    if kind == "IVF_FLAT":
        return {"nlist": max(1, min(count, 65536, round(4 * math.sqrt(count))))}
    return {}


def default_search_parameters(kind: str) -> str:
    return _DEFAULT_SEARCH[kind]


def search_parameters(text: str, k: int) -> dict[str, int]:
    """`"ef=128"` or `"nprobe=32"` as Milvus search params; HNSW's ef is raised to k at least."""
    params: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if not value.strip().isdigit():
            raise SnapshotInputError(f"invalid Milvus search parameter {part!r}: use name=integer")
        params[key.strip()] = int(value)
    if "ef" in params:
        params["ef"] = max(params["ef"], k)
    return params


def exclusion_filter(exclusion: Exclusion) -> str:
    """A boolean expression keeping rows outside `exclusion` (empty: no filter)."""
    clauses = [f"{field} not in {_string_list(values)}"
               for field, values in ((CASE_ID, exclusion.case_ids), (GROUP_KEY, exclusion.group_keys)) if values]
    return " and ".join(clauses)


def id_filter(case_id: str) -> str:
    return f"{CASE_ID} == {json.dumps(case_id)}"


def row_range_filter(start: int, stop: int) -> str:
    return f"{ROW} >= {start} and {ROW} < {stop}"


def _string_list(values: Iterable[str]) -> str:
    """A list literal of Milvus's expression language (JSON string escapes), in a stable order."""
    return "[" + ", ".join(json.dumps(value) for value in sorted(values)) + "]"


class ContentDigests:
    """The digests of a snapshot's rows, fed in row order: vectors, case ids and group keys."""

    def __init__(self) -> None:
        self._vectors = hashlib.sha256()
        self._vector_bytes = 0
        self._case_ids: list[str] = []
        self._group_keys: list[str] = []

    def add(self, vectors: np.ndarray, case_ids: Iterable[str], group_keys: Iterable[str]) -> None:
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        self._vectors.update(data)
        self._vector_bytes += len(data)
        self._case_ids.extend(case_ids)
        self._group_keys.extend(group_keys)

    def case_rows(self, with_group_keys: bool) -> CaseRows:
        """The case ids (and group keys) fed so far, as the rows of a snapshot."""
        return CaseRows(tuple(self._case_ids), tuple(self._group_keys) if with_group_keys else None)

    def entries(self, with_group_keys: bool) -> dict[str, FileDigest]:
        """The manifest entries: vectors and case ids, and group keys when the snapshot has them."""
        found = {VECTORS_ENTRY: FileDigest(self._vectors.hexdigest(), self._vector_bytes),
                 CASE_IDS_FILE: _json_digest(self._case_ids)}
        if with_group_keys:
            found[GROUP_KEYS_FILE] = _json_digest(self._group_keys)
        return found


def _json_digest(values: list[str]) -> FileDigest:
    data = json.dumps(values).encode("utf-8")
    return FileDigest(hashlib.sha256(data).hexdigest(), len(data))
