"""Opaque patient keys: salted HMAC-SHA256 of a patient group, so no patient id is ever stored.

A group is `patient:<id>` or, for an image without a patient id, `image:<case id>` (its own group).
The index store's group keys (gallery export) and the service database's patient hashes are both made
here, so a hash computed from a query's patient id matches the index's key for that patient.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from model.errors import ChextrievError

MIN_SALT_LENGTH = 16


class PatientKeyError(ChextrievError, ValueError):
    """A patient key cannot be made: the salt is too short to keep keys opaque, or the patient id is empty."""


def patient_group(patient_id: str | None, case_id: str) -> str:
    """The exclusion group of an image: its patient, or the image alone when no patient id is known."""
    return f"image:{case_id}" if patient_id in (None, "") else f"patient:{patient_id}"


def patient_group_keys(groups: Sequence[str], salt: str) -> list[str]:
    """Keyed hashes (hex HMAC-SHA256 with `salt`) of patient groups."""
    if len(salt) < MIN_SALT_LENGTH:
        raise PatientKeyError(f"the patient salt must have at least {MIN_SALT_LENGTH} characters; "
                              "use a long random secret")  # never its length: the message may reach a client
    return [hmac.new(salt.encode(), group.encode(), hashlib.sha256).hexdigest() for group in groups]


def patient_hash(patient_id: str, salt: str) -> str:
    """The key of a known patient: equal to the index group key of every image of that patient."""
    if patient_id == "":
        raise PatientKeyError("the patient id is empty; a case without one has no patient hash")
    return patient_group_keys([patient_group(patient_id, "")], salt)[0]
