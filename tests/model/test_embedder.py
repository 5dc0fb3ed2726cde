"""The online embedder on real bundled radiographs with the packaged EfficientNet-Lite0 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.checkpoint import BackboneRecord, save_checkpoint
from model.config import ModelConfig
from model.embedder import Embedder
from model.errors import CheckpointError
from model.network import CheXtriev
from tests.small_networks import small_v6
from trainer.demo.samples import sample_case_input


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, backbone):
    directory = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(directory, small_v6(backbone.feature_dim), BackboneRecord.of(backbone))
    return directory


@pytest.fixture(scope="module")
def two_inputs(sample_cases):
    return [sample_case_input(case) for case in sample_cases[:2]]


def test_image_and_node_embeddings_are_unit_length(checkpoint_dir, two_inputs):
    embedder = Embedder.from_checkpoint(checkpoint_dir)
    pixels, boxes = two_inputs[0]
    result = embedder.embed(pixels, boxes)
    assert result.image.shape == (1, 64) and result.nodes.shape == (1, 18, 64)
    assert np.linalg.norm(result.image[0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.nodes[0], axis=-1), 1.0, atol=1e-5)


def test_batch_of_different_sizes_equals_single_embeddings(checkpoint_dir, two_inputs):
    embedder = Embedder.from_checkpoint(checkpoint_dir)
    assert two_inputs[0][0].shape != two_inputs[1][0].shape
    batch = embedder.embed_batch([p for p, _ in two_inputs], np.stack([b for _, b in two_inputs]))
    for row, (pixels, boxes) in enumerate(two_inputs):
        np.testing.assert_allclose(batch.image[row], embedder.embed(pixels, boxes).image[0], atol=1e-5)


def test_different_radiographs_embed_differently(checkpoint_dir, two_inputs):
    embedder = Embedder.from_checkpoint(checkpoint_dir)
    first, second = (embedder.embed(p, b).image[0] for p, b in two_inputs)
    assert float(first @ second) < 0.9999


def test_bfloat16_matches_float32(checkpoint_dir, two_inputs):
    pixels, boxes = two_inputs[0]
    full = Embedder.from_checkpoint(checkpoint_dir).embed(pixels, boxes).image[0]
    half = Embedder.from_checkpoint(checkpoint_dir, dtype=torch.bfloat16).embed(pixels, boxes).image[0]
    assert float(full @ half) > 0.99


def test_checkpoint_from_other_backbone_weights_is_refused(tmp_path, backbone):
    config = ModelConfig.for_variant("V0", input_dim=backbone.feature_dim, width=64, num_heads=4,
                                     head_dim=16, ff_dim=128)
    record = BackboneRecord(backbone.name, backbone.weights_id, "0" * 64)
    save_checkpoint(tmp_path, CheXtriev(config), record)
    with pytest.raises(CheckpointError, match="trained on efficientnet_lite0 weights"):
        Embedder.from_checkpoint(tmp_path)


def test_network_and_backbone_sizes_must_agree(backbone):
    config = ModelConfig.for_variant("V0", input_dim=2048, width=64, num_heads=4, head_dim=16, ff_dim=128)
    with pytest.raises(CheckpointError, match="expects 2048-d region features"):
        Embedder(backbone, CheXtriev(config), "f" * 64)
