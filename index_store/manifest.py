"""The snapshot manifest (`manifest.json`): what a snapshot holds and the SHA-256 of each of its files."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from index_store.errors import SnapshotCorruptError, SnapshotIncompatibleError, SnapshotInputError
from index_store.files import FileDigest

# Format 2 added `region_count` (per-region vectors); a format-1 manifest reads as one without them.
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
METRIC = "inner_product"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
CASE_IDS_FILE = "case_ids.json"
GROUP_KEYS_FILE = "group_keys.json"
OCCLUSION_FILE = "occlusion.npy"
REGION_FILE = "region_embeddings.npy"
CANARY_FILE = "canary.npy"
REQUIRED_FILES = (INDEX_FILE, CASE_IDS_FILE, CANARY_FILE)

VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` records about one snapshot."""

    version: str
    created: str
    model_fingerprint: str
    dimension: int
    count: int
    factory: str
    search_parameters: str
    occlusion_regions: int | None
    canary_rows: tuple[int, ...]
    files: dict[str, FileDigest] = field(default_factory=dict)
    region_count: int | None = None  # the regions of `region_embeddings.npy` (region-major (R, N, D)), if any
    metric: str = METRIC
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """The manifest as UTF-8 JSON, keys sorted, ending in a newline."""
        payload = asdict(self)
        payload["canary_rows"] = list(self.canary_rows)
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def summary(self) -> dict[str, Any]:
        """The manifest without per-file digests, for listings."""
        payload = asdict(self)
        del payload["files"], payload["canary_rows"]
        return payload


def check_version_name(version: str) -> str:
    """Return `version` if it is a safe directory name (letters, digits, `._-`, not starting with `.`)."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise SnapshotInputError(
            f"invalid snapshot version {version!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return version


def new_version_name(now: datetime) -> str:
    """A default version name from a UTC time, e.g. `20250102T030405.123456Z`."""
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def utc_timestamp(now: datetime) -> str:
    """ISO 8601 UTC time with a `Z` suffix."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "version": str,
    "created": str,
    "model_fingerprint": str,
    "dimension": int,
    "metric": str,
    "count": int,
    "factory": str,
    "search_parameters": str,
    "occlusion_regions": (int, type(None)),
    "canary_rows": list,
    "files": dict,
}
_OPTIONAL_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {"region_count": (int, type(None))}


def parse_manifest(data: bytes, path: Path, required_files: tuple[str, ...] = REQUIRED_FILES) -> Manifest:
    """Parse and schema-check manifest bytes read from `path`; raises SnapshotCorrupt/IncompatibleError.

    `required_files` are the entries a snapshot of this back end must list (group keys and occlusions
    are optional)."""

    def corrupt(why: str) -> SnapshotCorruptError:
        return SnapshotCorruptError(f"{path.name} in {path.parent}: {why}", path)

    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise corrupt("not a JSON object")
    format_version = raw.get("format_version")
    if type(format_version) is int and format_version > FORMAT_VERSION:
        raise SnapshotIncompatibleError(
            f"{path.name} in {path.parent}: format version {format_version} is newer than the "
            f"supported {FORMAT_VERSION}",
            path,
        )
    missing = sorted(set(_FIELD_TYPES) - set(raw))
    unknown = sorted(set(raw) - set(_FIELD_TYPES) - set(_OPTIONAL_FIELD_TYPES))
    if missing or unknown:
        raise corrupt(f"missing fields {missing}, unknown fields {unknown}")
    for name, expected in {**_FIELD_TYPES, **_OPTIONAL_FIELD_TYPES}.items():
        value = raw.get(name)
        if name in raw and (not isinstance(value, expected) or isinstance(value, bool)):
            raise corrupt(f"field {name!r} has the wrong type ({type(value).__name__})")
    if format_version not in SUPPORTED_FORMATS:
        raise corrupt(f"format version {format_version} is not one of {SUPPORTED_FORMATS}")
    if raw["metric"] != METRIC:
        raise SnapshotIncompatibleError(
            f"{path.name} in {path.parent}: metric {raw['metric']!r} is not {METRIC!r}", path
        )
    if not VERSION_PATTERN.fullmatch(raw["version"]):
        raise corrupt(f"invalid version {raw['version']!r}")
    if raw["dimension"] < 1 or raw["count"] < 1:
        raise corrupt(f"dimension {raw['dimension']} and count {raw['count']} must be positive")
    regions = raw["occlusion_regions"]
    region_count = raw.get("region_count")
    for name, value in (("occlusion_regions", regions), ("region_count", region_count)):
        if value is not None and value < 1:
            raise corrupt(f"{name} {value} must be positive or null")
    rows = raw["canary_rows"]
    if not rows or not all(type(r) is int and 0 <= r < raw["count"] for r in rows):
        raise corrupt("canary_rows must be a non-empty list of row numbers below count")
    files = {name: _parse_digest(name, entry, corrupt) for name, entry in raw["files"].items()}
    optional = {OCCLUSION_FILE: regions, REGION_FILE: region_count}
    expected_files = set(required_files) | {name for name, count in optional.items() if count is not None}
    known_files = expected_files | {GROUP_KEYS_FILE}
    if not expected_files <= set(files) <= known_files:
        raise corrupt(
            f"lists files {sorted(files)}; expected {sorted(expected_files)} (+ optional group keys)"
        )
    return Manifest(
        version=raw["version"],
        created=raw["created"],
        model_fingerprint=raw["model_fingerprint"],
        dimension=raw["dimension"],
        count=raw["count"],
        factory=raw["factory"],
        search_parameters=raw["search_parameters"],
        occlusion_regions=regions,
        canary_rows=tuple(rows),
        files=files,
        region_count=region_count,
        metric=raw["metric"],
        format_version=format_version,
    )


def _parse_digest(name: str, entry: Any, corrupt) -> FileDigest:
    if (
        not isinstance(entry, dict)
        or set(entry) != {"sha256", "bytes"}
        or not isinstance(entry["sha256"], str)
        or not _SHA256_PATTERN.fullmatch(entry["sha256"])
        or type(entry["bytes"]) is not int
        or entry["bytes"] < 0
    ):
        raise corrupt(f"files entry {name!r} must be {{'sha256': 64 hex digits, 'bytes': size}}")
    return FileDigest(entry["sha256"], entry["bytes"])
