"""The three real sets of ../shared/data load through the manifest reader with column options only."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from model.imaging import decode_image
from trainer.datasets import DatasetError, LungBoxes, LungMasks, read_manifest
from trainer.datasets.splits import patients_in_several_splits

CXR_LUNGBOX_OPTIONS = {"columns": {"patient_id": "patientid"}, "label_columns": ("finding",),
                       "yes_no_label_columns": ("survival", "intubated", "went_icu", "needed_supplemental_O2")}
NIH_OPTIONS = {"regions": "atlas", "split_conflicts": "majority"}


def positives(dataset) -> dict[str, int]:
    return dict(zip(dataset.label_names, dataset.label_matrix().sum(axis=0).tolist()))


def assert_patient_level(dataset) -> None:
    keys = [record.patient_key for record in dataset.records]
    assert not patients_in_several_splits(keys, [record.split for record in dataset.records])


def assert_boxes_fit_decoded_images(records) -> None:
    for record in records:
        image = decode_image(record.image_path)
        boxes = record.anatomy.boxes(image.width, image.height)
        assert boxes.shape == (18, 4)
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert (boxes >= 0).all()
        assert (boxes[:, [0, 2]] <= image.width).all() and (boxes[:, [1, 3]] <= image.height).all()


def test_cxr_lungbox(shared_data):
    dataset = read_manifest(shared_data / "cxr-lungbox" / "manifest.csv", **CXR_LUNGBOX_OPTIONS)
    assert len(dataset.records) == 494 and dataset.regions_source == "lung_boxes"
    counts = positives(dataset)
    assert counts["COVID-19"] == 352 and counts["ARDS"] == 15  # "COVID-19, ARDS" counts for both
    assert (counts["went_icu"], counts["intubated"], counts["survival"]) == (177, 101, 162)
    assert not {"todo", "No Finding", "Unknown", "COVID-19, ARDS"} & set(dataset.label_names)
    assert sum(not set(r.labels) - set(CXR_LUNGBOX_OPTIONS["yes_no_label_columns"]) for r in dataset.records) == 81
    assert_patient_level(dataset)
    images_per_patient = defaultdict(int)
    for record in dataset.records:
        images_per_patient[record.patient_id] += 1
    assert max(images_per_patient.values()) > 1 and len(images_per_patient) == 289
    shares = {name: len(dataset.split(name)) / 494 for name in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.03)
    assert all(isinstance(r.anatomy, LungBoxes) for r in dataset.records)
    sample = dataset.records[::100]
    assert_boxes_fit_decoded_images(sample)
    for record in sample:
        image = decode_image(record.image_path)
        assert (record.metadata["width"], record.metadata["height"]) == (image.width, image.height)


def test_jsrt(shared_data):
    dataset = read_manifest(shared_data / "jsrt" / "manifest.csv", yes_no_label_columns=("nodule",))
    assert len(dataset.records) == 247 and dataset.label_names == ("nodule",)
    assert positives(dataset) == {"nodule": 154}
    assert all(r.patient_id is None for r in dataset.records)  # each image its own patient
    assert dataset.regions_source == "masks"
    first = dataset.records[0]
    assert first.anatomy == LungMasks(shared_data / "jsrt/masks/right_lung/JPCLN001.png",
                                      shared_data / "jsrt/masks/left_lung/JPCLN001.png",
                                      shared_data / "jsrt/masks/heart/JPCLN001.png")
    assert {len(dataset.split(name)) for name in ("train", "val", "test")} == {173, 25, 49}
    assert_boxes_fit_decoded_images(dataset.records[::120])


def test_nih1000(shared_data):
    manifest = shared_data / "nih1000" / "manifest.csv"
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest, regions="atlas")
    assert len(error.value.problems) == 30  # the shipped split puts 30 patients in several splits
    assert {p.column for p in error.value.problems} == {"split"}
    dataset = read_manifest(manifest, **NIH_OPTIONS)
    assert len(dataset.records) == 1000 and dataset.regions_source == "atlas"
    assert "bundled" in dataset.atlas_origin
    assert_patient_level(dataset)
    assert {name: len(dataset.split(name)) for name in ("train", "val", "test")} == {
        "train": 578, "val": 175, "test": 247}
    counts = positives(dataset)
    assert "No Finding" not in counts and counts["Effusion"] == 170 and counts["Hernia"] == 9
    assert sum(not r.labels for r in dataset.records) == 499
    assert_boxes_fit_decoded_images(dataset.records[::250])
    boxes = dataset.records[0].anatomy.boxes(64, 64)
    np.testing.assert_allclose(boxes / 64, dataset.records[0].anatomy.template, rtol=1e-5)
