"""Dataset readers for the offline trainer: Chest ImaGenome + MIMIC-CXR-JPG, and a generic manifest."""

from trainer.datasets.anatomy_sources import (
    AnatomySource,
    AtlasRegions,
    LungBoxes,
    LungMasks,
    NamedBoxes,
    PredictedRegions,
)
from trainer.datasets.errors import DatasetError, DatasetProblem
from trainer.datasets.imagenome import read_imagenome
from trainer.datasets.manifest import read_manifest
from trainer.datasets.records import SPLITS, Dataset, ImageRecord

__all__ = ["SPLITS", "AnatomySource", "AtlasRegions", "Dataset", "DatasetError", "DatasetProblem",
           "ImageRecord", "LungBoxes", "LungMasks", "NamedBoxes", "PredictedRegions", "read_imagenome",
           "read_manifest"]
