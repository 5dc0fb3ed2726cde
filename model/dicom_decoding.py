"""DICOM files (Part 10, or a bare data set without preamble/meta) to a grey image in [0, 1].

A file is parsed once (`parse_dicom`); its header (`dicom_header`) and its pixels
(`decode_dicom_pixels`) are read from that one data set, the header first so that a caller can
refuse an oversized image before any pixel data are decoded.

Monochrome images go through the modality LUT (rescale slope/intercept), then the file's VOI LUT
or window when present (min-max over the values otherwise); MONOCHROME1 is inverted last, so that
dense bone is bright as in MONOCHROME2. Colour images are reduced to their luma.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from model.decoder_failures import decoder_failures
from model.errors import CorruptImageError, UnsupportedImageError

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# pydicom returns these as RGB (YBR variants are converted while decoding).
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# ITU-R BT.601 luma, the weights PIL's convert("L") uses for PNG/JPEG.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Groups every image data set has (identification, image pixel description): tells a bare
# DICOM data set from arbitrary bytes that pydicom parses with force=True.
IMAGE_DATASET_GROUPS = (0x0008, 0x0028)


@dataclass(frozen=True)
class DicomInfo:
    """Identifying and acquisition attributes of a DICOM image; never patient identifiers."""

    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    view_position: str | None
    body_part_examined: str | None
    photometric_interpretation: str | None
    bits_stored: int | None
    transfer_syntax: str | None


@dataclass(frozen=True)
class DicomHeader:
    """What the header says about the image, read before any pixel data are decoded."""

    rows: int
    columns: int
    info: DicomInfo


def parse_dicom(source: bytes | str | os.PathLike, *, pixels: bool = True) -> Dataset:
    """The data set of a DICOM file (its bytes or path), with or without the 128-byte preamble and
    file meta. The pixel data are read (unless `pixels` is False), never decoded."""
    if isinstance(source, bytes):
        return _with_elements(_read(io.BytesIO(source), pixels))
    with open(source, "rb") as handle:
        return _with_elements(_read(handle, pixels))


def parse_bare_dicom(data: bytes) -> Dataset | None:
    """The data set of `data`, which lacks the "DICM" preamble; None when it is not DICOM: neither
    file meta nor the groups of an image data set."""
    try:
        dataset = _read(io.BytesIO(data), pixels=True)
    except CorruptImageError:
        return None
    has_image_groups = any(tag.group in IMAGE_DATASET_GROUPS for tag in dataset.keys())
    if not has_image_groups and "TransferSyntaxUID" not in dataset.file_meta:
        return None
    return _with_elements(dataset)


def dicom_header(dataset: Dataset) -> DicomHeader:
    """What the header says about the image; refuse what is not decoded (multi-frame, ...)."""
    with decoder_failures(CorruptImageError, "the DICOM header is damaged"):
        if "Rows" not in dataset or "Columns" not in dataset:
            raise UnsupportedImageError("the DICOM file holds no image (it has no Rows/Columns)")
        frames = int(dataset.get("NumberOfFrames") or 1)
        if frames > 1:
            raise UnsupportedImageError(
                f"multi-frame DICOM images are not supported (this file has {frames} frames); "
                "send a single radiograph")
        photometric = _text(dataset, "PhotometricInterpretation")
        if photometric not in MONOCHROME + COLOUR:
            raise UnsupportedImageError(
                f"DICOM photometric interpretation {photometric!r} is not supported "
                "(expected MONOCHROME1, MONOCHROME2 or RGB)")
        return DicomHeader(rows=int(dataset.Rows), columns=int(dataset.Columns),
                           info=_dicom_info(dataset))


def decode_dicom_pixels(dataset: Dataset) -> tuple[np.ndarray, int]:
    """Decode the pixel data to a grey float image in [0, 1] and the number of bits stored.

    Call `dicom_header` first: it checks what this function assumes (one frame, a supported
    photometric interpretation) and lets the caller enforce size limits before decoding.
    """
    if not any(keyword in dataset for keyword in PIXEL_KEYWORDS):
        # A file cut before its pixel data.
        raise CorruptImageError("the DICOM pixel data are missing or truncated")
    _ensure_transfer_syntax(dataset)
    _require_decoder(dataset.file_meta.TransferSyntaxUID)
    with decoder_failures(CorruptImageError, "the DICOM pixel data are damaged or truncated"):
        stored = dataset.pixel_array
        bits_stored = int(dataset.get("BitsStored") or stored.dtype.itemsize * 8)
    with decoder_failures(CorruptImageError, "the DICOM grey-level attributes are invalid"):
        if stored.ndim == 3:
            grey = stored.astype(np.float32) @ LUMA_WEIGHTS / (2**bits_stored - 1)
        else:
            grey = _monochrome_to_unit(stored, dataset)
    return grey, bits_stored


def _read(file: BinaryIO, pixels: bool) -> Dataset:
    """pydicom's reading of `file`, forced to read a data set without preamble or file meta."""
    with decoder_failures(CorruptImageError, "the DICOM file is damaged or truncated"):
        return dcmread(file, force=True, stop_before_pixels=not pixels)


def _with_elements(dataset: Dataset) -> Dataset:
    """`dataset`, refused as truncated when pydicom read no element of it: it drops them all when
    one (encapsulated pixel data, a sequence) ends before its delimiter."""
    if len(dataset) == 0:
        raise CorruptImageError(
            "the DICOM file is damaged or truncated: no data element could be read")
    return dataset


def _ensure_transfer_syntax(dataset: Dataset) -> None:
    """Give a data set read without file meta the transfer syntax it was encoded in."""
    if dataset.file_meta.get("TransferSyntaxUID"):
        return
    implicit_vr, little_endian = dataset.original_encoding
    if implicit_vr is False:
        syntax = ExplicitVRBigEndian if little_endian is False else ExplicitVRLittleEndian
    else:
        syntax = ImplicitVRLittleEndian
    dataset.file_meta.TransferSyntaxUID = syntax


def _require_decoder(syntax: UID) -> None:
    """Refuse a transfer syntax that no installed pixel-data decoder handles."""
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedImageError(
            f"DICOM pixel data in the transfer syntax {syntax.name!r} cannot be decoded; send the "
            "image uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE")


def _monochrome_to_unit(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Modality LUT, then VOI (or min-max), then MONOCHROME1 inversion."""
    values = apply_modality_lut(stored, dataset)
    grey = _apply_voi(values, dataset)
    if grey is None:
        grey = _min_max(values)
    if _text(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def _apply_voi(values: np.ndarray, dataset: Dataset) -> np.ndarray | None:
    """The file's VOI LUT (preferred, as in pydicom) or window, its output range scaled to [0, 1].

    None when the file has neither. The output range is probed through pydicom itself: a window's
    values below and above it, or every entry of the LUT.
    """
    if _has_voi_lut(dataset):
        first_mapped, entries = _lut_domain(dataset)
        output = apply_voi(np.rint(values).astype(np.int64), dataset).astype(np.float32)
        lut_outputs = apply_voi(np.arange(first_mapped, first_mapped + entries), dataset)
        darkest, brightest = float(lut_outputs.min()), float(lut_outputs.max())
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        output = apply_windowing(values, dataset).astype(np.float32)
        # Below the window is darkest even when a negative rescale slope makes it the larger number.
        darkest, brightest = apply_windowing(np.array([-np.inf, np.inf]), dataset)
    else:
        return None
    if darkest == brightest:
        return np.zeros(output.shape, dtype=np.float32)
    return (output - darkest) / (brightest - darkest)


def _has_voi_lut(dataset: Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _lut_domain(dataset: Dataset) -> tuple[int, int]:
    """First stored value the VOI LUT maps, and its number of entries (0 means 65536)."""
    entries, first_mapped, _ = dataset.VOILUTSequence[0].LUTDescriptor
    return int(first_mapped), int(entries) or 2**16


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale the finite values to [0, 1]; a constant image becomes zeros."""
    values = values.astype(np.float32)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    if low == high:
        return np.zeros(values.shape, dtype=np.float32)
    return (values - low) / (high - low)


def _dicom_info(dataset: Dataset) -> DicomInfo:
    bits_stored = dataset.get("BitsStored")
    return DicomInfo(
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        sop_instance_uid=_text(dataset, "SOPInstanceUID"),
        modality=_text(dataset, "Modality"),
        view_position=_text(dataset, "ViewPosition"),
        body_part_examined=_text(dataset, "BodyPartExamined"),
        photometric_interpretation=_text(dataset, "PhotometricInterpretation"),
        bits_stored=int(bits_stored) if bits_stored not in (None, "") else None,
        transfer_syntax=_text(dataset.file_meta, "TransferSyntaxUID"),
    )


def _text(dataset: Dataset, keyword: str) -> str | None:
    """The element's value as stripped text; None when absent or empty."""
    value = dataset.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None
