"""The one place that names the 18 Chest ImaGenome regions and the 9 findings, in their fixed order."""

from __future__ import annotations

REGION_NAMES: tuple[str, ...] = (
    "right lung",
    "right apical zone",
    "right upper lung zone",
    "right mid lung zone",
    "right lower lung zone",
    "right hilar structures",
    "right costophrenic angle",
    "left lung",
    "left apical zone",
    "left upper lung zone",
    "left mid lung zone",
    "left lower lung zone",
    "left hilar structures",
    "left costophrenic angle",
    "mediastinum",
    "upper mediastinum",
    "cardiac silhouette",
    "trachea",
)
NUM_REGIONS = len(REGION_NAMES)
REGION_INDEX: dict[str, int] = {name: i for i, name in enumerate(REGION_NAMES)}

FINDING_NAMES: tuple[str, ...] = (
    "lung opacity",
    "pleural effusion",
    "atelectasis",
    "enlarged cardiac silhouette",
    "pulmonary edema/hazy opacity",
    "pneumothorax",
    "consolidation",
    "fluid overload/heart failure",
    "pneumonia",
)
NUM_FINDINGS = len(FINDING_NAMES)
