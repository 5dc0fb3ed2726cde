"""Gallery images of stored cases: their pixels (for saliency), small JPEG thumbnails and whole PNGs;
and grey images as pictures (also the previews of uploads).

Case records name their image relative to the configured image root; a path that would leave the
root, a missing file or one that no longer matches the recorded size is reported as unavailable.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.errors import ImageError
from model.imaging import decode_image
from service.db.repository import CaseRecord
from service.problems import Problem, field_problem

logger = logging.getLogger(__name__)

THUMBNAIL_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG thumbnail and its entity tag."""

    jpeg: bytes
    etag: str


def case_image_path(image_root: str | Path, case: CaseRecord) -> Path:
    """The file of the case's image, which must lie inside `image_root`."""
    root = Path(image_root).resolve()
    path = (root / case.image_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise _unavailable(case, "its image file is missing")
    return path


def load_case_pixels(image_root: str | Path, case: CaseRecord) -> np.ndarray:
    """The case's grey image in [0, 1], checked against the size its boxes were recorded for."""
    path = case_image_path(image_root, case)
    try:
        image = decode_image(path)
    except ImageError as error:
        raise _unavailable(case, f"its image file cannot be decoded ({error})") from error
    if (image.width, image.height) != (case.width, case.height):
        raise _unavailable(case, f"its image is {image.width}x{image.height} pixels, the record says "
                                 f"{case.width}x{case.height}")
    return image.pixels


def thumbnail_etag(image_root: str | Path, case: CaseRecord, max_side: int) -> str:
    """An entity tag that changes with the image file (size, modification time) and the thumbnail size."""
    status = case_image_path(image_root, case).stat()
    key = f"{case.case_id}\0{case.image_path}\0{status.st_size}\0{status.st_mtime_ns}\0{max_side}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def make_thumbnail(image_root: str | Path, case: CaseRecord, max_side: int) -> Thumbnail:
    """A JPEG of the case's image whose longer side is at most `max_side` pixels."""
    etag = thumbnail_etag(image_root, case, max_side)
    image = grey_picture(load_case_pixels(image_root, case), max_side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return Thumbnail(buffer.getvalue(), etag)


def case_png(image_root: str | Path, case: CaseRecord) -> bytes:
    """The case's whole image as an 8-bit grey PNG (to view it, or to search with it again)."""
    return grey_png(load_case_pixels(image_root, case))


def grey_picture(pixels: np.ndarray, max_side: int | None = None) -> Image.Image:
    """An 8-bit grey picture of a grey image in [0, 1], its longer side at most `max_side` when given."""
    image = Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def grey_png(pixels: np.ndarray, max_side: int | None = None) -> bytes:
    """`grey_picture` encoded as PNG."""
    buffer = io.BytesIO()
    grey_picture(pixels, max_side).save(buffer, format="PNG")
    return buffer.getvalue()


def _unavailable(case: CaseRecord, why: str) -> Problem:
    logger.warning("case image unavailable", extra={"case_id": case.case_id, "problem": why})
    return Problem(404, "case-image-unavailable", f"the image of case {case.case_id} is unavailable: {why}",
                   [field_problem("case_id", "the case's image is unavailable")])
