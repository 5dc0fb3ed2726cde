"""Region-occlusion saliency on bundled radiographs with EfficientNet-Lite0 and a small network."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import build_backbone
from model.catalogue import NUM_REGIONS, REGION_INDEX, REGION_NAMES
from model.crops import crop_regions
from model.embedder import Embedder
from model.errors import ImageError, RegionError
from model.preprocessing import IMAGENET_MEAN
from model.region_crops import TILES
from model.saliency import YIELDING_PASS_CROPS, SaliencyResult, occlusion_embeddings, region_saliency, top_regions
from model.saliency_render import NOISE_COLOUR, VIRIDIS_STOPS, legend_lines, render_saliency_png
from model.saliency_scale import DEFAULT_NOISE_FLOOR, DEFAULT_SCALE_MAX, SaliencyScale
from tests.small_networks import small_v6
from trainer.demo.samples import sample_case_input


@pytest.fixture(scope="module")
def embedder():
    backbone = build_backbone("efficientnet_lite0")
    return Embedder(backbone, small_v6(backbone.feature_dim), "untrained")


@pytest.fixture(scope="module")
def retrieved(sample_cases):
    return sample_case_input(sample_cases[1])  # its regions overlap least: 126 of 324 (r, j) pairs


@pytest.fixture(scope="module")
def occlusion(embedder, retrieved):
    return occlusion_embeddings(embedder, *retrieved)


@pytest.fixture(scope="module")
def saliency(embedder, sample_cases, retrieved, occlusion):
    query = embedder.embed(*sample_case_input(sample_cases[0])).image[0]
    return region_saliency(query, occlusion.unoccluded, occlusion.embeddings, retrieved[1])


def centre_mask(box, height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie in the box [x1, y1, x2, y2] (half-open)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
    return ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None]


def blanked_from_scratch(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray,
                         region: int) -> np.ndarray:
    """The naive way: fill region's pixels with the ImageNet mean (per channel), cut all crops of the
    embedder's crop scheme, pool them into region features, embed."""
    mask = centre_mask(boxes[region], *pixels.shape)
    region_crops = embedder.features.region_crops
    crop_boxes = region_crops.tile_boxes(torch.from_numpy(boxes))
    channels = []
    for channel, mean in enumerate(IMAGENET_MEAN):
        filled = torch.from_numpy(np.where(mask, mean, pixels).astype(np.float32))
        channels.append(crop_regions([filled], crop_boxes[None])[0, :, channel])
    crops = torch.stack(channels, dim=1)
    return embedder.embed_features(region_crops.pool(embedder.features.crop_features(crops))[None]).image[0]


def test_occlusion_equals_blanking_and_reembedding_from_scratch(embedder, retrieved, occlusion):
    pixels, boxes = retrieved
    np.testing.assert_allclose(occlusion.unoccluded, embedder.embed(pixels, boxes).image[0], atol=1e-5)
    for name in ("mediastinum", "right costophrenic angle"):  # overlaps many boxes / straddles edges
        region = REGION_INDEX[name]
        expected = blanked_from_scratch(embedder, pixels, boxes, region)
        np.testing.assert_allclose(occlusion.embeddings[region], expected, atol=1e-5, err_msg=name)
        assert float(expected @ occlusion.unoccluded) < 0.99999  # blanking the region changed something


def test_occlusion_over_tiles_equals_blanking_and_reembedding_from_scratch(retrieved):
    backbone = build_backbone("efficientnet_lite0", pooling="max")
    embedder = Embedder(backbone, small_v6(backbone.feature_dim), "untrained", region_crops=TILES)
    pixels, boxes = retrieved
    result = occlusion_embeddings(embedder, pixels, boxes)
    np.testing.assert_allclose(result.unoccluded, embedder.embed(pixels, boxes).image[0], atol=1e-5)
    for name in ("mediastinum", "right costophrenic angle"):
        region = REGION_INDEX[name]
        expected = blanked_from_scratch(embedder, pixels, boxes, region)
        np.testing.assert_allclose(result.embeddings[region], expected, atol=1e-5, err_msg=name)
    # Blanking a region changes at least its own four tiles, and far fewer than all tiles of all regions.
    assert 4 * NUM_REGIONS <= result.recomputed_crops + result.blanked_crops < 4 * NUM_REGIONS * NUM_REGIONS // 2


def test_only_crops_partly_blanked_are_recomputed(retrieved, occlusion):
    pixels, boxes = retrieved
    height, width = pixels.shape
    masks = [centre_mask(box, height, width) for box in boxes]
    inside = [box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height for box in boxes]
    overlapping = [(r, j) for r in range(NUM_REGIONS) for j in range(NUM_REGIONS) if (masks[r] & masks[j]).any()]
    whole = [(r, j) for r, j in overlapping if inside[j] and not (masks[j] & ~masks[r]).any()]
    assert occlusion.blanked_crops == len(whole) >= NUM_REGIONS  # each box blanks its own crop whole
    assert occlusion.recomputed_crops == len(overlapping) - len(whole)
    assert NUM_REGIONS <= occlusion.recomputed_crops < NUM_REGIONS * NUM_REGIONS // 2


def test_occlusion_embeddings_are_unit_vectors(occlusion):
    assert occlusion.embeddings.shape == (NUM_REGIONS, occlusion.unoccluded.shape[0])
    assert occlusion.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(occlusion.embeddings, axis=1), 1.0, atol=1e-5)


def test_boxes_that_only_touch_blank_only_their_own_crop(embedder, retrieved):
    pixels = retrieved[0]
    height, width = pixels.shape
    xs, ys = np.linspace(0, width, 4), np.linspace(0, height, 7)  # fractional edges shared by neighbours
    grid = np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(6) for c in range(3)],
                    dtype=np.float32)
    result = occlusion_embeddings(embedder, pixels, grid)
    assert (result.recomputed_crops, result.blanked_crops) == (0, NUM_REGIONS)
    inner = 7  # touches four neighbours, which must not change
    np.testing.assert_allclose(result.embeddings[inner], blanked_from_scratch(embedder, pixels, grid, inner),
                               atol=1e-5)


def test_bad_inputs_raise_typed_errors(embedder, retrieved):
    pixels, boxes = retrieved
    with pytest.raises(ImageError, match="grey image of shape"):
        occlusion_embeddings(embedder, np.stack([pixels] * 3, axis=-1), boxes)
    with pytest.raises(RegionError, match=r"expected an array \(18, 4\)"):
        occlusion_embeddings(embedder, pixels, boxes[:17])


def with_drops(drops, boxes, scale: SaliencyScale | None = None) -> SaliencyResult:
    """The saliency of unit vectors built so that blanking region r lowers the similarity by drops[r]."""
    similarity = 0.9
    query, retrieved, occluded = np.zeros(8), np.zeros(8), np.zeros((NUM_REGIONS, 8))
    query[0] = 1.0
    retrieved[0], retrieved[2] = similarity, np.sqrt(1 - similarity ** 2)
    occluded[:, 0] = similarity - np.asarray(drops, dtype=np.float64)
    occluded[:, 1] = np.sqrt(1 - occluded[:, 0] ** 2)
    return region_saliency(query, retrieved, occluded, boxes, scale)


def test_saliency_reports_each_region_drop_on_the_fixed_scale(saliency, occlusion, retrieved):
    assert saliency.names == REGION_NAMES
    np.testing.assert_array_equal(saliency.boxes, retrieved[1])
    assert saliency.similarity_drop.shape == saliency.importance.shape == saliency.stands_out.shape == (NUM_REGIONS,)
    query_times_occluded = saliency.similarity - saliency.similarity_drop
    assert -1.0 <= saliency.similarity <= 1.0 and np.all(np.abs(query_times_occluded) <= 1.0 + 1e-5)
    assert saliency.scale == SaliencyScale(DEFAULT_NOISE_FLOOR, DEFAULT_SCALE_MAX)
    np.testing.assert_array_equal(saliency.stands_out, saliency.similarity_drop > DEFAULT_NOISE_FLOOR)
    expected = np.where(saliency.stands_out, np.clip(saliency.similarity_drop / DEFAULT_SCALE_MAX, 0, 1), 0)
    np.testing.assert_allclose(saliency.importance, expected, atol=1e-7)
    rows = saliency.rows()
    assert [row["name"] for row in rows] == list(REGION_NAMES)
    assert set(rows[0]) == {"name", "box", "similarity_drop", "importance", "stands_out"}


def test_importance_is_the_drop_on_the_fixed_scale_not_relative_to_the_largest(retrieved):
    drops = np.linspace(0.0, 0.02, NUM_REGIONS)
    scale = SaliencyScale(noise_floor=0.005, scale_max=0.04)
    result = with_drops(drops, retrieved[1], scale)
    np.testing.assert_allclose(result.similarity_drop, drops, atol=1e-6)
    np.testing.assert_array_equal(result.stands_out, drops > 0.005 + 1e-6)
    assert result.importance.max() == pytest.approx(0.5, abs=1e-4)  # the largest drop is half the scale, not 1
    halved = with_drops(drops / 2, retrieved[1], scale)
    assert halved.importance.max() == pytest.approx(0.25, abs=1e-4)  # smaller drops look smaller
    assert top_regions(result) == [17, 16, 15]


def test_noise_is_not_turned_into_confidence(retrieved):
    """Drops like the demo's (within +-0.008 of each other) all below the floor: nothing stands out."""
    drops = np.random.default_rng(0).uniform(-0.001, 0.0013, NUM_REGIONS)
    result = with_drops(drops, retrieved[1], SaliencyScale(noise_floor=0.004))
    assert not result.any_stands_out and not result.stands_out.any()
    assert np.all(result.importance == 0.0)
    assert top_regions(result) == []
    assert legend_lines(result)[0].startswith("No region stands out: every drop is below the noise floor 0.004")
    pixels, boxes = retrieved
    image = np.asarray(Image.open(io.BytesIO(render_saliency_png(pixels, result))).convert("RGB")).astype(int)
    grey = np.round(np.clip(pixels, 0, 1) * 255).astype(int)
    np.testing.assert_array_equal(image[:pixels.shape[0]], np.repeat(grey[..., None], 3, axis=2))  # no heat


def test_the_scale_refuses_a_floor_at_or_above_its_top():
    with pytest.raises(ValueError, match="noise floor"):
        SaliencyScale(noise_floor=0.05, scale_max=0.05)
    with pytest.raises(ValueError, match="noise floor"):
        SaliencyScale(noise_floor=-0.001)


def test_saliency_recomputes_drops_from_the_embeddings(occlusion):
    query = occlusion.embeddings[3]  # the image with region 3 blanked, as if it were the query
    result = region_saliency(query, occlusion.unoccluded, occlusion.embeddings, np.ones((NUM_REGIONS, 4)))
    similarity = float(query @ occlusion.unoccluded)
    assert result.similarity == pytest.approx(similarity, abs=1e-6)
    np.testing.assert_allclose(result.similarity_drop, similarity - occlusion.embeddings @ query, atol=1e-6)
    assert result.similarity_drop[3] < 0  # blanking region 3 makes it more like this query, not less
    assert result.importance[3] == 0.0 and not result.stands_out[3]


def test_no_drop_anywhere_gives_zero_importance(occlusion):
    unchanged = np.repeat(occlusion.unoccluded[None], NUM_REGIONS, axis=0)
    result = region_saliency(occlusion.unoccluded, occlusion.unoccluded, unchanged, np.ones((NUM_REGIONS, 4)))
    assert np.all(result.importance == 0.0) and np.all(np.isfinite(result.importance))


def test_saliency_refuses_mismatched_dimensions(occlusion):
    with pytest.raises(ValueError, match="occluded"):
        region_saliency(occlusion.unoccluded[:32], occlusion.unoccluded, occlusion.embeddings,
                        np.ones((NUM_REGIONS, 4)))


def test_png_colours_only_the_regions_that_stand_out_on_the_fixed_scale(retrieved):
    pixels, boxes = retrieved
    height, width = pixels.shape
    drops = np.zeros(NUM_REGIONS)
    strong, weak = REGION_INDEX["right lower lung zone"], REGION_INDEX["left apical zone"]
    drops[strong], drops[weak] = 1.2 * DEFAULT_SCALE_MAX, DEFAULT_NOISE_FLOOR / 2  # above the top; below the floor
    result = with_drops(drops, boxes)
    image = Image.open(io.BytesIO(render_saliency_png(pixels, result)))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.width == width and image.height > height + 40  # the legend below the radiograph
    array = np.asarray(image).astype(int)
    grey = np.round(np.clip(pixels, 0, 1) * 255).astype(int)

    coloured = centre_mask(boxes[strong], height, width)
    np.testing.assert_array_equal(array[:height][~coloured], np.repeat(grey[~coloured][:, None], 3, axis=1))
    top = np.asarray(VIRIDIS_STOPS[-1])  # a drop at or above the scale's top gets the scale's last colour
    expected = np.round(0.5 * np.repeat(grey[coloured][:, None], 3, axis=1) + 0.5 * top)
    np.testing.assert_allclose(array[:height][coloured], expected, atol=1)

    legend = array[height:]
    colours = {tuple(pixel) for pixel in legend.reshape(-1, 3)}
    assert NOISE_COLOUR in colours and VIRIDIS_STOPS[-1] in colours  # the bar: noise part, then the scale
    assert legend_lines(result)[1] == f"1. right lower lung zone  drop {1.2 * DEFAULT_SCALE_MAX:.4f}"


def test_png_of_a_large_image_is_scaled_down(retrieved, saliency):
    pixels, boxes = retrieved
    image = Image.open(io.BytesIO(render_saliency_png(pixels, saliency, max_side=256)))
    assert image.width == round(pixels.shape[1] * 256 / max(pixels.shape))
    assert image.height > round(pixels.shape[0] * 256 / max(pixels.shape))


def test_a_yielding_computation_gives_the_same_embeddings(embedder, retrieved, occlusion):
    passes = []
    result = occlusion_embeddings(embedder, *retrieved, before_pass=lambda: passes.append(1))
    expected_passes = math.ceil(NUM_REGIONS / YIELDING_PASS_CROPS) + math.ceil(
        (occlusion.recomputed_crops + 1) / YIELDING_PASS_CROPS)  # plain crops, then changed ones and a zero crop
    assert len(passes) == expected_passes
    np.testing.assert_allclose(result.embeddings, occlusion.embeddings, atol=1e-5)
