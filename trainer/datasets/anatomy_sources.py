"""Where an image's 18 region boxes come from.

A reader does not open images: the feature extractor decodes an image and then calls
``source.boxes_for(image)``, which returns the validated float32 (18, 4) boxes in
`model.catalogue.REGION_NAMES` order or raises a `RegionError` naming each bad region. Every source
but `PredictedRegions` needs only the image's size, ``source.boxes(width, height)``; the anatomy
model needs the pixels (and raises `NoChestFoundError` when it finds no frontal chest).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.anatomy import Box, boxes_by_name, order_boxes, validate_regions
from model.anatomy_model import SHIPPED_MODEL, AnatomyModel
from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.errors import ChextrievError, RegionError, RegionProblem
from model.imaging import DecodedImage
from model.region_derivation import derive_regions, derive_regions_from_masks


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.setflags(write=False)
    return array


class _SizedSource:
    """A source that places the regions from the image's size alone."""

    def boxes_for(self, image: DecodedImage) -> np.ndarray:
        """The boxes of a decoded image: ``boxes(image.width, image.height)``."""
        return self.boxes(image.width, image.height)


@dataclass(frozen=True, eq=False)
class NamedBoxes(_SizedSource):
    """The 18 boxes given explicitly (a manifest's ``regions`` or a Chest ImaGenome scene graph),
    in pixels of the image, as a read-only float32 (18, 4) array in catalogue order."""

    regions: np.ndarray
    kind: ClassVar[str] = "boxes"

    def __post_init__(self) -> None:
        if np.shape(self.regions) != (NUM_REGIONS, 4):
            raise ValueError(f"expected ({NUM_REGIONS}, 4) boxes, got shape {np.shape(self.regions)}")
        object.__setattr__(self, "regions", _read_only(self.regions))

    @classmethod
    def from_mapping(cls, boxes: Mapping[str, Box]) -> NamedBoxes:
        """From boxes keyed by the 18 region names (RegionError for unknown or missing names)."""
        return cls(order_boxes(boxes))

    def boxes(self, width: int, height: int) -> np.ndarray:
        """The boxes checked against the image (a box crossing its edge is kept: its crop is zero-padded)."""
        return validate_regions(boxes_by_name(self.regions), width, height)


@dataclass(frozen=True)
class LungBoxes(_SizedSource):
    """Right and left lung boxes (and optionally the heart's), from which the 18 regions are derived."""

    right_lung: Box
    left_lung: Box
    heart: Box | None = None
    kind: ClassVar[str] = "lung_boxes"

    def boxes(self, width: int, height: int) -> np.ndarray:
        """The derived regions (`model.region_derivation.derive_regions`), validated."""
        regions = derive_regions(self.right_lung, self.left_lung, width, height, heart=self.heart)
        return validate_regions(regions, width, height)


@dataclass(frozen=True)
class LungMasks(_SizedSource):
    """Binary mask files (non-zero = inside) of the right and left lung, optionally the heart, each
    the size of the image; the 18 regions are derived from them."""

    right_lung: Path
    left_lung: Path
    heart: Path | None = None
    kind: ClassVar[str] = "masks"

    def boxes(self, width: int, height: int) -> np.ndarray:
        """The regions derived from the masks (`derive_regions_from_masks`), validated."""
        masks = {"right lung": self.right_lung, "left lung": self.left_lung,
                 "cardiac silhouette": self.heart}
        loaded = {name: _read_mask(path, name, width, height)
                  for name, path in masks.items() if path is not None}
        regions = derive_regions_from_masks(loaded["right lung"], loaded["left lung"],
                                            loaded.get("cardiac silhouette"))
        return validate_regions(regions, width, height)


@dataclass(frozen=True, eq=False)
class AtlasRegions(_SizedSource):
    """A mean template of the 18 boxes as fractions of the image width and height (x1, y1, x2, y2
    in [0, 1]), scaled to each image: for rows with no anatomy of their own."""

    template: np.ndarray
    kind: ClassVar[str] = "atlas"

    def __post_init__(self) -> None:
        template = np.asarray(self.template, dtype=np.float64)
        if template.shape != (NUM_REGIONS, 4):
            raise ValueError(f"expected an ({NUM_REGIONS}, 4) template, got shape {template.shape}")
        problems = [RegionProblem(name, f"template box {[round(v, 4) for v in row]} is not a "
                                        "box of image fractions in [0, 1] with x1 < x2 and y1 < y2")
                    for name, row in zip(REGION_NAMES, template.tolist())
                    if not (np.isfinite(row).all() and 0 <= row[0] < row[2] <= 1 and 0 <= row[1] < row[3] <= 1)]
        if problems:
            raise RegionError(problems)
        object.__setattr__(self, "template", _read_only(template))

    def boxes(self, width: int, height: int) -> np.ndarray:
        """The template scaled to a ``width`` x ``height`` image, validated."""
        scaled = self.template.astype(np.float64) * np.array([width, height, width, height])
        return validate_regions(boxes_by_name(scaled), width, height)


@dataclass(frozen=True)
class PredictedRegions:
    """The 18 regions the anatomy model (`model.anatomy_model`) predicts from each image's pixels.

    Holds the model file and its SHA-256 (so a dataset's fingerprint follows the model); the model
    itself is loaded on first use, once per process, so pickling to DataLoader workers is cheap.
    """

    model_path: Path
    model_fingerprint: str
    kind: ClassVar[str] = "model"

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None) -> PredictedRegions:
        """The source for the model file at ``path`` (None: the shipped model); OSError when unreadable."""
        path = Path(SHIPPED_MODEL if path is None else path)
        return cls(path, hashlib.sha256(path.read_bytes()).hexdigest())

    def boxes(self, width: int, height: int) -> np.ndarray:
        """Always a RegionError: the size alone does not place predicted regions."""
        raise RegionError([RegionProblem("all regions", "predicted regions need the image's pixels: "
                                                        "use boxes_for(image)")])

    def boxes_for(self, image: DecodedImage) -> np.ndarray:
        """The model's 18 regions of the image (validated by the model); NoChestFoundError when it
        finds no frontal chest in it."""
        model = _anatomy_model(self.model_path, self.model_fingerprint, os.getpid())
        return model.predict(image.pixels).regions


@functools.cache
def _anatomy_model(path: Path, fingerprint: str, process_id: int) -> AnatomyModel:
    """The model at ``path``, loaded once per process (keyed by ``process_id``: an ONNX Runtime
    session does not survive a fork); refused when the file changed since the dataset was read."""
    model = AnatomyModel.load(path)
    if model.fingerprint != fingerprint:
        raise ChextrievError(f"the anatomy model {path.name} changed since the dataset was read: read it again")
    return model


AnatomySource = NamedBoxes | LungBoxes | LungMasks | AtlasRegions | PredictedRegions


def _read_mask(path: Path, name: str, width: int, height: int) -> np.ndarray:
    """A mask file as a bool array, refusing one that cannot be read or whose size is not the image's."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (OSError, UnidentifiedImageError) as error:
        raise RegionError([RegionProblem(name, f"cannot read the mask {path.name}: {error}")]) from None
    if mask.shape != (height, width):
        raise RegionError([RegionProblem(
            name, f"the mask {path.name} is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")])
    return mask
