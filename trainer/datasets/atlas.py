"""A mean template of the 18 regions, learned from images that have anatomy, for images that have none.

The template is the mean over images of each region box divided by the image size, so it is
placed on any image by scaling with that image's width and height (`AtlasRegions`). It is a crude
prior (a patient's lungs are rarely where the mean puts them): evaluation output says when it was used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.dicom_decoding import dicom_header, parse_dicom
from model.errors import ChextrievError
from trainer.datasets.anatomy_sources import AtlasRegions
from trainer.datasets.errors import DatasetError, DatasetProblem
from trainer.datasets.records import ImageRecord

logger = logging.getLogger(__name__)

DICOM_MAGIC_AT = slice(128, 132)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a JPEG, PNG or DICOM file, read from its header (raises ChextrievError
    or OSError when unreadable)."""
    with open(path, "rb") as handle:
        head = handle.read(DICOM_MAGIC_AT.stop)
    if head[DICOM_MAGIC_AT] == b"DICM":
        header = dicom_header(parse_dicom(path, pixels=False))
        return header.columns, header.rows
    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError as error:
        raise OSError(str(error)) from None


def record_size(record: ImageRecord) -> tuple[int, int]:
    """The record's image size: from its ``width``/``height`` metadata when given, else the file."""
    if "width" in record.metadata and "height" in record.metadata:
        return int(record.metadata["width"]), int(record.metadata["height"])
    return image_size(record.image_path)


def learn_atlas(records: Sequence[ImageRecord], source: str) -> tuple[AtlasRegions, int]:
    """The mean template over the records that have anatomy of their own, and how many were used.

    Records whose regions cannot be placed (bad boxes, unreadable image or mask) are left out and
    counted in a warning; DatasetError (naming ``source``) when none is usable.
    """
    fractions, failures = [], 0
    for record in records:
        if isinstance(record.anatomy, AtlasRegions):
            continue
        try:
            width, height = record_size(record)
            boxes = record.anatomy.boxes(width, height)
        except (ChextrievError, OSError):
            failures += 1
            continue
        fractions.append(boxes / np.array([width, height, width, height], dtype=np.float32))
    if failures:
        logger.warning("images left out of the atlas: their regions could not be placed",
                       extra={"source": source, "left_out": failures, "used": len(fractions)})
    if not fractions:
        raise DatasetError([DatasetProblem(source, "no image with usable anatomy (regions or lung "
                                                   "boxes or masks) to learn the atlas from")])
    return AtlasRegions(np.mean(np.stack(fractions), axis=0)), len(fractions)
