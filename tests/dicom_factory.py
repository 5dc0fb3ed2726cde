"""DICOM files built from numpy arrays with pydicom, for tests that need DICOM variants."""

from __future__ import annotations

import io

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, RLELossless, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Identifiers written into every file, so tests can check that none of them comes back out.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0001"


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    rle: bool = False,
    file_meta: bool = True,
) -> bytes:
    """A CR chest PA DICOM Part 10 file holding `pixels` (uint8 or uint16).

    `pixels` is (rows, columns) grey, (frames, rows, columns) for a multi-frame file, or
    (rows, columns, 3) with photometric="RGB". `rescale` is (slope, intercept), `window` is
    (centre, width). `voi_lut` becomes a VOI LUT Sequence item mapping stored value i to
    voi_lut[i] (first value mapped 0, 10 to 16 bits per entry as its maximum needs). `rle`
    compresses with RLE Lossless; `file_meta=False` writes the bare data set (implicit VR little
    endian, no preamble, no file meta), which cannot be combined with `rle`.
    """
    dataset = chest_dataset(pixels, photometric, bits_stored)
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, max(10, int(voi_lut.max()).bit_length())]
        item.LUTData = voi_lut.astype("<u2").tobytes()  # OW, as most files store it
        dataset.VOILUTSequence = [item]
    if rle:
        dataset.compress(RLELossless)
    return dicom_file_bytes(dataset, file_meta=file_meta)


def encapsulated_dicom_bytes(syntax: UID, codestreams: list[bytes], *, rows: int, columns: int) -> bytes:
    """A CR chest PA DICOM Part 10 file of 8-bit grey pixels declaring `rows` x `columns`, whatever
    its compressed pixel data hold: `codestreams` (JPEG, JPEG 2000, ... of `syntax`), one per frame,
    with a Basic Offset Table listing them when there are several."""
    dataset = chest_dataset(np.zeros((rows, columns), dtype=np.uint8))
    dataset.PixelData = encapsulate(codestreams, has_bot=len(codestreams) > 1)
    dataset.file_meta.TransferSyntaxUID = syntax
    return dicom_file_bytes(dataset)


def chest_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2",
                  bits_stored: int | None = None) -> Dataset:
    """A CR chest PA data set of the test patient holding `pixels` uncompressed."""
    dataset = Dataset()
    dataset.SOPClassUID = CR_IMAGE_STORAGE
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "CR"
    dataset.ViewPosition = "PA"
    dataset.BodyPartExamined = "CHEST"
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = "19700101"
    dataset.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    return dataset


def dicom_file_bytes(dataset: Dataset, *, file_meta: bool = True) -> bytes:
    """`dataset` written as a DICOM Part 10 file, or (`file_meta=False`) as the bare data set
    (implicit VR little endian, no preamble, no file meta)."""
    buffer = io.BytesIO()
    if file_meta:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    else:
        del dataset.file_meta
        dcmwrite(buffer, dataset, implicit_vr=True, little_endian=True)
    return buffer.getvalue()
