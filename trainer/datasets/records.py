"""A dataset as the trainer sees it: one record per image, with its split, labels and anatomy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.datasets.anatomy_sources import AnatomySource

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Dataset.regions_source values: what placed the 18 regions of every record.
REGION_SOURCES: tuple[str, ...] = ("imagenome", "boxes", "lung_boxes", "masks", "atlas", "mixed")


def patient_key(patient_id: str | None, case_id: str) -> str:
    """What groups images by patient: the patient id, or the case id when the patient is unknown
    (an image without a patient is its own patient)."""
    return patient_id if patient_id is not None else f"image:{case_id}"


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id, file, patient (None when unknown: then it is its own patient), split,
    positive label names, where its region boxes come from, and non-identifying extras."""

    case_id: str
    image_path: Path
    patient_id: str | None
    split: str
    labels: tuple[str, ...]
    anatomy: AnatomySource
    metadata: dict = field(default_factory=dict)

    @property
    def patient_key(self) -> str:
        """The patient id, or a key unique to this image when the patient is unknown."""
        return patient_key(self.patient_id, self.case_id)


@dataclass(frozen=True)
class Dataset:
    """Records with a fixed label vocabulary.

    ``regions_source`` says what placed the regions (see REGION_SOURCES); ``atlas_origin`` says
    where an atlas template was learned, when one was used; ``excluded`` counts the images left
    out, by reason.
    """

    name: str
    label_names: tuple[str, ...]
    records: list[ImageRecord]
    regions_source: str
    excluded: dict[str, int] = field(default_factory=dict)
    atlas_origin: str | None = None

    def __post_init__(self) -> None:
        if self.regions_source not in REGION_SOURCES:
            raise ValueError(f"regions_source must be one of {REGION_SOURCES}, got {self.regions_source!r}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError("label names must be distinct")
        known = set(self.label_names)
        repeated = [case for case, count in Counter(r.case_id for r in self.records).items() if count > 1]
        if repeated:
            raise ValueError(f"case ids must be unique; repeated: {repeated[:5]}")
        for record in self.records:
            if record.split not in SPLITS:
                raise ValueError(f"case {record.case_id}: split {record.split!r} is not one of {SPLITS}")
            if not known.issuperset(record.labels):
                raise ValueError(f"case {record.case_id}: labels {sorted(set(record.labels) - known)} "
                                 "are not among the dataset's label names")

    def label_matrix(self, records: list[ImageRecord] | None = None) -> np.ndarray:
        """Bool (N, C): row i marks the labels of ``records[i]`` (default: all records), columns
        in ``label_names`` order."""
        chosen = self.records if records is None else records
        column = {name: index for index, name in enumerate(self.label_names)}
        matrix = np.zeros((len(chosen), len(self.label_names)), dtype=bool)
        for row, record in enumerate(chosen):
            for label in record.labels:
                matrix[row, column[label]] = True
        return matrix

    def split(self, name: str) -> list[ImageRecord]:
        """The records of one split ("train", "val" or "test"), in dataset order."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [record for record in self.records if record.split == name]

    def summary(self) -> dict:
        """Counts fit for a log line or a report: images per split, positives per label, exclusions."""
        matrix = self.label_matrix()
        return {"dataset": self.name, "images": len(self.records),
                "splits": {name: sum(r.split == name for r in self.records) for name in SPLITS},
                "positives": dict(zip(self.label_names, matrix.sum(axis=0).tolist())),
                "regions_source": self.regions_source, "atlas_origin": self.atlas_origin,
                "excluded": dict(self.excluded)}
