"""The device crops (roi_align, model.gpu_crops) and the batch feature runner (model.batch_features), run on
the CPU against the exact reference crops of model.crops.

Tolerances: roi_align averages ceil(scale) bilinear samples per output bin, where model.crops weighs a
triangle twice as wide, so single pixels at sharp edges can differ by a tenth of the grey range; averaged
over a crop the difference measured under 0.001 of the grey range on the bundled radiographs, and the
crops' cosines over 0.9997. The bounds below leave about a factor of five over those measurements, and
still fail for a crop shifted by one pixel. Backbone features amplify the finest detail: EfficientNet-Lite0
features of roi_align crops measured cosines of 0.987 (whole image) to the exact ones, hence 0.98.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.batch_features import BatchFeatures, exact_crops
from model.crops import crop_regions, whole_image
from model.feature_extractor import FeatureExtractor
from model.gpu_crops import roi_crops
from model.preprocessing import IMAGENET_STD
from trainer.demo.samples import sample_case_input

MEAN_GREY_DIFFERENCE = 0.005
MIN_CROP_COSINE = 0.999
MIN_FEATURE_COSINE = 0.98


def grey_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per crop (..., 3, S, S) of normalised crops, in grey units (channel 0)."""
    return ((a[..., 0, :, :] - b[..., 0, :, :]).abs() * IMAGENET_STD[0]).mean((-1, -2))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(-3), b.flatten(-3), dim=-1)


@pytest.fixture(scope="module")
def inputs(sample_cases):
    """Three bundled radiographs of different sizes: pixels and (18, 4) boxes."""
    return [sample_case_input(case) for case in sample_cases[:3]]


def as_canvas(pixels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 canvas (B, Hmax, Wmax) of the images at the top left, zeros elsewhere, and their sizes."""
    sizes = torch.tensor([image.shape for image in pixels])
    canvas = torch.zeros(len(pixels), *sizes.amax(0).tolist(), dtype=torch.uint8)
    for index, image in enumerate(pixels):
        canvas[index, : image.shape[0], : image.shape[1]] = torch.from_numpy(np.rint(image * 255).astype(np.uint8))
    return canvas, sizes


def test_device_crops_match_the_exact_crops_of_every_region(inputs):
    pixels = [torch.from_numpy(image) for image, _ in inputs]
    boxes = torch.as_tensor(np.stack([box for _, box in inputs]), dtype=torch.float32)
    canvas, _ = as_canvas([image for image, _ in inputs])
    fast, exact = roi_crops(canvas, boxes), crop_regions(pixels, boxes)
    assert fast.shape == exact.shape == (3, 18, 3, 224, 224)
    assert grey_difference(fast, exact).max() < MEAN_GREY_DIFFERENCE
    assert cosine(fast, exact).min() > MIN_CROP_COSINE
    shifted = roi_crops(canvas, boxes + torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert grey_difference(shifted, exact).max() > MEAN_GREY_DIFFERENCE, "the tolerance misses a one-pixel shift"


def test_device_crops_fill_the_parts_of_a_box_outside_the_image_with_the_pad_value(inputs):
    image = torch.from_numpy(inputs[0][0])
    height, width = image.shape
    box = torch.tensor([[[width / 2, -height / 4, width * 1.5, height / 2]]])
    fast = roi_crops(image[None], box)
    exact = crop_regions([image], box)
    assert grey_difference(fast, exact).max() < MEAN_GREY_DIFFERENCE
    assert torch.allclose(fast[0, 0, :, :40, 150:], exact[0, 0, :, :40, 150:])  # the padded corner


def test_exact_device_crops_of_a_uint8_canvas_are_the_reference_crops(inputs):
    pixels = [torch.from_numpy(image) for image, _ in inputs]
    boxes = torch.as_tensor(np.stack([box for _, box in inputs]), dtype=torch.float32)
    canvas, sizes = as_canvas([image for image, _ in inputs])
    assert torch.equal(exact_crops(canvas, sizes, boxes), crop_regions(pixels, boxes))


def test_batch_features_agree_with_the_exact_extractor_and_pad_the_last_chunk(inputs):
    backbone = build_backbone("efficientnet_lite0")
    reference = FeatureExtractor(backbone, runtime="torch")
    pixels = [torch.from_numpy(image) for image, _ in inputs[:1]]
    boxes = np.stack([box for _, box in inputs[:1]])
    exact_region = reference.region_features([image.numpy() for image in pixels], boxes)
    exact_whole = reference.crop_features(whole_image(pixels))
    canvas, sizes = as_canvas([image for image, _ in inputs[:1]])
    runner = BatchFeatures(backbone, device="cpu", dtype=torch.float32, chunk_size=8, fixed_chunks=True)  # 19 -> 24
    region, whole = runner(canvas, sizes, torch.as_tensor(boxes, dtype=torch.float32))
    assert region.shape == exact_region.shape and whole.shape == exact_whole.shape
    assert torch.nn.functional.cosine_similarity(region, exact_region, dim=-1).min() > MIN_FEATURE_COSINE
    assert torch.nn.functional.cosine_similarity(whole, exact_whole, dim=-1).min() > MIN_FEATURE_COSINE
