"""Crop schemes (model.region_crops) on real bundled radiographs: the tiles' geometry and pooling, the
max-pooled backbone, the extractor's crop paths, checkpoints that record the scheme and the embedder
that cuts what its checkpoint was trained on. (Occlusion saliency over tiles: test_saliency.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.batch_features import BatchFeatures
from model.checkpoint import CONFIG_FILE, BackboneRecord, read_checkpoint_info, save_checkpoint
from model.crops import crop_regions
from model.embedder import Embedder
from model.errors import CheckpointError, ChextrievError
from model.feature_extractor import FeatureExtractor, image_crops
from model.preprocessing import preprocessing_config
from model.region_crops import SINGLE, TILES, region_crops_named, region_crops_recorded
from tests.small_networks import small_v6
from trainer.demo.samples import sample_case_input


@pytest.fixture(scope="module")
def max_backbone():
    return build_backbone("efficientnet_lite0", pooling="max")


@pytest.fixture(scope="module")
def radiograph(sample_cases):
    return sample_case_input(sample_cases[3])


@pytest.fixture(scope="module")
def tiles_checkpoint(tmp_path_factory, max_backbone):
    directory = tmp_path_factory.mktemp("tiles-checkpoint")
    save_checkpoint(directory, small_v6(max_backbone.feature_dim), BackboneRecord.of(max_backbone),
                    preprocessing=preprocessing_config(TILES))
    return directory


def test_tiles_are_three_quarters_of_their_box_centred_on_a_two_by_two_grid():
    boxes = torch.tensor([[[10.0, 20.0, 110.0, 220.0], [0.5, 0.0, 8.5, 4.0]]])
    tiles = TILES.tile_boxes(boxes)
    assert tiles.shape == (1, 8, 4)
    torch.testing.assert_close(tiles[0, :4], torch.tensor([[-2.5, -5.0, 72.5, 145.0], [47.5, -5.0, 122.5, 145.0],
                                                           [-2.5, 95.0, 72.5, 245.0], [47.5, 95.0, 122.5, 245.0]]))
    for region, box in enumerate(boxes[0]):
        own = tiles[0, region * 4:(region + 1) * 4]
        torch.testing.assert_close(own[:, 2] - own[:, 0], (box[2] - box[0]).expand(4) * 0.75)
        torch.testing.assert_close(own[:, 3] - own[:, 1], (box[3] - box[1]).expand(4) * 0.75)
        # They reach an eighth of the side over the box's edges, and cover it together.
        torch.testing.assert_close(own[:, :2].amin(0), box[:2] - (box[2:] - box[:2]) / 8)
        torch.testing.assert_close(own[:, 2:].amax(0), box[2:] + (box[2:] - box[:2]) / 8)
    assert SINGLE.tile_boxes(boxes) is boxes


def test_tiles_pool_to_the_maximum_of_each_regions_tiles():
    features = torch.randn(2, 18 * 4, 5)
    pooled = TILES.pool(features)
    assert pooled.shape == (2, 18, 5)
    torch.testing.assert_close(pooled[1, 7], features[1, 28:32].amax(0))


def test_the_single_crop_keeps_the_preprocessing_recorded_before_schemes_existed():
    assert "region_crops" not in preprocessing_config()
    assert region_crops_recorded(preprocessing_config()) is SINGLE
    assert region_crops_recorded(preprocessing_config(TILES)) is TILES
    with pytest.raises(ChextrievError, match="not a scheme of this version"):
        region_crops_recorded({**preprocessing_config(), "region_crops": {**TILES.config(), "grid": 3}})
    with pytest.raises(ChextrievError, match="unknown region crops 'quadrants'"):
        region_crops_named("quadrants")


def test_a_max_pooled_backbone_takes_the_maximum_of_the_feature_map_and_has_its_own_fingerprint(max_backbone):
    mean_backbone = build_backbone("efficientnet_lite0")
    crops = crop_regions([torch.rand(300, 260)], torch.tensor([[[0.0, 0.0, 260.0, 300.0]]]))[0]
    feature_map = mean_backbone.body.forward_features(crops * mean_backbone.input_scale + mean_backbone.input_shift)
    torch.testing.assert_close(max_backbone(crops), feature_map.amax((2, 3)))
    torch.testing.assert_close(mean_backbone(crops), feature_map.mean((2, 3)), atol=1e-5, rtol=1e-5)
    assert max_backbone.fingerprint != mean_backbone.fingerprint


def test_region_features_over_tiles_are_the_maximum_of_the_tiles_crops(max_backbone, radiograph):
    pixels, boxes = radiograph[0], radiograph[1][[0, 9, 17]]  # three regions keep the test quick
    extractor = FeatureExtractor(max_backbone, region_crops=TILES, runtime="torch")
    features = extractor.region_features([pixels], boxes[None])[0]
    tiles = TILES.tile_boxes(torch.from_numpy(boxes)[None])
    crops = crop_regions([torch.from_numpy(pixels)], tiles)[0]
    expected = max_backbone(crops).view(3, 4, -1).amax(1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    # The worker path (crops cut apart from the backbone) and the device path give the same features.
    regions, whole = extractor.image_features(image_crops(torch.from_numpy(pixels), boxes, TILES)[None])
    torch.testing.assert_close(regions[0], expected, atol=1e-5, rtol=1e-5)
    canvas = torch.from_numpy((pixels * 255).round().astype(np.uint8))[None]
    batch = BatchFeatures(max_backbone, device="cpu", dtype=torch.float32, crops="exact", region_crops=TILES)
    device_regions, _ = batch(canvas, torch.tensor([pixels.shape]), torch.from_numpy(boxes)[None])
    torch.testing.assert_close(device_regions[0], expected, atol=1e-2, rtol=1e-2)  # uint8 canvas


def test_an_extractor_refuses_a_backbone_pooled_otherwise_than_its_scheme(max_backbone):
    with pytest.raises(ChextrievError, match="region crops 'tiles' pool max, the backbone pools mean"):
        FeatureExtractor(build_backbone("efficientnet_lite0"), region_crops=TILES)
    with pytest.raises(ChextrievError, match="region crops 'single' pool mean, the backbone pools max"):
        FeatureExtractor(max_backbone)


def test_a_tiles_checkpoint_embeds_with_the_tiles_it_was_trained_on_on_both_runtimes(tiles_checkpoint, radiograph,
                                                                                    max_backbone):
    assert read_checkpoint_info(tiles_checkpoint).region_crops is TILES
    pixels, boxes = radiograph
    on_torch = Embedder.from_checkpoint(tiles_checkpoint, runtime="torch")
    on_onnx = Embedder.from_checkpoint(tiles_checkpoint, runtime="onnx")
    assert on_torch.features.region_crops is TILES and on_onnx.features.region_crops is TILES
    expected = on_torch.embed_features(FeatureExtractor(max_backbone, region_crops=TILES, runtime="torch")
                                       .region_features([pixels], boxes[None]))
    np.testing.assert_allclose(on_torch.embed(pixels, boxes).image, expected.image, atol=1e-5)
    np.testing.assert_allclose(on_onnx.embed(pixels, boxes).image, expected.image, atol=1e-4)


def test_a_checkpoint_naming_an_unknown_crop_scheme_is_refused(tiles_checkpoint, tmp_path):
    document = json.loads((tiles_checkpoint / CONFIG_FILE).read_text())
    document["preprocessing"]["region_crops"]["tile_fraction"] = 0.5
    for name in ("model.safetensors",):
        (tmp_path / name).write_bytes((tiles_checkpoint / name).read_bytes())
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="not a scheme of this version"):
        read_checkpoint_info(tmp_path)
