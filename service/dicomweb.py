"""The DICOMweb archive (a PACS such as Orthanc) the service reads: QIDO-RS to find studies and their
instances, WADO-RS to fetch one instance as DICOM Part 10 bytes (dicomweb-client over requests).

Every request is bounded by `CHEXTRIEV_DICOMWEB_TIMEOUT_S` (to connect and for each read) and never
retried, so a client waits at most that long; failures become typed errors the HTTP layer answers:
404 for an unknown UID, 503 for an archive that cannot be reached or refuses the service, 504 for
one that does not answer in time. Credentials (basic or bearer) are read from files named by the
settings, never taken from a request; neither they nor patient identifiers are logged.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmwrite
from pydicom.errors import InvalidDicomError

from model.errors import ChextrievError
from service.settings import Settings

logger = logging.getLogger(__name__)
# dicomweb-client logs every request with its UIDs at INFO; the service logs its own lines without them.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

# A DICOM UID: dot-separated numbers, at most 64 characters (PS3.5 9.1).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
UID_MAX_LENGTH = 64
# The attributes asked of every instance (QIDO-RS includefield), by keyword.
INSTANCE_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "ViewPosition",
                   "BodyPartExamined", "AccessionNumber", "PatientID", "PatientSex", "PatientAge", "StudyDate")
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
         "Modality": "00080060", "ViewPosition": "00185101", "BodyPartExamined": "00180015",
         "AccessionNumber": "00080050", "PatientID": "00100020", "PatientSex": "00100040",
         "PatientAge": "00101010", "StudyDate": "00080020"}


class ArchiveError(ChextrievError):
    """The DICOMweb archive could not answer what was asked."""


class ArchiveNotFoundError(ArchiveError):
    """The archive holds no study, series or instance with the UIDs given (HTTP 404)."""


class ArchiveUnavailableError(ArchiveError):
    """The archive cannot be reached, failed, or refused the service's credentials (HTTP 503)."""


class ArchiveTimeoutError(ArchiveError):
    """The archive did not answer within the configured timeout (HTTP 504)."""


@dataclass(frozen=True)
class ArchiveInstance:
    """One instance as the archive describes it (QIDO-RS); empty strings for attributes it lacks."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""
    view_position: str = ""
    body_part: str = ""
    accession_number: str = ""
    patient_id: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    study_date: str = ""

    def describe(self) -> str:
        """What it is, without identifiers: 'CR PA CHEST', '-' for what is missing."""
        return " ".join(value or "-" for value in (self.modality, self.view_position, self.body_part))


class DicomwebArchive:
    """A DICOMweb server at `url` (e.g. http://127.0.0.1:8042/dicom-web), each request bounded by
    `timeout_s`, with basic (`username`, `password`) or bearer (`token`) credentials or none."""

    def __init__(self, url: str, timeout_s: float, *, username: str | None = None, password: str | None = None,
                 token: str | None = None):
        session = requests.Session()
        if username is not None:
            session.auth = (username, password or "")
        if token is not None:
            session.headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        try:
            self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        except ValueError:
            raise ArchiveError(f"{url!r} is not a DICOMweb URL such as http://host:8042/dicom-web") from None
        self._client.set_http_retry_params(retry=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DicomwebArchive | None:
        """The configured archive (credentials read from their files now), or None when none is configured."""
        if settings.dicomweb_url is None:
            return None
        return cls(settings.dicomweb_url, settings.dicomweb_timeout_s, username=settings.dicomweb_username,
                   password=_secret(settings.dicomweb_password_file, "CHEXTRIEV_DICOMWEB_PASSWORD_FILE"),
                   token=_secret(settings.dicomweb_token_file, "CHEXTRIEV_DICOMWEB_TOKEN_FILE"))

    def find_studies(self, *, modality: str | None = None, date_range: str | None = None, limit: int | None = None,
                     offset: int = 0) -> list[str]:
        """Study Instance UIDs, in the archive's order, of studies holding `modality` and dated within
        `date_range` (DICOM range syntax: "20240101-20241231", "20240101-", "-20241231")."""
        filters = {key: value for key, value in (("ModalitiesInStudy", modality), ("StudyDate", date_range))
                   if value}
        with self._answering("study search"):
            found = self._client.search_for_studies(search_filters=filters, fields=["StudyInstanceUID"],
                                                    limit=limit, offset=offset or None)
        return [uid for uid in (_value(item, "StudyInstanceUID") for item in found) if uid]

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[ArchiveInstance]:
        """The instances of a study (of one of its series), described; ArchiveNotFoundError when it has none."""
        with self._answering("instance search"):
            found = self._client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                      fields=list(INSTANCE_FIELDS))
        instances = [_instance(item, study_uid) for item in found]
        if not instances:
            what = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
            raise ArchiveNotFoundError(f"the archive holds no {what}")
        return instances

    def fetch(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance as DICOM Part 10 bytes (WADO-RS), for the same decoding as an upload of them."""
        with self._answering("instance retrieval"):
            try:
                dataset = self._client.retrieve_instance(study_uid, series_uid, sop_uid)
            except InvalidDicomError:
                raise ArchiveUnavailableError("the DICOMweb archive sent an instance that is not "
                                              "DICOM Part 10") from None
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()

    @contextmanager
    def _answering(self, action: str) -> Iterator[None]:
        """Turn what requests raises into the archive's typed errors (no URL with UIDs in the log)."""
        try:
            yield
        except requests.Timeout:
            logger.warning("archive timed out", extra={"action": action})
            raise ArchiveTimeoutError(f"the DICOMweb archive did not answer the {action} in time") from None
        except requests.ConnectionError:
            logger.warning("archive unreachable", extra={"action": action})
            raise ArchiveUnavailableError(f"the DICOMweb archive cannot be reached ({action})") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 404:
                raise ArchiveNotFoundError(f"the archive holds nothing with these UIDs ({action})") from None
            logger.warning("archive refused a request", extra={"action": action, "status": status})
            raise ArchiveUnavailableError(f"the DICOMweb archive answered {status} to the {action}") from None


def _secret(path: str | None, variable: str) -> str | None:
    """The first line of the secret file at `path` (None when not configured)."""
    if path is None:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as error:
        raise ArchiveUnavailableError(f"{variable}: cannot read {path} ({error.strerror})") from None
    if not value:
        raise ArchiveUnavailableError(f"{variable}: the file {path} is empty")
    return value


def _value(item: dict[str, Any], keyword: str) -> str:
    """The first value of a DICOM JSON attribute as text ('' when absent); person names as their alphabetic form."""
    values: Sequence[Any] = item.get(_TAGS[keyword], {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    return str(first.get("Alphabetic", "") if isinstance(first, dict) else first).strip()


def _instance(item: dict[str, Any], study_uid: str) -> ArchiveInstance:
    read = {keyword: _value(item, keyword) for keyword in INSTANCE_FIELDS}
    return ArchiveInstance(
        study_uid=read["StudyInstanceUID"] or study_uid, series_uid=read["SeriesInstanceUID"],
        sop_uid=read["SOPInstanceUID"], modality=read["Modality"].upper(), view_position=read["ViewPosition"].upper(),
        body_part=read["BodyPartExamined"].upper(), accession_number=read["AccessionNumber"],
        patient_id=read["PatientID"], patient_sex=read["PatientSex"], patient_age=read["PatientAge"],
        study_date=read["StudyDate"])
