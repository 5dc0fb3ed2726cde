"""Decoding an uploaded radiograph (DICOM, PNG or JPEG) into a grey float32 image in [0, 1].

Size limits are enforced before any pixel data are decoded: the byte count first, then the
dimensions read from the header. Every failure is a typed ImageError with a message fit for a
client.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin
from pydicom.dataset import Dataset

from model.decoder_failures import decoder_failures
from model.dicom_decoding import (
    DicomInfo,
    decode_dicom_pixels,
    dicom_header,
    parse_bare_dicom,
    parse_dicom,
)
from model.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from model.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

__all__ = ["DecodedImage", "DicomInfo", "ImageLimits", "decode_image", "sniff_format"]

logger = logging.getLogger(__name__)

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Each format is opened through its own PIL class rather than Image.open: no other PIL plugin is
# ever tried on an upload, and PIL's decompression-bomb check cannot pre-empt our own limits.
RASTER_OPENERS = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}
# PIL modes of 16-bit grey PNGs ("I" is how older Pillow versions open them).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class ImageLimits:
    """Largest upload accepted: file size in bytes, pixel count, longest side in pixels."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    max_side: int = MAX_IMAGE_SIDE


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A grey image: `pixels` float32 (height, width) in [0, 1], bright = dense (bone)."""

    pixels: np.ndarray
    source_format: str  # "dicom" | "png" | "jpeg"
    bit_depth: int
    dicom: DicomInfo | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def sniff_format(data: bytes) -> tuple[str, Dataset | None]:
    """The format of `data` from its signature: "dicom", "png" or "jpeg" (UnsupportedImageError
    otherwise). DICOM is the "DICM" magic at offset 128, or, tried last, a bare data set: telling
    one takes parsing it, so its parsed data set comes back with the format (None otherwise)."""
    if not data:
        raise UnsupportedImageError("the image file is empty")
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return "dicom", None
    if data.startswith(PNG_SIGNATURE):
        return "png", None
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg", None
    dataset = parse_bare_dicom(data)
    if dataset is None:
        raise UnsupportedImageError("the file is not a DICOM, PNG or JPEG image "
                                    "(its first bytes match none of these formats)")
    return "dicom", dataset


def decode_image(
    data: bytes | str | os.PathLike, limits: ImageLimits = ImageLimits()
) -> DecodedImage:
    """Decode file bytes (or the file at a path) into a grey float32 image in [0, 1]."""
    data = _read_within_limit(data, limits.max_bytes)
    source_format, dataset = sniff_format(data)
    if source_format == "dicom":
        image = _decode_dicom(parse_dicom(data) if dataset is None else dataset, limits)
    else:
        image = _decode_raster(data, source_format, limits)
    logger.debug("image decoded", extra={
        "source_format": image.source_format, "width": image.width, "height": image.height,
        "bit_depth": image.bit_depth, "byte_count": len(data)})
    return image


def _read_within_limit(source: bytes | str | os.PathLike, max_bytes: int) -> bytes:
    """The file's bytes, refusing a file larger than `max_bytes` before reading all of it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as handle:
            _check_byte_count(os.fstat(handle.fileno()).st_size, max_bytes)
            data = handle.read(max_bytes + 1)
    _check_byte_count(len(data), max_bytes)
    return data


def _check_byte_count(byte_count: int, max_bytes: int) -> None:
    if byte_count > max_bytes:
        raise ImageTooLargeError(
            f"the image file is {byte_count} bytes, more than the limit of {max_bytes} bytes")


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse an empty or oversized image from the dimensions its header declares."""
    if width < 1 or height < 1:
        raise CorruptImageError(
            f"the image header declares an empty image of {width} x {height} pixels")
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            f"the image is {width} x {height} pixels; its longest side exceeds the limit of "
            f"{limits.max_side} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width} x {height} = {width * height} pixels, more than the limit of "
            f"{limits.max_pixels} pixels")


def _decode_dicom(dataset: Dataset, limits: ImageLimits) -> DecodedImage:
    """The image of a parsed DICOM data set, its size checked against `limits` before decoding (the
    header has checked that compressed pixel data state the same size as Rows and Columns)."""
    header = dicom_header(dataset)
    _check_dimensions(header.columns, header.rows, limits)
    pixels, bit_depth = decode_dicom_pixels(dataset)
    return DecodedImage(_unit_interval(pixels), "dicom", bit_depth, header.info)


def _decode_raster(data: bytes, source_format: str, limits: ImageLimits) -> DecodedImage:
    name = source_format.upper()
    with decoder_failures(CorruptImageError, f"the {name} file is damaged or truncated"):
        image = RASTER_OPENERS[source_format](io.BytesIO(data))
    with image:
        _check_dimensions(image.width, image.height, limits)
        with decoder_failures(CorruptImageError, f"the {name} pixel data are damaged or truncated"):
            image.load()
            pixels, bit_depth = _raster_to_unit(image)
    return DecodedImage(_unit_interval(pixels), source_format, bit_depth)


def _raster_to_unit(image: Image.Image) -> tuple[np.ndarray, int]:
    """Grey in [0, 1] and its bit depth: 16-bit grey by 65535, everything else as 8-bit L by 255."""
    sixteen_bit = image.mode in SIXTEEN_BIT_MODES
    if not sixteen_bit and image.mode != "L":
        image = image.convert("L")
    pixels = np.asarray(image, dtype=np.float32)
    pixels /= 65535.0 if sixteen_bit else 255.0
    return pixels, 16 if sixteen_bit else 8


def _unit_interval(pixels: np.ndarray) -> np.ndarray:
    """Finite float32 values clipped to [0, 1] (NaN -> 0), in place when `pixels` is float32."""
    pixels = np.nan_to_num(pixels.astype(np.float32, copy=False), copy=False,
                           nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(pixels, 0.0, 1.0, out=pixels)
