"""A gallery from a DICOMweb archive (`chextriev gallery import`): find the frontal CR/DX chest
instances with QIDO-RS, fetch each with WADO-RS, decode it as an upload would be, place its 18
regions with the anatomy model, and write what the offline commands and the service need.

Output directory:
- `images/<case id>.png`: the decoded radiograph as a 16-bit grey PNG, so no DICOM header (and no
  patient identifier) is copied; the service's image root for thumbnails (CHEXTRIEV_IMAGE_ROOT);
- `import-log.jsonl`: one line per instance handled (imported, or skipped and why), each flushed to
  disk before the next fetch: a rerun after an interruption (the archive gone, the process killed)
  fetches only what the log lacks; a torn last line is ignored and redone;
- `manifest.csv`: the generic manifest (README "Datasets") of every imported case: image, case_id,
  patient_id (the archive's PatientID, for patient-level splits and same-patient exclusion; it stays
  in this file, never in the database), labels (from the findings CSV), regions (the 18 boxes), width,
  height, view; `chextriev features --manifest` reads it as it is. Written last, atomically.
The cases go into the service database with their UIDs, the patient as a salted hash, and only the
allow-listed metadata (service.public_fields). A case id is a hash of the SOP Instance UID, so it
names no UID and stays the same on every import.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.anatomy_model import AnatomyModel
from model.catalogue import REGION_NAMES
from model.errors import ChextrievError
from model.fileio import atomic_write_bytes
from model.imaging import ImageLimits, decode_image
from model.patient_keys import patient_hash
from service.db.repository import CaseRecord
from service.dicomweb import ArchiveInstance, DicomwebArchive
from service.public_fields import public_metadata
from service.study_checks import RADIOGRAPH_MODALITIES, check_searchable_study, is_frontal_chest

logger = logging.getLogger(__name__)

IMAGES_DIRNAME = "images"
LOG_NAME = "import-log.jsonl"
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("image", "case_id", "patient_id", "labels", "regions", "width", "height", "view")
CASE_ID_PREFIX = "pacs-"
# Columns of a findings CSV that may key a row, in the order an instance is looked up by.
FINDINGS_KEYS = ("sop_uid", "series_uid", "study_uid", "accession_number")
FINDINGS_COLUMN = "findings"
FINDINGS_SEPARATOR = "|"


class GalleryImportError(ChextrievError):
    """The import cannot go on as asked (a bad findings file, an unusable output directory)."""


@dataclass(frozen=True)
class ImportRequest:
    """What to import: studies holding one of `modalities`, dated within `date_range` (DICOM range syntax,
    "20240101-20241231"), at most `study_limit` of them; findings from the CSV `findings` if given."""

    out: Path
    modalities: tuple[str, ...] = tuple(sorted(RADIOGRAPH_MODALITIES))
    date_range: str | None = None
    study_limit: int | None = None
    findings: Path | None = None


@dataclass(frozen=True)
class ImportedCase:
    """One imported instance as the import log keeps it; the PatientID and accession number stay in the
    output directory (for the manifest and the findings), the database gets neither."""

    case_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession_number: str
    patient_id: str
    width: int
    height: int
    region_boxes: list[list[float]]
    metadata: dict[str, str]

    @property
    def image_path(self) -> str:
        return f"{IMAGES_DIRNAME}/{self.case_id}.png"


@dataclass
class ImportSummary:
    """What an import found and did."""

    studies: int = 0
    instances: int = 0
    imported: int = 0
    already_imported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    cases: list[ImportedCase] = field(default_factory=list)
    findings: dict[str, list[str]] = field(default_factory=dict)  # the findings CSV's table (read_findings)


Progress = Callable[[int, int], None]


def import_gallery(archive: DicomwebArchive, request: ImportRequest, anatomy: AnatomyModel, limits: ImageLimits,
                   progress: Progress | None = None) -> ImportSummary:
    """Import every frontal chest instance the request finds that the log lacks; then write the manifest.
    Raises the archive's errors (service.dicomweb) when it fails: what was imported is kept for a rerun."""
    findings = read_findings(request.findings) if request.findings is not None else {}
    (request.out / IMAGES_DIRNAME).mkdir(parents=True, exist_ok=True)
    log_path = request.out / LOG_NAME
    done = read_import_log(log_path)
    summary = ImportSummary(findings=findings)
    instances = list(_frontal_instances(archive, request, summary))
    summary.instances = len(instances)
    with open(log_path, "a", encoding="utf-8") as log:
        for position, instance in enumerate(instances, start=1):
            if instance.sop_uid in done:
                summary.already_imported += 1
            else:
                entry = _import_instance(archive, instance, request.out, anatomy, limits)
                _append(log, entry)
                done[instance.sop_uid] = entry
                if "case" in entry:
                    summary.imported += 1
                else:
                    summary.skipped[entry["skipped"]] = summary.skipped.get(entry["skipped"], 0) + 1
            if progress is not None:
                progress(position, len(instances))
    wanted = {instance.sop_uid for instance in instances}
    summary.cases = [ImportedCase(**entry["case"]) for sop_uid, entry in done.items()
                     if sop_uid in wanted and "case" in entry]
    write_manifest(request.out / MANIFEST_NAME, summary.cases, findings)
    logger.info("gallery imported", extra={"studies": summary.studies, "instances": summary.instances,
                                           "imported": summary.imported, "already_imported": summary.already_imported,
                                           "skipped": summary.skipped})
    return summary


def case_records(cases: Iterable[ImportedCase], findings: dict[str, list[str]], salt: str | None) -> list[CaseRecord]:
    """The cases as the service database stores them: UIDs, the patient as a salted hash (None without a
    salt), findings, boxes and the allow-listed metadata only."""
    return [CaseRecord(case_id=case.case_id,
                       patient_hash=patient_hash(case.patient_id, salt) if salt and case.patient_id else None,
                       study_uid=case.study_uid, series_uid=case.series_uid, sop_uid=case.sop_uid,
                       findings=case_findings(case, findings), region_boxes=case.region_boxes,
                       image_path=case.image_path, width=case.width, height=case.height,
                       metadata=public_metadata(case.metadata))
            for case in cases]


def read_findings(path: Path) -> dict[str, list[str]]:
    """A findings CSV as key -> findings: each row keyed by one of sop_uid, series_uid, study_uid or
    accession_number, its `findings` separated by '|'."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            keys = [key for key in FINDINGS_KEYS if key in columns]
            if FINDINGS_COLUMN not in columns or not keys:
                raise GalleryImportError(f"{path}: a findings CSV needs a '{FINDINGS_COLUMN}' column and one of "
                                         f"{', '.join(FINDINGS_KEYS)}; it has {', '.join(sorted(columns)) or 'none'}")
            table: dict[str, list[str]] = {}
            for row in reader:
                labels = [label.strip() for label in (row[FINDINGS_COLUMN] or "").split(FINDINGS_SEPARATOR)]
                for key in keys:
                    if row[key] and row[key].strip():
                        table[f"{key}:{row[key].strip()}"] = [label for label in labels if label]
    except OSError as error:
        raise GalleryImportError(f"{path}: cannot read the findings CSV ({error.strerror})") from None
    return table


def case_findings(case: ImportedCase, findings: dict[str, list[str]]) -> list[str]:
    """The case's findings from the table, by its most specific key present (instance, series, study,
    accession number); none when the table has no row for it."""
    values = {"sop_uid": case.sop_uid, "series_uid": case.series_uid, "study_uid": case.study_uid,
              "accession_number": case.accession_number}
    for key in FINDINGS_KEYS:
        if values[key] and f"{key}:{values[key]}" in findings:
            return findings[f"{key}:{values[key]}"]
    return []


def read_import_log(path: Path) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> its log entry; a torn last line (a crash while writing it) is left out."""
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("torn import log line ignored; its instance is imported again")
            continue
        entries[entry["sop_uid"]] = entry
    return entries


def write_manifest(path: Path, cases: list[ImportedCase], findings: dict[str, list[str]]) -> None:
    """The generic manifest of the imported cases, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({"image": case.image_path, "case_id": case.case_id, "patient_id": case.patient_id,
                         "labels": FINDINGS_SEPARATOR.join(case_findings(case, findings)),
                         "regions": json.dumps(dict(zip(REGION_NAMES, case.region_boxes, strict=True))),
                         "width": case.width, "height": case.height, "view": case.metadata.get("view", "")})
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def case_id_of(sop_uid: str) -> str:
    """The case id of an instance: a hash of its SOP Instance UID (the UID itself is never shown)."""
    return CASE_ID_PREFIX + hashlib.sha256(sop_uid.encode()).hexdigest()[:24]


def _frontal_instances(archive: DicomwebArchive, request: ImportRequest,
                       summary: ImportSummary) -> Iterator[ArchiveInstance]:
    """The frontal chest instances of the studies found, study by study."""
    studies: dict[str, None] = {}
    for modality in request.modalities:
        for study_uid in archive.find_studies(modality=modality, date_range=request.date_range,
                                              limit=request.study_limit):
            studies.setdefault(study_uid)
    chosen = list(studies)[:request.study_limit]
    summary.studies = len(chosen)
    for study_uid in chosen:
        for instance in archive.instances(study_uid):
            if (instance.modality in request.modalities
                    and is_frontal_chest(instance.modality, instance.view_position, instance.body_part)):
                yield instance


def _import_instance(archive: DicomwebArchive, instance: ArchiveInstance, out: Path, anatomy: AnatomyModel,
                     limits: ImageLimits) -> dict[str, Any]:
    """Fetch, decode, check and place the regions of one instance; its log entry (imported or skipped)."""
    data = archive.fetch(instance.study_uid, instance.series_uid, instance.sop_uid)
    try:
        image = decode_image(data, limits)
        check_searchable_study(image.dicom)
        prediction = anatomy.predict(image.pixels)
    except ChextrievError as error:
        logger.warning("archive instance skipped", extra={"problem": type(error).__name__})
        return {"sop_uid": instance.sop_uid, "skipped": type(error).__name__}
    case = ImportedCase(
        case_id=case_id_of(instance.sop_uid), study_uid=instance.study_uid, series_uid=instance.series_uid,
        sop_uid=instance.sop_uid, accession_number=instance.accession_number, patient_id=instance.patient_id,
        width=image.width, height=image.height, region_boxes=prediction.regions.tolist(),
        metadata=_metadata(instance))
    atomic_write_bytes(out / case.image_path, _png16(image.pixels))
    return {"sop_uid": instance.sop_uid, "case": asdict(case)}


def _metadata(instance: ArchiveInstance) -> dict[str, str]:
    values = {"view": instance.view_position, "modality": instance.modality, "body_part": instance.body_part,
              "sex": instance.patient_sex, "age": instance.patient_age}
    return {key: value for key, value in values.items() if value}


def _png16(pixels: np.ndarray) -> bytes:
    """Float grey pixels in [0, 1] as a 16-bit grey PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _append(log: io.TextIOBase, entry: dict[str, Any]) -> None:
    log.write(json.dumps(entry) + "\n")
    log.flush()
    os.fsync(log.fileno())
