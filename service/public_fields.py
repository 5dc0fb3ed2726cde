"""What a client may see of a gallery case's metadata: an explicit allow-list.

Gallery metadata comes from whatever built the gallery (a manifest, a DICOM header) and may hold
dates, institution or physician names; responses carry only these keys, whatever was stored. DICOM
UIDs are kept in the database's own columns and are never shown either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator

# Acquisition and provenance facts a clinician compares cases by; nothing that names a person, a
# place or a date.
PUBLIC_METADATA_KEYS = frozenset({"view", "sex", "age", "modality", "body_part", "license", "source"})


def public_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The allow-listed entries of `metadata`."""
    return {key: value for key, value in metadata.items() if key in PUBLIC_METADATA_KEYS}


PublicMetadata = Annotated[dict[str, Any], AfterValidator(public_metadata)]
