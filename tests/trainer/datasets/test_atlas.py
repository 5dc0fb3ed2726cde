"""The atlas: a mean region template for images without anatomy, and where it is learned."""

from __future__ import annotations

import numpy as np
import pytest

from model.anatomy import validate_regions
from model.catalogue import REGION_INDEX
from model.errors import RegionError
from tests.trainer.datasets.manifests import lung_row, write_csv
from trainer.datasets import AtlasRegions, DatasetError, read_manifest
from trainer.datasets.manifest import bundled_atlas
from trainer.demo.samples import SAMPLE_DIR, sample_case_input


def test_the_bundled_atlas_is_the_mean_of_the_sample_regions_as_image_fractions(sample_cases):
    atlas, used = bundled_atlas()
    assert used == len(sample_cases) == 48
    fractions = []
    for case in sample_cases:
        pixels, boxes = sample_case_input(case)
        height, width = pixels.shape
        fractions.append(boxes / [width, height, width, height])
    np.testing.assert_allclose(atlas.template, np.mean(fractions, axis=0), atol=1e-6)
    right, left = atlas.template[REGION_INDEX["right lung"]], atlas.template[REGION_INDEX["left lung"]]
    assert right[2] < 0.5 < left[0], "the patient's right lung on the image left"


def test_atlas_regions_scale_to_any_image_size():
    atlas, _ = bundled_atlas()
    for width, height in ((64, 64), (2544, 3056)):
        boxes = atlas.boxes(width, height)
        np.testing.assert_allclose(boxes, atlas.template * [width, height, width, height], rtol=1e-6)
        validate_regions(dict(zip(REGION_INDEX, boxes.tolist())), width, height)


def test_a_manifest_without_anatomy_uses_the_bundled_atlas(tmp_path, sample_cases):
    rows = [{"image": str(case.image_path), "labels": "Edema"} for case in sample_cases[:3]]
    manifest = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError, match="no anatomy"):
        read_manifest(manifest)
    dataset = read_manifest(manifest, regions="atlas")
    assert dataset.regions_source == "atlas"
    assert "48 radiographs bundled with the package" in dataset.atlas_origin
    assert all(r.anatomy is dataset.records[0].anatomy for r in dataset.records)
    np.testing.assert_array_equal(dataset.records[0].anatomy.template, bundled_atlas()[0].template)


def test_the_atlas_is_learned_from_the_manifest_own_anatomy_or_from_another(tmp_path, sample_cases):
    rows = [lung_row(c) for c in sample_cases[:5]] + [{"image": str(c.image_path)} for c in sample_cases[5:8]]
    own = read_manifest(write_csv(tmp_path / "own.csv", rows), regions="atlas")
    assert "learned from 5 images of" in own.atlas_origin
    assert not np.allclose(own.records[0].anatomy.template, bundled_atlas()[0].template)
    other = read_manifest(write_csv(tmp_path / "bare.csv", rows[5:]), regions="atlas",
                          atlas_from=SAMPLE_DIR / "manifest.csv")
    assert f"learned from 48 images of {SAMPLE_DIR / 'manifest.csv'}" == other.atlas_origin
    np.testing.assert_allclose(other.records[0].anatomy.template, bundled_atlas()[0].template)


def test_an_invalid_template_is_refused():
    template = bundled_atlas()[0].template.copy()
    template[REGION_INDEX["trachea"]] = [0.6, 0.1, 0.5, 0.3]
    with pytest.raises(RegionError, match="trachea"):
        AtlasRegions(template)
