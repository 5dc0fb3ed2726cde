"""DICOM files (Part 10, or a bare data set without preamble/meta) to a grey image in [0, 1].

A file is parsed once (`parse_dicom`); its header (`dicom_header`) and its pixels
(`decode_dicom_pixels`) are read from that one data set, the header first so that a caller can
refuse an oversized image before any pixel data are decoded. Compressed pixel data decode at the
size their own codestream declares, so the header also checks that size against Rows x Columns
(and that they hold one frame), and the decoded array's shape is checked again. A deflated data
set is refused from its file meta: pydicom would inflate all of it before anything is checked.

Monochrome images go through the modality LUT (rescale slope/intercept), then the file's VOI LUT
or window when present (min-max over the values otherwise); MONOCHROME1 is inverted last, so that
dense bone is bright as in MONOCHROME2. Colour images are reduced to their luma.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

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
UNDEFINED_LENGTH = 0xFFFFFFFF
FILE_META_GROUP = 0x0002
TRANSFER_SYNTAX_TAG = 0x00020010
# Start-of-frame markers, whose segment states the image size: JPEG SOF0-SOF15 (less DHT C4, JPG C8
# and DAC CC) and JPEG-LS SOF55 (F7).
JPEG_SOI = b"\xff\xd8"
JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                              0xCF, 0xF7})
JPEG_FILL_BYTE = 0xFF
# A JPEG 2000 codestream opens with SOC then SIZ, which states the image size; a JP2 file (which
# some DICOM writers encapsulate) opens with its signature box and holds the codestream in "jp2c".
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
JP2_CODESTREAM_BOX = b"jp2c"
# An RLE frame opens with its number of segments and up to 15 segment offsets.
RLE_HEADER = struct.Struct("<16I")


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
        _check_compressed_size(dataset)
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
    _require_decoded_shape(stored, dataset)
    with decoder_failures(CorruptImageError, "the DICOM grey-level attributes are invalid"):
        if stored.ndim == 3:
            grey = stored.astype(np.float32) @ LUMA_WEIGHTS / (2**bits_stored - 1)
        else:
            grey = _monochrome_to_unit(stored, dataset)
    return grey, bits_stored


def _check_compressed_size(dataset: Dataset) -> None:
    """Refuse compressed pixel data that would decode to another size than Rows x Columns, read
    without decoding them: the size a JPEG, JPEG-LS or JPEG 2000 codestream states, or what each RLE
    segment decodes to (up to 64 times its own length, all of it before pydicom cuts it to size)."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    read_size = _size_reader(syntax)
    if "PixelData" not in dataset or (read_size is None and syntax != RLELossless):
        return  # native pixel data, checked when decoded, or none: refused as truncated then
    frame = _only_frame(dataset)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if read_size is None:
        _check_rle_segments(frame, rows * columns)
        return
    size = read_size(frame)
    if size is None:
        raise CorruptImageError(f"the DICOM pixel data have no readable {syntax.name} header")
    if size != (columns, rows):
        raise _size_mismatch(dataset, f"its compressed pixel data hold {size[0]} x {size[1]} pixels")


def _size_reader(syntax: UID | None) -> Callable[[bytes], tuple[int, int] | None] | None:
    """What reads (width, height) from a codestream of `syntax`: JPEG, JPEG-LS or JPEG 2000."""
    if syntax in JPEG2000TransferSyntaxes:
        return _j2k_size
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        return _jpeg_size
    return None


def _only_frame(dataset: Dataset) -> bytes:
    """The codestream of the one frame of encapsulated pixel data, found as pydicom's decoders find
    it; refused when the data hold more frames, which pydicom would decode as well."""
    offsets = None
    if "ExtendedOffsetTable" in dataset:
        offsets = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    with decoder_failures(CorruptImageError, "the DICOM compressed pixel data are damaged"):
        frames = generate_frames(dataset.PixelData, number_of_frames=1, extended_offsets=offsets)
        frame = next(frames)
        if next(frames, None) is not None:
            raise CorruptImageError("the DICOM header declares one frame, but its compressed pixel "
                                    "data hold more")
    return frame


def _jpeg_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) in the start-of-frame segment of a JPEG or JPEG-LS codestream, if it has one."""
    if not codestream.startswith(JPEG_SOI):
        return None
    offset = len(JPEG_SOI)
    while offset + 9 <= len(codestream) and codestream[offset] == JPEG_FILL_BYTE:
        marker = codestream[offset + 1]
        if marker in JPEG_SOF_MARKERS:  # marker, length, precision, then height and width
            height, width = struct.unpack_from(">HH", codestream, offset + 5)
            return width, height
        if marker == JPEG_FILL_BYTE:
            offset += 1
        else:
            offset += 2 + struct.unpack_from(">H", codestream, offset + 2)[0]
    return None


def _j2k_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) in the SIZ segment of a JPEG 2000 codestream, bare or in a JP2 file."""
    start = _jp2_codestream_start(codestream) if codestream.startswith(JP2_SIGNATURE) else 0
    # SOC, SIZ, Lsiz, Rsiz, then the grid's far corner and the image's offset on the grid.
    if start is None or codestream[start:start + 4] != J2K_SOC_SIZ or len(codestream) < start + 24:
        return None
    x_end, y_end, x_offset, y_offset = struct.unpack_from(">IIII", codestream, start + 8)
    return x_end - x_offset, y_end - y_offset


def _jp2_codestream_start(jp2: bytes) -> int | None:
    """Where the contents of a JP2 file's codestream box begin, walking its boxes."""
    offset = 0
    while offset + 8 <= len(jp2):
        length, kind = struct.unpack_from(">I4s", jp2, offset)
        if kind == JP2_CODESTREAM_BOX:
            return offset + (16 if length == 1 else 8)  # 1: a 64-bit length follows the type
        if length < 8:  # 0 (up to the end) or 1 (64-bit): not a box the codestream follows
            return None
        offset += length
    return None


def _check_rle_segments(frame: bytes, plane: int) -> None:
    """Refuse an RLE frame with a segment that decodes to more than twice its `plane` of Rows x
    Columns bytes (pydicom accepts, and drops, a little excess padding)."""
    count, *offsets = RLE_HEADER.unpack_from(frame)
    bounds = [*offsets[:count], len(frame)]
    for start, end in zip(bounds, bounds[1:]):
        if _rle_decoded_length(frame, start, end, 2 * plane) > 2 * plane:
            raise CorruptImageError(f"the DICOM RLE pixel data decode to more than the {plane} bytes "
                                    "of each plane the header declares")


def _rle_decoded_length(data: bytes, start: int, end: int, limit: int) -> int:
    """How long the PackBits segment data[start:end] decodes, counted until it passes `limit`."""
    length, position = 0, start
    while position < end and length <= limit:
        header = data[position]
        if header < 128:  # the next header + 1 bytes, literally
            length, position = length + header + 1, position + header + 2
        elif header > 128:  # the next byte, 257 - header times
            length, position = length + 257 - header, position + 2
        else:  # 128: no operation
            position += 1
    return length


def _require_decoded_shape(stored: np.ndarray, dataset: Dataset) -> None:
    """Refuse decoded pixels of another shape than the header's one frame of Rows x Columns (pydicom
    returns the extra frames it finds in pixel data longer than one frame)."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    colour = _text(dataset, "PhotometricInterpretation") in COLOUR
    expected = (rows, columns, 3) if colour else (rows, columns)
    if stored.shape != expected:
        raise _size_mismatch(dataset, f"its pixel data decode to an array of shape {stored.shape}")


def _size_mismatch(dataset: Dataset, found: str) -> CorruptImageError:
    return CorruptImageError(f"the DICOM header declares {int(dataset.Columns)} x {int(dataset.Rows)} "
                             f"pixels (columns x rows), but {found}")


def _read(file: BinaryIO, pixels: bool) -> Dataset:
    """pydicom's reading of `file`, forced to read a data set without preamble or file meta."""
    with decoder_failures(CorruptImageError, "the DICOM file is damaged or truncated"):
        _refuse_deflated(file)
        return dcmread(file, force=True, stop_before_pixels=not pixels)


def _refuse_deflated(file: BinaryIO) -> None:
    """Refuse a deflated data set from its file meta, before pydicom inflates all of it into memory
    (with no limit: a few kilobytes inflate to megabytes, an upload at the limit to many gigabytes)."""
    read_preamble(file, force=True)
    meta = data_element_generator(file, is_implicit_VR=False, is_little_endian=True,
                                  stop_when=lambda tag, vr, length: tag.group != FILE_META_GROUP)
    syntax = next((element.value for element in meta if element.tag == TRANSFER_SYNTAX_TAG), None)
    file.seek(0)
    if (syntax or b"").rstrip(b"\0 ").decode("ascii", "replace") == DeflatedExplicitVRLittleEndian:
        raise UnsupportedImageError("deflated DICOM files are not supported; send the image "
                                    "uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE")


def _with_elements(dataset: Dataset) -> Dataset:
    """`dataset`, refused as truncated when pydicom read no element of it (it drops them all when
    one, encapsulated pixel data or a sequence, ends before its delimiter) or when the file ends
    inside the value of its last element (pydicom keeps the shorter value)."""
    if len(dataset) == 0:
        raise CorruptImageError(
            "the DICOM file is damaged or truncated: no data element could be read")
    last = dataset.get_item(next(reversed(dataset.keys())))
    if _cut_short(last):
        raise CorruptImageError(
            f"the DICOM file is damaged or truncated: it ends inside element {last.tag}")
    return dataset


def _cut_short(element: object) -> bool:
    """Whether the file ends inside the value of a raw (not yet converted) data element."""
    return (isinstance(element, RawDataElement) and element.length != UNDEFINED_LENGTH
            and len(element.value or b"") < element.length)


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
    """Modality LUT, then VOI (or min-max), then MONOCHROME1 inversion.

    Unsigned pixels of up to 16 bits go through a table of grey per stored level: pydicom's LUTs
    work in float64, which on the whole image would take several copies of 8 bytes a pixel.
    """
    if stored.dtype.kind != "u" or stored.dtype.itemsize > 2:
        return _levels_to_unit(stored, dataset, present=slice(None))
    levels = np.arange(int(stored.max()) + 1)
    present = np.zeros(levels.size, dtype=bool)
    present[stored] = True
    return _levels_to_unit(levels, dataset, present)[stored]


def _levels_to_unit(levels: np.ndarray, dataset: Dataset, present: np.ndarray | slice) -> np.ndarray:
    """Grey float32 in [0, 1] of stored `levels`; min-max (without a VOI) spans the `present` ones."""
    values = apply_modality_lut(levels, dataset)
    grey = _apply_voi(values, dataset)
    if grey is None:
        grey = _min_max(values, values[present])
    if _text(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32, copy=False)


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


def _min_max(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Scale `values` to [0, 1] by the finite extremes of `among`; a constant image becomes zeros."""
    values, among = values.astype(np.float32), among.astype(np.float32)
    finite = among[np.isfinite(among)]
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
