"""The parameter-free baselines (global CNN, region mean) on real bundled radiographs."""

from __future__ import annotations

import numpy as np
import pytest

from model.backbones import build_backbone
from model.feature_extractor import FeatureExtractor
from trainer.demo.samples import sample_case_input
from trainer.evaluation.baselines import global_cnn_embeddings, region_mean_embeddings


@pytest.fixture(scope="module")
def features(sample_cases):
    """Region and whole-image features of 3 radiographs, the first one repeated at the end."""
    extractor = FeatureExtractor(build_backbone("efficientnet_lite0"))
    inputs = [sample_case_input(case) for case in sample_cases[:3]]
    inputs.append(inputs[0])
    pixels = [image for image, _ in inputs]
    boxes = np.stack([box for _, box in inputs])
    return extractor.region_features(pixels, boxes), extractor.whole_image_features(pixels)


@pytest.mark.parametrize("embed", [
    lambda regions, whole: region_mean_embeddings(regions),
    lambda regions, whole: global_cnn_embeddings(whole),
])
def test_a_repeated_radiograph_is_its_own_nearest_neighbour(features, embed):
    embeddings = embed(*features).numpy()
    assert embeddings.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    assert similarity[3].argmax() == 0 and similarity[3, 0] == pytest.approx(1.0, abs=1e-5)
    assert similarity[1:3, 0].max() < 0.9999


def test_v0_is_the_normalised_mean_of_the_region_features(features):
    regions, _ = features
    expected = regions.mean(dim=1)
    expected = expected / expected.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(region_mean_embeddings(regions).numpy(), expected.numpy(), atol=1e-6)
