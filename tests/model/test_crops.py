"""Region crops on real radiographs, against a plain per-crop pad + slice + interpolate reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model import crops
from model.anatomy import validate_regions
from model.catalogue import REGION_NAMES
from model.crops import crop_regions, normalise, span_coverage, whole_image
from model.errors import RegionError
from model.preprocessing import CROP_SIZE, IMAGENET_STD, PAD_VALUE
from model.region_derivation import derive_regions

# crop_regions uses the same filter weights as F.interpolate(antialias=True); what is left is float32
# rounding in a different summation order: measured below 5e-5 in normalised units (1e-5 of the grey
# range) on the bundled radiographs.
TOLERANCE = 1e-4


def load_grey(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)


def reference_crop(image: torch.Tensor, box) -> torch.Tensor:
    """The crop as REFERENCE_NOTES describe it, one box at a time (integer boxes)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = image.shape
    margin = max(0, -x1, -y1, x2 - width, y2 - height)
    padded = F.pad(image, (margin,) * 4, value=PAD_VALUE)
    cut = padded[y1 + margin:y2 + margin, x1 + margin:x2 + margin]
    resized = F.interpolate(cut[None, None], size=(CROP_SIZE, CROP_SIZE), mode="bilinear",
                            antialias=True, align_corners=False)
    return normalise(resized[0, 0])


def integer_box(box) -> list[int]:
    return [round(v) for v in box]


@pytest.fixture(scope="module")
def radiograph(sample_cases):
    case = sample_cases[0]
    return load_grey(case.image_path), case


def test_boxes_inside_the_image_match_the_reference(sample_cases):
    for case in sample_cases[:3]:
        image = load_grey(case.image_path)
        height, width = image.shape
        boxes = [integer_box(case.right_lung), integer_box(case.left_lung),
                 [width // 2 - 20, height // 2 - 30, width // 2 + 20, height // 2 + 30],  # enlarged
                 [0, 0, width, height]]  # shrunk by more than 2
        crops = crop_regions([image], torch.tensor([boxes], dtype=torch.float32))
        for box, crop in zip(boxes, crops[0]):
            torch.testing.assert_close(crop, reference_crop(image, box), atol=TOLERANCE, rtol=0)


def test_large_radiograph_shrunk_by_four_matches_the_reference(shared_data):
    image = load_grey(shared_data / "jsrt" / "images" / "JPCLN001.jpg")
    boxes = [[60, 100, 540, 1000], [0, 0, 1024, 1024]]
    crops = crop_regions([image], torch.tensor([boxes]))
    for box, crop in zip(boxes, crops[0]):
        torch.testing.assert_close(crop, reference_crop(image, box), atol=TOLERANCE, rtol=0)


def test_part_of_a_box_outside_the_image_is_the_pad_value(radiograph):
    image, case = radiograph
    _, y1, _, y2 = integer_box(case.right_lung)
    box = [-112, y1, 112, y2]  # left half outside the image, one output column per input pixel
    crop = crop_regions([image], torch.tensor([[box]]))[0, 0]
    pad = normalise(torch.full((1, 1), PAD_VALUE))
    outside = crop[:, :, :112]  # output column j reads pixel j - 112 only
    assert torch.equal(outside, pad.expand_as(outside))
    assert not torch.equal(crop[:, :, 112:], pad.expand_as(crop[:, :, 112:]))
    torch.testing.assert_close(crop, reference_crop(image, box), atol=TOLERANCE, rtol=0)


def test_a_client_box_half_outside_the_image_is_zero_padded_not_stretched(radiograph):
    image, case = radiograph
    height, width = image.shape
    x1, y1, x2, y2 = integer_box(case.right_lung)
    half = (x2 - x1) // 2
    box = (-half, y1, x2 - x1 - half, y2)  # the lung's width, its left half outside the image
    regions = dict(derive_regions(case.right_lung, case.left_lung, width, height), **{"right lung": box})

    boxes = validate_regions(regions, width, height)
    crop = crop_regions([image], torch.from_numpy(boxes)[None])[0, REGION_NAMES.index("right lung")]

    assert tuple(boxes[REGION_NAMES.index("right lung")]) == box
    torch.testing.assert_close(crop, reference_crop(image, box), atol=TOLERANCE, rtol=0)
    stretched = reference_crop(image, (0, y1, box[2], y2))  # what clipping the box first would give
    assert (crop - stretched).abs().mean() > 0.1
    pad = normalise(torch.full((1, 1), PAD_VALUE))
    outside = crop[:, :, : CROP_SIZE * half // (x2 - x1) - 1]
    torch.testing.assert_close(outside, pad.expand_as(outside))


def test_images_of_different_sizes_in_one_batch(sample_cases):
    first, second = sample_cases[0], sample_cases[2]
    images = [load_grey(first.image_path), load_grey(second.image_path)]
    assert images[0].shape != images[1].shape
    boxes = torch.tensor([[integer_box(first.right_lung), integer_box(first.left_lung)],
                          [integer_box(second.right_lung), integer_box(second.left_lung)]])
    crops = crop_regions(images, boxes)
    assert crops.shape == (2, 2, 3, CROP_SIZE, CROP_SIZE) and crops.dtype == torch.float32
    for index, image in enumerate(images):
        alone = crop_regions([image], boxes[index:index + 1])[0]
        torch.testing.assert_close(crops[index], alone, atol=1e-6, rtol=0)
        for box, crop in zip(boxes[index].tolist(), crops[index]):
            torch.testing.assert_close(crop, reference_crop(image, box), atol=TOLERANCE, rtol=0)


def test_regions_resampled_a_few_at_a_time_equal_one_pass(radiograph, monkeypatch):
    image, case = radiograph
    height, width = image.shape
    boxes = torch.tensor([[case.right_lung, case.left_lung, [0, 0, width, height], [5, 7, width // 2, height // 3]]])
    one_pass = crop_regions([image], boxes)
    monkeypatch.setattr(crops, "PASS_BUDGET_BYTES", 1)  # one region per pass
    assert crops._regions_per_pass(boxes.double(), width) == 1
    torch.testing.assert_close(crop_regions([image], boxes), one_pass, atol=1e-6, rtol=0)


def test_batch_tensor_and_image_list_give_the_same_crops(radiograph):
    image, case = radiograph
    boxes = torch.tensor([[case.right_lung, case.left_lung]] * 2)
    from_tensor = crop_regions(torch.stack([image, image]), boxes)
    from_list = crop_regions([image, image], boxes.double())
    assert from_tensor.shape == (2, 2, 3, CROP_SIZE, CROP_SIZE) and from_tensor.dtype == torch.float32
    assert torch.equal(from_tensor, from_list)


@pytest.mark.parametrize("box", [[150.0, 90.0, 290.0, 300.0], [150.3, 89.6, 290.7, 300.2]])
def test_crop_ignores_pixels_outside_its_box(radiograph, box):
    image, _ = radiograph
    x1, y1, x2, y2 = box
    centres_y = torch.arange(image.shape[0]) + 0.5
    centres_x = torch.arange(image.shape[1]) + 0.5
    inside = (((centres_y >= y1) & (centres_y < y2))[:, None]
              & ((centres_x >= x1) & (centres_x < x2))[None, :])
    changed = torch.where(inside, image, torch.rand(image.shape, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(changed, image)
    boxes = torch.tensor([[box]])
    assert torch.equal(crop_regions([changed], boxes), crop_regions([image], boxes))


def test_fractional_box_lies_between_its_integer_neighbours(radiograph):
    image, _ = radiograph
    boxes = torch.tensor([[[150.0, 90.0, 290.0, 300.0], [150.5, 90.0, 290.5, 300.0],
                           [151.0, 90.0, 291.0, 300.0]]])
    left, middle, right = crop_regions([image], boxes)[0]
    assert (middle - (left + right) / 2).abs().mean() < 0.3 * (right - left).abs().mean()


def test_whole_image(sample_cases):
    images = [load_grey(sample_cases[0].image_path), load_grey(sample_cases[2].image_path)]
    resized = whole_image(images)
    assert resized.shape == (2, 3, CROP_SIZE, CROP_SIZE) and resized.dtype == torch.float32
    for image, crop in zip(images, resized):
        height, width = image.shape
        torch.testing.assert_close(crop, reference_crop(image, [0, 0, width, height]), atol=TOLERANCE, rtol=0)


def test_grey_is_replicated_and_imagenet_normalised():
    crop = crop_regions([torch.full((40, 60), 0.5)], torch.tensor([[[0, 0, 60, 40]]]))[0, 0]
    expected = [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    torch.testing.assert_close(crop.mean((1, 2)), torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(crop.std((1, 2)), torch.zeros(3), atol=1e-6, rtol=0)


def test_degenerate_boxes_are_region_errors_and_bad_shapes_value_errors(radiograph):
    image, _ = radiograph
    with pytest.raises(RegionError, match="image 0 box 1.*under one pixel"):
        crop_regions([image], torch.tensor([[[0, 0, 50, 50], [10, 10, 10.5, 80]]]))
    with pytest.raises(RegionError, match="not finite"):
        crop_regions([image], torch.tensor([[[0, 0, float("nan"), 50]]]))
    with pytest.raises(ValueError, match=r"boxes must be a tensor \(1, R, 4\)"):
        crop_regions([image], torch.tensor([[0, 0, 50, 50]]))
    with pytest.raises(ValueError, match="2-D float tensor"):
        crop_regions([(image * 255).to(torch.uint8)], torch.tensor([[[0, 0, 50, 50]]]))


def test_span_coverage_is_the_crop_of_the_spans_indicator_image():
    height, width = 300, 200
    boxes = torch.tensor([[10.5, 20.0, 150.25, 290.0], [-30.0, -10.0, 80.0, 60.0], [120.0, 200.0, 260.0, 340.0]])
    span = (40, 50, 170, 260)  # [col0, row0, col1, row1]
    indicator = torch.zeros(height, width)
    indicator[span[1]:span[3], span[0]:span[2]] = 1.0
    blank = torch.zeros(height, width)
    # the crop is affine in the image: its slope along the indicator is the coverage (padding cancels)
    def grey(image: torch.Tensor) -> torch.Tensor:
        return crop_regions([image], boxes[None])[0, :, 0] * IMAGENET_STD[0]

    expected = grey(indicator) - grey(blank)
    coverage = span_coverage(boxes, span, height, width)
    assert coverage.shape == (3, CROP_SIZE, CROP_SIZE)
    torch.testing.assert_close(coverage, expected, atol=1e-5, rtol=0)
    assert float(coverage.max()) == pytest.approx(1.0, abs=1e-6) and float(coverage.min()) == 0.0
