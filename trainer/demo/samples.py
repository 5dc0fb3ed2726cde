"""The openly licensed radiographs bundled with the package (see trainer/demo/cxr_lungbox/ATTRIBUTION.md)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.anatomy import validate_regions
from model.imaging import decode_image
from model.region_derivation import derive_regions

SAMPLE_DIR = Path(__file__).parent / "cxr_lungbox"


@dataclass(frozen=True)
class SampleCase:
    """One bundled radiograph with its expert lung boxes and recorded finding."""

    case_id: str
    image_path: Path
    patient_id: str
    finding: str
    right_lung: tuple[float, float, float, float]
    left_lung: tuple[float, float, float, float]
    metadata: dict = field(default_factory=dict)


def load_sample_cases(sample_dir: Path = SAMPLE_DIR) -> list[SampleCase]:
    """Read the bundled manifest; image paths are absolute."""
    cases = []
    with open(sample_dir / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            cases.append(
                SampleCase(
                    case_id=row["case_id"],
                    image_path=sample_dir / row["image"],
                    patient_id=row["patientid"],
                    finding=row["finding"],
                    right_lung=tuple(json.loads(row["right_lung"])),
                    left_lung=tuple(json.loads(row["left_lung"])),
                    metadata={"view": row["view"], "sex": row["sex"], "age": row["age"],
                              "license": row["license"], "source": row["url"]},
                )
            )
    return cases


def sample_case_input(case: SampleCase) -> tuple[np.ndarray, np.ndarray]:
    """Decoded grey pixels and validated (18, 4) boxes derived from the case's expert lung boxes."""
    image = decode_image(case.image_path)
    boxes = derive_regions(case.right_lung, case.left_lung, image.width, image.height)
    return image.pixels, validate_regions(boxes, image.width, image.height)
