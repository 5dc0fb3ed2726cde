"""A dataset as the trainer sees it: one record per image, with its split, labels (per image and,
when the dataset has them, per region) and anatomy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.catalogue import NUM_REGIONS
from trainer.datasets.anatomy_sources import AnatomySource

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Dataset.regions_source values: what placed the 18 regions of every record.
REGION_SOURCES: tuple[str, ...] = ("imagenome", "boxes", "lung_boxes", "masks", "atlas", "model", "mixed")


def patient_key(patient_id: str | None, case_id: str) -> str:
    """What groups images by patient: the patient id, or the case id when the patient is unknown
    (an image without a patient is its own patient)."""
    return patient_id if patient_id is not None else f"image:{case_id}"


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id, file, patient (None when unknown: then it is its own patient), split,
    positive label names, where its region boxes come from, non-identifying extras and, when the
    dataset has them, the positive label names of each of the 18 regions (catalogue order)."""

    case_id: str
    image_path: Path
    patient_id: str | None
    split: str
    labels: tuple[str, ...]
    anatomy: AnatomySource
    metadata: dict = field(default_factory=dict)
    region_labels: tuple[tuple[str, ...], ...] | None = None

    @property
    def patient_key(self) -> str:
        """The patient id, or a key unique to this image when the patient is unknown."""
        return patient_key(self.patient_id, self.case_id)


@dataclass(frozen=True)
class Dataset:
    """Records with a fixed label vocabulary.

    ``regions_source`` says what placed the regions (see REGION_SOURCES); ``atlas_origin`` says
    where an atlas template was learned, when one was used; ``excluded`` counts the images left
    out, by reason. Either every record has region labels or none has.
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
            self._check_region_labels(record)

    def _check_region_labels(self, record: ImageRecord) -> None:
        """Region labels, when present in the dataset, name 18 regions' labels that the image has."""
        if (record.region_labels is None) != (self.records[0].region_labels is None):
            raise ValueError(f"case {record.case_id}: either every record has region labels or none has")
        if record.region_labels is None:
            return
        if len(record.region_labels) != NUM_REGIONS:
            raise ValueError(f"case {record.case_id}: region labels for {len(record.region_labels)} regions, "
                             f"expected {NUM_REGIONS}")
        stray = {label for labels in record.region_labels for label in labels} - set(record.labels)
        if stray:
            raise ValueError(f"case {record.case_id}: region labels {sorted(stray)} are not among the image's labels")

    @property
    def has_region_labels(self) -> bool:
        """Whether the records carry per-region labels."""
        return bool(self.records) and self.records[0].region_labels is not None

    def label_matrix(self, records: list[ImageRecord] | None = None) -> np.ndarray:
        """Bool (N, C): row i marks the labels of ``records[i]`` (default: all records), columns
        in ``label_names`` order."""
        chosen = self.records if records is None else records
        return self._marks([record.labels for record in chosen])

    def region_label_matrix(self, records: list[ImageRecord] | None = None) -> np.ndarray | None:
        """Bool (N, 18, C): [i, r, c] marks label c positive in region r (catalogue order) of
        ``records[i]`` (default: all records); None when the dataset has no region labels."""
        if not self.has_region_labels:
            return None
        chosen = self.records if records is None else records
        marks = self._marks([labels for record in chosen for labels in record.region_labels])
        return marks.reshape(len(chosen), NUM_REGIONS, len(self.label_names))

    def _marks(self, label_sets: list[tuple[str, ...]]) -> np.ndarray:
        """Bool (len(label_sets), C): row i marks the labels of ``label_sets[i]``."""
        column = {name: index for index, name in enumerate(self.label_names)}
        matrix = np.zeros((len(label_sets), len(self.label_names)), dtype=bool)
        for row, labels in enumerate(label_sets):
            for label in labels:
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
