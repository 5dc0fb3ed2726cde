"""Peak memory of one search at the upload limits: the largest image the service accepts, as a
16-bit PNG, an 8-bit JPEG and a 16-bit JPEG 2000 DICOM, square and as wide as allowed, beside a
512 x 512 reference image (what any search costs).

Each case runs in a fresh child process, which inherits nothing: it loads the model, reads the upload,
then decodes it, checks its regions (18 boxes covering the whole image, the widest crops allowed) and
embeds it as `POST /search` does. Its peak resident set (`ru_maxrss`) is compared with that of a child
that only loads the model. The JSON report is rewritten atomically after each case.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from model.anatomy import parse_regions, validate_regions
from model.catalogue import REGION_NAMES
from model.embedder import Embedder
from model.fileio import atomic_write_bytes
from model.imaging import ImageLimits
from service.search_service import decode_query

FORMATS = ("png-16bit", "jpeg-8bit", "dicom-16bit-jpeg2000")
SHAPES = ("reference", "square", "widest")
REFERENCE_SIDE = 512
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
JPEG_QUALITY = 95
# 16-bit grey, with the rescale and the window (over all its values) a CR/DX header typically carries.
STORED_MAX = 65535
RESCALE = (1.0, -1024.0)  # slope, intercept
WINDOW = (31744.0, 65536.0)  # centre, width


@dataclass(frozen=True)
class PeakMemoryConfig:
    """The checkpoint to embed with, the JSON report to write, the limits the service applies, and
    the upload formats and image shapes to measure."""

    checkpoint: Path
    out: Path
    limits: ImageLimits
    formats: tuple[str, ...] = FORMATS
    shapes: tuple[str, ...] = SHAPES


@dataclass(frozen=True)
class CaseResult:
    """One case's upload and what its child process used; bytes, as ru_maxrss reports them."""

    format: str
    shape: str
    width: int
    height: int
    file_bytes: int
    decoded_float32_bytes: int
    peak_rss_bytes: int
    over_baseline_bytes: int
    seconds: float
    pid: int


def run_peak_memory(config: PeakMemoryConfig) -> dict:
    """Measure the baseline, then every format and shape; the report, also written to `config.out`."""
    report: dict = {"checkpoint": str(config.checkpoint), "limits": asdict(config.limits), "cases": []}
    baseline, pid = _in_fresh_process(_model_only_peak, str(config.checkpoint))
    report["baseline"] = {"peak_rss_bytes": baseline, "pid": pid}
    _write(config.out, report)
    with tempfile.TemporaryDirectory(prefix="chextriev-peak-memory-") as work:
        for shape in config.shapes:
            pixels = synthetic_radiograph(*image_size(config.limits, shape))
            for image_format in config.formats:
                upload = Path(work) / f"{shape}-{image_format}"
                upload.write_bytes(encode_upload(pixels, image_format))
                report["cases"].append(asdict(_measure(config, upload, image_format, shape, baseline)))
                _write(config.out, report)
    return report


def _measure(config: PeakMemoryConfig, upload: Path, image_format: str, shape: str, baseline: int) -> CaseResult:
    """One search with `upload`, in a child process of its own."""
    width, height = image_size(config.limits, shape)
    peak, pid, seconds = _in_fresh_process(_search_peak, str(config.checkpoint), str(upload), width, height,
                                           config.limits)
    return CaseResult(image_format, shape, width, height, upload.stat().st_size, width * height * 4, peak,
                      peak - baseline, round(seconds, 2), pid)


def image_size(limits: ImageLimits, shape: str) -> tuple[int, int]:
    """(width, height) of a shape: the reference image, or the most pixels the limits allow, as
    square as possible or as wide."""
    if shape == "reference":
        side = min(REFERENCE_SIDE, math.isqrt(limits.max_pixels), limits.max_side)
        return side, side
    if shape == "square":
        side = min(math.isqrt(limits.max_pixels), limits.max_side)
        return side, min(limits.max_pixels // side, limits.max_side)
    width = min(limits.max_side, limits.max_pixels)
    return width, min(limits.max_pixels // width, limits.max_side)


def synthetic_radiograph(width: int, height: int) -> np.ndarray:
    """Smooth 16-bit grey values: they compress well, so an upload at the pixel limit also fits the
    byte limit; decoding them costs what any image of their size costs."""
    x = np.linspace(0.0, 8 * np.pi, width, dtype=np.float32)
    y = np.linspace(0.0, 6 * np.pi, height, dtype=np.float32)
    grey = 0.5 + 0.4 * np.outer(np.cos(y), np.sin(x))
    return np.round(grey * STORED_MAX).astype(np.uint16)


def encode_upload(pixels: np.ndarray, image_format: str) -> bytes:
    """The file a client would upload: one of FORMATS."""
    buffer = io.BytesIO()
    if image_format == "png-16bit":
        Image.fromarray(pixels).save(buffer, "PNG")
    elif image_format == "jpeg-8bit":
        Image.fromarray((pixels >> 8).astype(np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        _jpeg2000_dicom(pixels).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def whole_image_regions(width: int, height: int) -> str:
    """The regions JSON of 18 boxes that each cover the whole image."""
    return json.dumps({name: [0, 0, width, height] for name in REGION_NAMES})


def _jpeg2000_dicom(pixels: np.ndarray) -> Dataset:
    """A CR chest PA data set without patient data holding `pixels` as lossless JPEG 2000."""
    dataset = Dataset()
    dataset.SOPClassUID = CR_IMAGE_STORAGE
    dataset.Modality, dataset.ViewPosition, dataset.BodyPartExamined = "CR", "PA", "CHEST"
    dataset.set_pixel_data(pixels, "MONOCHROME2", 16)
    dataset.RescaleSlope, dataset.RescaleIntercept = RESCALE
    dataset.WindowCenter, dataset.WindowWidth = WINDOW
    codestream = io.BytesIO()
    Image.fromarray(pixels).save(codestream, "JPEG2000", irreversible=False, no_jp2=True)
    dataset.PixelData = encapsulate([codestream.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return dataset


def _in_fresh_process(function, *args):
    """`function(*args)` in a new spawned interpreter, which ends when it returns."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(function, *args).result()


def _model_only_peak(checkpoint: str) -> tuple[int, int]:
    """(peak RSS, pid) of a process that only loads the model."""
    Embedder.from_checkpoint(checkpoint)
    return _peak_rss_bytes(), os.getpid()


def _search_peak(checkpoint: str, upload: str, width: int, height: int, limits: ImageLimits) -> tuple[int, int, float]:
    """(peak RSS, pid, seconds of decoding and embedding) of a process that loads the model and
    searches with the `width` x `height` upload, decoded, checked and embedded as a search does."""
    embedder = Embedder.from_checkpoint(checkpoint)
    started = time.perf_counter()
    regions = parse_regions(whole_image_regions(width, height))
    image = decode_query(Path(upload).read_bytes(), limits)
    embedder.embed(image.pixels, validate_regions(regions, image.width, image.height))
    return _peak_rss_bytes(), os.getpid(), time.perf_counter() - started


def _peak_rss_bytes() -> int:
    """This process's peak resident set: ru_maxrss is in KiB on Linux, in bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _write(path: Path, report: dict) -> None:
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
