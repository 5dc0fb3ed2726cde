"""Search by reference: the query radiograph named by its DICOM UIDs and fetched from the configured
DICOMweb archive (service.dicomweb), instead of uploaded.

Given the SOP Instance UID (with its series), that instance is fetched; given only the study (or a
series of it), the archive's frontal CR/DX chest instance is chosen, a declared PA view before AP
and before an undeclared view. The bytes then take the upload's path: decoding, the DICOM header's
study checks, the regions.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.dicomweb import ArchiveInstance, ArchiveNotFoundError, DicomwebArchive
from service.problems import Problem, field_problem
from service.study_checks import FRONTAL_VIEWS, is_frontal_chest


@dataclass(frozen=True)
class StudyReference:
    """The UIDs a client names its query by: a study, optionally a series of it and an instance of that."""

    study_uid: str
    series_uid: str | None = None
    sop_uid: str | None = None


def fetch_reference(archive: DicomwebArchive | None, reference: StudyReference) -> tuple[bytes, ArchiveInstance]:
    """The referenced (or chosen) instance's DICOM bytes and its description."""
    if archive is None:
        raise Problem(422, "archive-not-configured", "searching by study UID needs a DICOMweb archive "
                      "(CHEXTRIEV_DICOMWEB_URL), and none is configured",
                      [field_problem("study_uid", "no DICOMweb archive is configured")])
    instances = archive.instances(reference.study_uid, reference.series_uid)
    chosen = _named_instance(instances, reference) if reference.sop_uid else _frontal_chest(instances, reference)
    return archive.fetch(chosen.study_uid, chosen.series_uid, chosen.sop_uid), chosen


def _named_instance(instances: list[ArchiveInstance], reference: StudyReference) -> ArchiveInstance:
    for instance in instances:
        if instance.sop_uid == reference.sop_uid:
            return instance
    raise ArchiveNotFoundError(f"series {reference.series_uid} of study {reference.study_uid} holds no "
                               f"instance {reference.sop_uid}")


def _frontal_chest(instances: list[ArchiveInstance], reference: StudyReference) -> ArchiveInstance:
    candidates = [instance for instance in instances
                  if is_frontal_chest(instance.modality, instance.view_position, instance.body_part)]
    if not candidates:
        found = sorted({instance.describe() for instance in instances})
        detail = (f"study {reference.study_uid} holds no frontal CR/DX chest instance; it holds "
                  f"{len(instances)} instance(s) of (modality view body part): {'; '.join(found)}")
        raise Problem(422, "no-frontal-chest-instance", detail,
                      [field_problem("study_uid", "no frontal CR/DX chest instance")])
    order = {view: rank for rank, view in enumerate(FRONTAL_VIEWS)}
    return min(candidates, key=lambda instance: order.get(instance.view_position, len(order)))
