"""`chextriev bench peak-memory`: the worst allowed uploads, decoded as a search decodes them, and the
report of their peak memory, each measured in a child process of its own."""

from __future__ import annotations

import json
import os

import pytest

from model.imaging import ImageLimits, decode_image
from service.cli import main
from service.peak_memory import (
    FORMATS,
    PeakMemoryConfig,
    encode_upload,
    image_size,
    run_peak_memory,
    synthetic_radiograph,
)
from tests.service.service_setup import ServiceSetup, service_setup  # noqa: F401 - service_setup is a fixture

SMALL_LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=300_000)


@pytest.mark.parametrize("limits, shape, size", [
    (ImageLimits(), "square", (7071, 7071)),
    (ImageLimits(), "widest", (16384, 3051)),
    (ImageLimits(), "reference", (512, 512)),
    (ImageLimits(max_pixels=10_000, max_side=50), "square", (50, 50)),
    (ImageLimits(max_pixels=10_000, max_side=50), "widest", (50, 50)),
], ids=["square at the defaults", "widest at the defaults", "reference", "square, side-limited",
        "widest, side-limited"])
def test_image_sizes_have_the_most_pixels_the_limits_allow(limits, shape, size):
    width, height = image_size(limits, shape)
    assert (width, height) == size
    assert width * height <= limits.max_pixels and max(width, height) <= limits.max_side


@pytest.mark.parametrize("image_format, source_format, bit_depth", [
    ("png-16bit", "png", 16), ("jpeg-8bit", "jpeg", 8), ("dicom-16bit-jpeg2000", "dicom", 16)])
def test_each_upload_is_a_search_upload_at_the_size_it_was_made(image_format, source_format, bit_depth):
    width, height = image_size(SMALL_LIMITS, "widest")
    upload = encode_upload(synthetic_radiograph(width, height), image_format)
    image = decode_image(upload, SMALL_LIMITS)
    assert (image.width, image.height, image.source_format, image.bit_depth) == (width, height, source_format,
                                                                                bit_depth)
    assert len(upload) <= SMALL_LIMITS.max_bytes and 0.2 < image.pixels.mean() < 0.8
    if image.dicom is not None:
        assert (image.dicom.modality, image.dicom.transfer_syntax) == ("CR", "1.2.840.10008.1.2.4.90")


def test_report_measures_each_case_in_a_process_of_its_own(service_setup: ServiceSetup, tmp_path):
    out = tmp_path / "reports" / "peak-memory.json"
    config = PeakMemoryConfig(service_setup.checkpoint, out, SMALL_LIMITS, formats=FORMATS[:1],
                              shapes=("reference", "square"))
    report = run_peak_memory(config)
    assert json.loads(out.read_text()) == report and os.listdir(out.parent) == [out.name]
    baseline = report["baseline"]["peak_rss_bytes"]
    cases = report["cases"]
    assert [(case["format"], case["shape"], case["width"]) for case in cases] == [
        ("png-16bit", "reference", 512), ("png-16bit", "square", 547)]
    pids = {report["baseline"]["pid"]} | {case["pid"] for case in cases}
    assert len(pids) == 3 and os.getpid() not in pids
    for case in cases:
        assert case["over_baseline_bytes"] == case["peak_rss_bytes"] - baseline
        assert case["peak_rss_bytes"] > case["decoded_float32_bytes"] == case["width"] * case["height"] * 4
        assert 0 < case["file_bytes"] <= SMALL_LIMITS.max_bytes


def test_command_reports_a_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "peak-memory.json"
    code = main(["bench", "peak-memory", "--checkpoint", str(tmp_path / "none"), "--out", str(out),
                 "--format", "png-16bit", "--shape", "reference"])
    assert code == 1 and "error:" in capsys.readouterr().err and not out.exists()
