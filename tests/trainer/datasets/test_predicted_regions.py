"""Regions predicted by the anatomy model (regions="model") on the bundled radiographs."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from model.anatomy import box_iou, validate_regions
from model.anatomy_model import AnatomyModel
from model.catalogue import REGION_INDEX, REGION_NAMES
from model.errors import RegionError
from model.imaging import decode_image
from tests.trainer.datasets.manifests import lung_row, write_csv
from trainer.datasets import DatasetError, PredictedRegions, read_manifest
from trainer.demo.samples import SAMPLE_DIR
from trainer.feature_cache import dataset_fingerprint
from trainer.record_images import RecordImages

SAMPLE_MANIFEST = SAMPLE_DIR / "manifest.csv"
SAMPLE_OPTIONS = {"columns": {"patient_id": "patientid"}, "label_columns": ("finding",)}
MIN_LUNG_IOU = 0.5


@pytest.fixture(scope="module")
def predicted(shipped_anatomy_model):
    """The bundled manifest read with regions="model" (the shipped anatomy model)."""
    return read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, regions="model")


def test_every_record_gets_the_shipped_model_as_its_regions_source(predicted, shipped_anatomy_model):
    source = predicted.records[0].anatomy
    assert predicted.regions_source == "model" and predicted.summary()["regions_source"] == "model"
    assert all(record.anatomy is source for record in predicted.records)
    assert source == PredictedRegions(shipped_anatomy_model, AnatomyModel.load().fingerprint)


def test_model_regions_are_valid_and_overlap_the_expert_lung_boxes(predicted):
    experts = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS)
    for record, expert in zip(predicted.records, experts.records, strict=True):
        image = decode_image(record.image_path)
        boxes = record.anatomy.boxes_for(image)
        assert boxes.shape == (len(REGION_NAMES), 4) and boxes.dtype == np.float32
        validate_regions(dict(zip(REGION_NAMES, boxes.tolist())), image.width, image.height)
        for name, expert_box in (("right lung", expert.anatomy.right_lung), ("left lung", expert.anatomy.left_lung)):
            overlap = box_iou(boxes[REGION_INDEX[name]], expert_box)
            assert overlap > MIN_LUNG_IOU, f"{record.case_id}: {name} IoU {overlap:.2f} with the expert box"


def test_predicted_regions_need_the_pixels(predicted):
    with pytest.raises(RegionError, match="predicted regions need the image's pixels"):
        predicted.records[0].anatomy.boxes(512, 512)


def test_a_predicted_regions_source_pickles_as_its_file_without_the_loaded_model(predicted):
    source = predicted.records[0].anatomy
    image = decode_image(predicted.records[0].image_path)
    boxes = source.boxes_for(image)  # the model is now loaded in this process
    payload = pickle.dumps(source)
    restored = pickle.loads(payload)
    assert len(payload) < 1024 and restored == source
    assert set(vars(restored)) == {"model_path", "model_fingerprint"}
    np.testing.assert_array_equal(restored.boxes_for(image), boxes)


def test_an_image_without_a_chest_is_a_problem_of_that_image_only(predicted, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (512, 512), 128).save(blank)
    radiograph_record = predicted.records[0]
    records = [replace(radiograph_record, case_id="blank", image_path=blank), radiograph_record]
    no_chest, radiograph = RecordImages(records, [0, 1])
    assert no_chest.problem.startswith("NoChestFoundError: ") and no_chest.pixels is None
    assert radiograph.problem is None and radiograph.boxes.shape == (len(REGION_NAMES), 4)


def test_the_feature_cache_fingerprint_follows_the_regions_mode_and_the_model_file(
        predicted, shipped_anatomy_model, tmp_path):
    other_model = tmp_path / shipped_anatomy_model.name
    other_model.write_bytes(shipped_anatomy_model.read_bytes() + b"\0")
    again = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, regions="model")
    auto = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS)
    other = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, regions="model", anatomy_model=other_model)
    assert dataset_fingerprint(predicted) == dataset_fingerprint(again)
    assert len({dataset_fingerprint(d) for d in (predicted, auto, other)}) == 3


def test_rows_need_no_anatomy_with_regions_model(shipped_anatomy_model, sample_cases, tmp_path):
    rows = [{"image": str(case.image_path), "labels": "Edema"} for case in sample_cases[:2]]
    dataset = read_manifest(write_csv(tmp_path / "bare.csv", rows), regions="model")
    assert dataset.regions_source == "model" and len(dataset.records) == 2


def test_an_unreadable_model_file_is_an_option_error(sample_cases, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [lung_row(sample_cases[0])])
    with pytest.raises(DatasetError, match="option anatomy_model: cannot read the anatomy model .*absent.onnx"):
        read_manifest(manifest, regions="model", anatomy_model=tmp_path / "absent.onnx")
