"""Where an image's 18 region boxes come from; each source places them once the image size is known.

A reader does not open images: the feature extractor decodes an image and then calls
``source.boxes(width, height)``, which returns the validated float32 (18, 4) boxes in
`model.catalogue.REGION_NAMES` order or raises a `RegionError` naming each bad region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.anatomy import Box, boxes_by_name, order_boxes, validate_regions
from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.errors import RegionError, RegionProblem
from model.region_derivation import derive_regions, derive_regions_from_masks


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NamedBoxes:
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
class LungBoxes:
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
class LungMasks:
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
class AtlasRegions:
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


AnatomySource = NamedBoxes | LungBoxes | LungMasks | AtlasRegions


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
