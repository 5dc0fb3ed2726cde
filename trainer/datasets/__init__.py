"""Dataset readers for the offline trainer: Chest ImaGenome + MIMIC-CXR-JPG, and a generic manifest."""

from model.datasets.anatomy_sources import AnatomySource, AtlasRegions, LungBoxes, LungMasks, NamedBoxes
from model.datasets.errors import DatasetError, DatasetProblem
from model.datasets.imagenome import read_imagenome
from model.datasets.manifest import read_manifest
from model.datasets.records import SPLITS, Dataset, ImageRecord

__all__ = ["SPLITS", "AnatomySource", "AtlasRegions", "Dataset", "DatasetError", "DatasetProblem",
           "ImageRecord", "LungBoxes", "LungMasks", "NamedBoxes", "read_imagenome", "read_manifest"]
