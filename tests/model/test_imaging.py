"""Decoding uploads: real DICOM/PNG/JPEG radiographs, their variants, and every refusal."""

from __future__ import annotations

import ast
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.filereader
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

import model.dicom_decoding
import model.imaging
from model.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from model.imaging import DecodedImage, ImageLimits, decode_image, sniff_format
from tests.dicom_factory import (
    PATIENT_ID,
    PATIENT_NAME,
    chest_dataset,
    dicom_bytes,
    dicom_file_bytes,
    encapsulated_dicom_bytes,
)

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
# Compressed pixel data written by Pillow: transfer syntax, Pillow format and save options.
CODESTREAMS = {
    "JPEG baseline": (JPEGBaseline8Bit, "JPEG", {"quality": 95}),
    "JPEG 2000": (JPEG2000Lossless, "JPEG2000", {"irreversible": False, "no_jp2": True}),
    "JPEG 2000 in a JP2 file": (JPEG2000Lossless, "JPEG2000", {"irreversible": False}),
}


@pytest.fixture
def dicom_parses(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The source of every data set pydicom parses during the test: every dcmread goes through
    pydicom.filereader.read_partial, however the caller imported dcmread."""
    sources, read_partial = [], pydicom.filereader.read_partial
    def counting(source, *args, **kwargs):
        sources.append(source)
        return read_partial(source, *args, **kwargs)
    monkeypatch.setattr(pydicom.filereader, "read_partial", counting)
    return sources


def imported_modules(module) -> set[str]:
    """What `module`'s source imports, wherever in the file: modules, and "module.name" for
    `from module import name`."""
    imported = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return imported


def assert_unit_image(image: DecodedImage, width: int, height: int) -> None:
    assert image.pixels.dtype == np.float32
    assert (image.width, image.height) == (width, height) == image.pixels.shape[::-1]
    assert np.isfinite(image.pixels).all()
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0


def min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def compressed_dicom(pixels: np.ndarray, codec: str, rows: int, columns: int) -> bytes:
    """A DICOM of `pixels` compressed with one of CODESTREAMS, its header declaring rows x columns."""
    syntax, image_format, options = CODESTREAMS[codec]
    codestream = encode(Image.fromarray(pixels), image_format, **options)
    return encapsulated_dicom_bytes(syntax, [codestream], rows=rows, columns=columns)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` 8-bit grey pixels but carries no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def sample_path(sample_cases):
    return sample_cases[0].image_path


@pytest.fixture(scope="module")
def sample_grey(sample_path) -> np.ndarray:
    """The first bundled radiograph as 8-bit grey, as PIL decodes it."""
    with Image.open(sample_path) as image:
        return np.asarray(image.convert("L"))


@pytest.fixture(scope="module")
def sample_12bit(sample_grey) -> np.ndarray:
    """The bundled radiograph spread over 12 bits, as a CR detector stores it."""
    return sample_grey.astype(np.uint16) * 16


# --- the shared real DICOM and PNG files ------------------------------------------------------

def test_siim_jpeg_baseline_dicom_decodes_with_its_identifiers(shared_data):
    path = shared_data / "dicom" / "siim_cr_pa_jpeg_baseline.dcm"
    image = decode_image(path)
    assert_unit_image(image, 1024, 1024)
    assert (image.source_format, image.bit_depth) == ("dicom", 8)
    stored = pydicom.dcmread(path)
    np.testing.assert_allclose(image.pixels, min_max(stored.pixel_array), atol=1e-6)
    info = image.dicom
    assert info.sop_instance_uid == stored.SOPInstanceUID
    assert info.study_instance_uid == stored.StudyInstanceUID
    assert info.series_instance_uid == stored.SeriesInstanceUID
    assert (info.modality, info.view_position, info.body_part_examined) == ("CR", "PA", "CHEST")
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.50"  # JPEG baseline
    assert info.photometric_interpretation == "MONOCHROME2"


def test_siim_monochrome1_is_the_inverse_of_the_same_pixels_as_monochrome2(shared_data):
    baseline = decode_image(shared_data / "dicom" / "siim_cr_pa_jpeg_baseline.dcm")
    inverted = decode_image(shared_data / "dicom" / "siim_cr_pa_monochrome1.dcm")
    assert inverted.dicom.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(inverted.pixels, 1.0 - baseline.pixels, atol=1e-6)


def test_dog_lateral_decodes_windowed_and_reports_what_a_caller_needs_to_refuse_it(shared_data):
    path = shared_data / "dicom" / "not_chest_dx_lateral_dog.dcm"
    image = decode_image(path)
    assert_unit_image(image, 211, 169)
    assert (image.dicom.modality, image.dicom.view_position) == ("DX", None)
    assert image.dicom.body_part_examined == "THORAX"
    # MONOCHROME1 with window centre 128 / width 256: DICOM linear window, then inverted.
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = 1.0 - np.clip((stored - 127.5) / 255.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    assert "Dog^AVeryGood" not in repr(image.dicom) and "123456" not in repr(image.dicom)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_truncated_real_jpeg_baseline_dicom_is_corrupt(shared_data):
    data = (shared_data / "dicom" / "siim_cr_pa_jpeg_baseline.dcm").read_bytes()
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_nih_png_decodes_to_its_pixels(shared_data, name):
    path = shared_data / "nih-fullres" / name
    with Image.open(path) as stored:
        expected = np.asarray(stored.convert("L"), dtype=np.float32) / 255.0
    image = decode_image(path)
    assert_unit_image(image, expected.shape[1], expected.shape[0])
    assert (image.source_format, image.bit_depth, image.dicom) == ("png", 8, None)
    np.testing.assert_array_equal(image.pixels, expected)


# --- the bundled radiographs and their re-encodings --------------------------------------------

def test_bundled_jpeg_decodes_from_path_and_bytes(sample_path, sample_grey):
    from_path = decode_image(sample_path)
    from_bytes = decode_image(sample_path.read_bytes())
    assert_unit_image(from_path, sample_grey.shape[1], sample_grey.shape[0])
    assert (from_path.source_format, from_path.bit_depth) == ("jpeg", 8)
    np.testing.assert_array_equal(from_path.pixels, sample_grey / np.float32(255.0))
    np.testing.assert_array_equal(from_bytes.pixels, from_path.pixels)


@pytest.mark.parametrize("variant, bit_depth", [
    ("grey 8-bit", 8), ("grey 16-bit", 16), ("RGB", 8), ("RGBA", 8), ("palette", 8)])
def test_png_variants_decode_to_the_same_grey(sample_grey, variant, bit_depth):
    grey = Image.fromarray(sample_grey)
    image = {
        "grey 8-bit": grey,
        "grey 16-bit": Image.fromarray(sample_grey.astype(np.uint16) * 257),  # v/255 == 257v/65535
        "RGB": grey.convert("RGB"),
        "RGBA": grey.convert("RGBA"),
        "palette": grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
    }[variant]
    decoded = decode_image(encode(image, "PNG"))
    assert (decoded.source_format, decoded.bit_depth) == ("png", bit_depth)
    assert_unit_image(decoded, sample_grey.shape[1], sample_grey.shape[0])
    # An adaptive palette merges a few close greys; every other variant is exact.
    tolerance = 2 / 255 if variant == "palette" else 1e-6
    np.testing.assert_allclose(decoded.pixels, sample_grey / 255.0, atol=tolerance)


def test_rgb_jpeg_decodes_to_nearly_the_same_grey(sample_grey):
    decoded = decode_image(encode(Image.fromarray(sample_grey).convert("RGB"), "JPEG"))
    assert decoded.source_format == "jpeg"
    assert np.abs(decoded.pixels - sample_grey / 255.0).mean() < 0.01


# --- DICOM variants written from a bundled radiograph -----------------------------------------

def test_dicom_rescaled_16bit_monochrome2_is_min_max_of_the_modality_values(sample_12bit):
    image = decode_image(dicom_bytes(sample_12bit, bits_stored=12, rescale=(2.0, -1024.0)))
    assert_unit_image(image, sample_12bit.shape[1], sample_12bit.shape[0])
    assert image.bit_depth == 12 and image.dicom.bits_stored == 12
    np.testing.assert_allclose(image.pixels, min_max(sample_12bit), atol=1e-6)
    assert PATIENT_NAME not in repr(image.dicom) and PATIENT_ID not in repr(image.dicom)


def test_dicom_monochrome1_is_inverted_so_bone_stays_bright(sample_12bit):
    image = decode_image(dicom_bytes(sample_12bit, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(image.pixels, 1.0 - min_max(sample_12bit), atol=1e-6)


def test_dicom_window_centre_and_width_are_applied_in_modality_units(sample_12bit):
    slope, intercept, centre, width = 2.0, -1024.0, 3072.0, 4000.0
    image = decode_image(dicom_bytes(sample_12bit, bits_stored=12, rescale=(slope, intercept),
                                     window=(centre, width)))
    modality = sample_12bit * slope + intercept
    expected = np.clip((modality - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    # The window clips at both ends, so min-max scaling could not pass this test.
    assert (expected == 0).mean() > 0.01 and (expected == 1).mean() > 0.01
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_dicom_voi_lut_is_applied_and_scaled_by_the_range_of_its_entries(sample_12bit):
    lut = np.rint(4095 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)  # a gamma curve
    image = decode_image(dicom_bytes(sample_12bit, bits_stored=12, voi_lut=lut))
    assert sample_12bit.max() < 4095  # so min-max over the output could not pass this test
    np.testing.assert_allclose(image.pixels, lut[sample_12bit] / 4095.0, atol=1e-6)


def test_dicom_rle_lossless_decodes_to_the_uncompressed_pixels(sample_12bit):
    plain = decode_image(dicom_bytes(sample_12bit, bits_stored=12))
    compressed = decode_image(dicom_bytes(sample_12bit, bits_stored=12, rle=True))
    assert compressed.dicom.transfer_syntax == pydicom.uid.RLELossless
    np.testing.assert_array_equal(compressed.pixels, plain.pixels)


def test_dicom_without_preamble_or_file_meta_is_read(sample_12bit):
    bare = dicom_bytes(sample_12bit, bits_stored=12, file_meta=False)
    assert bare[128:132] != b"DICM" and sniff_format(bare)[0] == "dicom"
    image = decode_image(bare)
    assert image.dicom.transfer_syntax is None and image.dicom.modality == "CR"
    np.testing.assert_allclose(image.pixels, min_max(sample_12bit), atol=1e-6)


def test_rgb_dicom_is_converted_to_grey(sample_grey):
    image = decode_image(dicom_bytes(np.stack([sample_grey] * 3, axis=-1), photometric="RGB"))
    assert image.bit_depth == 8
    np.testing.assert_allclose(image.pixels, sample_grey / 255.0, atol=1e-5)


def test_constant_dicom_decodes_to_zeros_not_nan():
    image = decode_image(dicom_bytes(np.full((32, 48), 700, dtype=np.uint16), bits_stored=12))
    assert_unit_image(image, 48, 32)
    assert not image.pixels.any()


@pytest.mark.parametrize("variant", [{}, {"rle": True}, {"file_meta": False}],
                         ids=["part 10", "rle", "bare data set"])
def test_a_dicom_is_parsed_once_from_sniffing_to_its_header_and_pixels(sample_12bit, dicom_parses, variant):
    image = decode_image(dicom_bytes(sample_12bit, bits_stored=12, **variant))
    assert len(dicom_parses) == 1
    assert image.dicom.modality == "CR" and image.pixels.shape == sample_12bit.shape


def test_dicom_over_the_pixel_limit_is_refused_before_its_pixels_are_decoded(
        sample_grey, monkeypatch, dicom_parses):
    decoded = property(lambda _: pytest.fail("the pixel data were decoded"))
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", decoded)
    with pytest.raises(ImageTooLargeError, match="more than the limit"):
        decode_image(dicom_bytes(sample_grey), ImageLimits(max_pixels=sample_grey.size - 1))
    assert len(dicom_parses) == 1


# --- compressed DICOM: the size its codestream states ------------------------------------------

@pytest.mark.parametrize("codec", CODESTREAMS)
def test_compressed_dicom_whose_codestream_matches_its_header_decodes(sample_grey, codec):
    height, width = sample_grey.shape
    image = decode_image(compressed_dicom(sample_grey, codec, height, width))
    assert_unit_image(image, width, height)
    assert image.dicom.transfer_syntax == CODESTREAMS[codec][0]
    assert np.abs(image.pixels - min_max(sample_grey)).mean() < (0.01 if codec == "JPEG baseline" else 1e-6)


@pytest.mark.parametrize("codec", CODESTREAMS)
@pytest.mark.parametrize("rows_factor, columns_factor", [(2, 0.5), (0.5, 0.5), (2, 2)],
                         ids=["same pixel count", "smaller", "larger"])
def test_compressed_dicom_whose_header_lies_about_its_size_is_refused_before_decoding(
        sample_grey, codec, rows_factor, columns_factor):
    height, width = sample_grey.shape
    rows, columns = int(height * rows_factor), int(width * columns_factor)
    data = compressed_dicom(sample_grey, codec, rows, columns)
    message = (f"declares {columns} x {rows} pixels .*, but its compressed pixel data hold "
               f"{width} x {height} pixels")
    with pytest.raises(CorruptImageError, match=message):
        decode_image(data)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "GDCMJ2K_TextGBR.dcm"],
                         ids=["12-bit JPEG", "JPEG-LS", "JPEG 2000 in a JP2 file"])
def test_pydicom_compressed_files_decode_and_their_size_is_checked(name):
    dataset = pydicom.dcmread(get_testdata_file(name))
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    assert_unit_image(decode_image(dicom_file_bytes(dataset)), columns, rows)
    dataset.Rows, dataset.Columns = rows * 2, columns // 2  # the same number of pixels
    with pytest.raises(CorruptImageError, match=f"compressed pixel data hold {columns} x {rows} pixels"):
        decode_image(dicom_file_bytes(dataset))


def test_compressed_pixel_data_holding_more_frames_than_declared_are_refused(sample_grey):
    codestream = encode(Image.fromarray(sample_grey), "JPEG")
    height, width = sample_grey.shape
    data = encapsulated_dicom_bytes(JPEGBaseline8Bit, [codestream, codestream], rows=height, columns=width)
    with pytest.raises(CorruptImageError, match="declares one frame, but its compressed pixel data hold more"):
        decode_image(data)


@pytest.mark.parametrize("codec, codestream", [
    ("JPEG baseline", b"\x89PNG\r\n\x1a\n not a JPEG codestream"),
    ("JPEG 2000", b"\xff\x4f\xff\x51\x00\x29"),  # cut inside its SIZ segment
], ids=["PNG as JPEG", "JPEG 2000 cut in SIZ"])
def test_compressed_pixel_data_without_a_readable_size_are_refused(codec, codestream):
    data = encapsulated_dicom_bytes(CODESTREAMS[codec][0], [codestream], rows=8, columns=8)
    with pytest.raises(CorruptImageError, match="no readable JPEG .* header"):
        decode_image(data)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm"],
                         ids=["16-bit grey", "8-bit RGB", "16-bit RGB"])
def test_pydicom_rle_files_pass_the_segment_check_and_decode(name):
    dataset = pydicom.dcmread(get_testdata_file(name))
    assert_unit_image(decode_image(dicom_file_bytes(dataset)), int(dataset.Columns), int(dataset.Rows))


def test_rle_segment_decoding_to_more_than_the_header_declares_is_refused():
    """Two bytes of an RLE segment repeat a byte 128 times: these 8 kB would decode to 512 kB, and
    64 MB (the upload limit) to 4 GB, however small the image the header declares."""
    header = struct.pack("<16I", 1, 64, *[0] * 14)  # one segment, starting after the header
    frame = header + b"\x81\x00" * 4096
    with pytest.raises(CorruptImageError, match="RLE pixel data decode to more than the 100 bytes"):
        decode_image(encapsulated_dicom_bytes(RLELossless, [frame], rows=10, columns=10))


@pytest.mark.filterwarnings("ignore:The number of bytes of pixel data is sufficient:UserWarning")
def test_native_pixel_data_longer_than_one_frame_are_refused():
    """pydicom returns the frames it finds in pixel data longer than the header's one frame; three
    columns of them would pass as RGB, and the image would come out 80 x 4."""
    dataset = chest_dataset(np.arange(80 * 3, dtype=np.uint8).reshape(80, 3))
    dataset.PixelData = dataset.PixelData * 4
    with pytest.raises(CorruptImageError, match=r"decode to an array of shape \(4, 80, 3\)"):
        decode_image(dicom_file_bytes(dataset))


def test_dicom_decoding_is_called_by_imaging_never_the_reverse():
    assert "model.dicom_decoding" in imported_modules(model.imaging)
    assert "model.imaging" not in imported_modules(model.dicom_decoding)


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
@pytest.mark.parametrize("rle", [False, True], ids=["native", "rle"])
def test_dicom_cut_in_the_pixel_data_is_corrupt(sample_12bit, rle):
    data = dicom_bytes(sample_12bit, bits_stored=12, rle=rle)
    with pytest.raises(CorruptImageError, match="DICOM .*truncated"):
        decode_image(data[:-1000])


def test_dicom_cut_before_the_pixel_data_is_corrupt(sample_12bit):
    data = dicom_bytes(sample_12bit, bits_stored=12)
    with pytest.raises(CorruptImageError, match="pixel data are missing or truncated"):
        decode_image(data[: data.rindex(PIXEL_DATA_TAG)])


def test_dicom_cut_inside_a_header_element_is_corrupt(sample_12bit):
    """pydicom keeps the shorter value of the element the file ends in, and reads no Rows/Columns."""
    data = dicom_bytes(sample_12bit, bits_stored=12)
    with pytest.raises(CorruptImageError, match=r"truncated: it ends inside element \(0010,0020\)"):
        decode_image(data[: data.index(PATIENT_ID.encode()) + 3])


@pytest.mark.parametrize("preamble", [True, False], ids=["part 10", "without preamble"])
def test_deflated_dicom_is_refused_before_pydicom_inflates_it(preamble):
    dataset = chest_dataset(np.zeros((2000, 2000), dtype=np.uint16), bits_stored=12)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = dicom_file_bytes(dataset)
    assert len(data) < 10_000  # 8 MB of pixels: pydicom would inflate all of it, whatever its size
    with pytest.raises(UnsupportedImageError, match="deflated DICOM files are not supported"):
        decode_image(data if preamble else data[132:])


def test_multi_frame_dicom_is_unsupported(sample_grey):
    data = dicom_bytes(np.stack([sample_grey, sample_grey]))
    with pytest.raises(UnsupportedImageError, match="multi-frame .*2 frames"):
        decode_image(data)


def test_dicom_in_a_transfer_syntax_without_any_decoder_is_unsupported(sample_grey):
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(sample_grey)))
    dataset.PixelData = encapsulate([dataset.PixelData])
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    with pytest.raises(UnsupportedImageError, match="transfer syntax 'MPEG2 .*' cannot be decoded"):
        decode_image(dicom_file_bytes(dataset))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_are_corrupt(sample_grey, image_format):
    data = encode(Image.fromarray(sample_grey), image_format)
    with pytest.raises(CorruptImageError, match=f"{image_format} .*truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("data, problem", [
    (b"", "empty"),
    (np.random.default_rng(0).bytes(4096), "not a DICOM, PNG or JPEG"),
])
def test_empty_and_random_bytes_are_unsupported(data, problem):
    with pytest.raises(UnsupportedImageError, match=problem):
        decode_image(data)


def test_gif_is_unsupported(sample_grey):
    with pytest.raises(UnsupportedImageError, match="not a DICOM, PNG or JPEG"):
        decode_image(encode(Image.fromarray(sample_grey), "GIF"))


def test_png_wider_than_the_side_limit_is_refused_before_decoding():
    data = encode(Image.new("L", (60_000, 1)), "PNG")
    with pytest.raises(ImageTooLargeError, match="60000 x 1 pixels.*limit of 16384"):
        decode_image(data)


def test_png_header_declaring_ten_billion_pixels_is_refused_by_our_limit_not_pil():
    with pytest.raises(ImageTooLargeError, match="100000 x 100000 pixels.*limit of 16384"):
        decode_image(png_header_only(100_000, 100_000))


def test_pixel_limit_is_checked_for_png_and_dicom_headers(sample_grey):
    height, width = sample_grey.shape
    pixels = width * height
    limits = ImageLimits(max_pixels=pixels - 1)
    message = f"{width} x {height} = {pixels} pixels, more than the limit of {pixels - 1}"
    for data in (encode(Image.fromarray(sample_grey), "PNG"), dicom_bytes(sample_grey)):
        with pytest.raises(ImageTooLargeError, match=message):
            decode_image(data, limits)


def test_byte_limit_is_checked_for_bytes_and_paths(sample_path):
    size = sample_path.stat().st_size
    limits = ImageLimits(max_bytes=size - 1)
    message = f"{size} bytes, more than the limit of {size - 1} bytes"
    for source in (sample_path, sample_path.read_bytes()):
        with pytest.raises(ImageTooLargeError, match=message):
            decode_image(source, limits)
