"""Gallery feature extraction and the parameter-free baselines on the bundled radiographs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.backbones import build_backbone
from model.baselines import global_cnn_embeddings, region_mean_embeddings
from model.feature_extractor import FeatureExtractor
from model.metrics import retrieve_top_k
from model.sample_retrieval import extract_gallery_features


@pytest.fixture(scope="module")
def gallery(sample_cases):
    cases = list(sample_cases[:4])
    cases.append(replace(cases[0], case_id="copy-of-first", patient_id="another patient"))
    return extract_gallery_features(FeatureExtractor(build_backbone("efficientnet_lite0")), cases,
                                    batch_size=3)


def test_features_have_one_row_per_case(gallery):
    assert gallery.case_ids[-1] == "copy-of-first"
    assert gallery.region_features.shape == (5, 18, 1280)
    assert gallery.whole_image_features.shape == (5, 1280)


@pytest.mark.parametrize("embed", [
    lambda g: region_mean_embeddings(g.region_features),
    lambda g: global_cnn_embeddings(g.whole_image_features),
])
def test_the_same_radiograph_under_another_id_is_the_nearest_neighbour(gallery, embed):
    embeddings = embed(gallery).numpy()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    ranked = retrieve_top_k(similarity, 1, gallery.case_ids, gallery.case_ids)
    assert gallery.case_ids[ranked[0, 0]] == "copy-of-first"
    assert similarity[0, ranked[0, 0]] == pytest.approx(1.0, abs=1e-5)
