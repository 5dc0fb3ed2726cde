"""What the service refuses from a DICOM header before searching: studies it cannot be asked about.

CheXtriev's 18 regions are defined on frontal chest radiographs. The service cannot recognise a
non-chest or non-human image from its pixels; it refuses only what the DICOM header itself declares
unsupported: a modality other than a radiograph (CR, DX), or a lateral, oblique or decubitus view.
A header that declares neither (PNG and JPEG have none) is searched as sent, with the boxes sent.
"""

from __future__ import annotations

from model.dicom_decoding import DicomInfo
from model.errors import ChextrievError

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
NON_FRONTAL_VIEWS = frozenset({"LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAO", "RAO", "LPO", "RPO",
                               "LATERAL", "LAT", "OBLIQUE"})


FRONTAL_VIEWS = ("PA", "AP")


def is_frontal_chest(modality: str, view_position: str, body_part: str) -> bool:
    """Whether an archive's description (QIDO-RS attributes) can be a frontal chest radiograph: CR or DX,
    no lateral or oblique view, and no body part other than the chest (undeclared ones are allowed)."""
    return (modality.strip().upper() in RADIOGRAPH_MODALITIES
            and view_position.strip().upper() not in NON_FRONTAL_VIEWS
            and body_part.strip().upper() in ("", "CHEST"))


class UnsupportedStudyError(ChextrievError):
    """The image's DICOM header declares a study the service does not search (not a frontal radiograph)."""


def check_searchable_study(dicom: DicomInfo | None) -> None:
    """Raise UnsupportedStudyError when the header names a non-radiograph modality or a non-frontal view."""
    if dicom is None:
        return
    modality = (dicom.modality or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise UnsupportedStudyError(
            f"the DICOM modality is {modality}; the service searches chest radiographs (CR or DX)")
    view = (dicom.view_position or "").strip().upper()
    if view in NON_FRONTAL_VIEWS:
        raise UnsupportedStudyError(
            f"the DICOM view position is {view}; the service searches frontal (PA or AP) chest radiographs")
