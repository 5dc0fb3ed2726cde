"""The noise floor measurement of saliency (trainer.saliency_noise) on a bundled radiograph."""

from __future__ import annotations

import numpy as np
import pytest

from model.catalogue import NUM_REGIONS
from model.saliency import OcclusionResult, region_saliency
from trainer.demo.samples import load_sample_cases, sample_case_input
from trainer.saliency_noise import PERTURBATIONS, jpeg_reencoded, pair_drops, shifted, suggested_floor


@pytest.fixture(scope="module")
def radiograph() -> tuple[np.ndarray, np.ndarray]:
    return sample_case_input(load_sample_cases()[0])


def test_a_shift_moves_the_image_and_its_boxes_together(radiograph):
    pixels, boxes = radiograph
    moved, moved_boxes = shifted(pixels, boxes, right=1, down=2)
    assert moved.shape == pixels.shape
    np.testing.assert_array_equal(moved[2:, 1:], pixels[:-2, :-1])
    np.testing.assert_array_equal(moved[:2, 1:], np.repeat(pixels[:1, :-1], 2, axis=0))  # the edge repeated
    np.testing.assert_array_equal(moved_boxes, boxes + np.array([1, 2, 1, 2], dtype=boxes.dtype))


def test_jpeg_reencoding_changes_the_pixels_a_little(radiograph):
    pixels, boxes = radiograph
    again, same_boxes = jpeg_reencoded(pixels, boxes)
    assert again.shape == pixels.shape and same_boxes is boxes
    difference = np.abs(again - pixels)
    assert 0 < difference.mean() < 0.01
    assert set(PERTURBATIONS) == {"shift 1 px right", "shift 2 px down", "JPEG quality 90"}


def test_pair_drops_are_the_saliency_drops_of_each_query():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(NUM_REGIONS + 4, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    occlusion = OcclusionResult(embeddings=vectors[:NUM_REGIONS], unoccluded=vectors[NUM_REGIONS],
                                recomputed_crops=0, blanked_crops=0)
    queries = vectors[NUM_REGIONS + 1:]
    drops = pair_drops(queries, occlusion)
    assert drops.shape == (3, NUM_REGIONS)
    for query, row in zip(queries, drops):
        expected = region_saliency(query, occlusion.unoccluded, occlusion.embeddings, np.ones((NUM_REGIONS, 4)))
        np.testing.assert_allclose(row, expected.similarity_drop, atol=1e-6)


@pytest.mark.parametrize(("p99", "floor"), [(0.0166, 0.02), (0.02, 0.02), (0.00031, 0.0004), (0.0, 0.0)])
def test_the_suggested_floor_is_the_99th_percentile_rounded_up(p99, floor):
    changes = np.full(1000, -p99)  # every change of this size: the percentile is the size itself
    assert suggested_floor(changes) == pytest.approx(floor)
    assert suggested_floor(np.concatenate([changes, [-1.0]])) == pytest.approx(floor)  # one outlier is not p99
