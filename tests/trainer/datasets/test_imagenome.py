"""Chest ImaGenome scene graphs + MIMIC-CXR-JPG, read from fixture files in the real formats."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.catalogue import FINDING_NAMES, REGION_INDEX, REGION_NAMES
from model.imaging import decode_image
from tests.trainer.datasets.imagenome_fixtures import FIXTURES, METADATA_CSV, SPLIT_CSV, A, C, E, G, read
from trainer.datasets import Dataset, DatasetError, NamedBoxes, read_imagenome


@pytest.fixture
def copy(tmp_path) -> Path:
    """A writable copy of the fixture tree."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "imagenome"))


def scene_graph_path(root: Path, dicom_id: str) -> Path:
    return root / "scene_graph" / f"{dicom_id}_SceneGraph.json"


def test_keeps_frontal_images_with_all_18_boxes_in_the_official_split():
    dataset = read()
    by_id = {record.case_id: record for record in dataset.records}
    assert list(by_id) == [A, C, E, G]  # split-file order
    assert {case: record.split for case, record in by_id.items()} == {A: "train", C: "train", E: "val", G: "test"}
    assert by_id[A].patient_id == by_id[C].patient_id == "10000032"
    assert by_id[A].image_path == FIXTURES / "files/p10/p10000032/s50414267" / f"{A}.jpg"
    assert dataset.excluded == {"no scene graph": 1, "fewer than 18 region boxes": 1,
                                "not a frontal (PA or AP) view": 1}
    assert dataset.label_names == FINDING_NAMES
    assert dataset.regions_source == "imagenome"
    assert {record.metadata["view"] for record in dataset.records} == {"AP", "PA"}


def test_a_later_no_does_not_clear_an_earlier_yes():
    by_id = {record.case_id: record for record in read().records}
    # A: right costophrenic angle says yes, then no, to pleural effusion; G likewise for atelectasis.
    assert by_id[A].labels == ("lung opacity", "pleural effusion")
    assert by_id[A].region_labels[REGION_INDEX["right costophrenic angle"]] == ("pleural effusion",)
    assert by_id[G].labels == ("atelectasis", "pneumothorax")
    assert by_id[E].labels == ("enlarged cardiac silhouette", "pulmonary edema/hazy opacity",
                               "fluid overload/heart failure")


def test_only_the_18_regions_make_an_image_positive():
    by_id = {record.case_id: record for record in read().records}
    # C's only "yes" (pleural effusion) is on the left hemidiaphragm, not one of the 18 regions.
    assert by_id[C].labels == ()
    assert by_id[C].region_labels == ((),) * len(REGION_NAMES)


def test_label_matrix_follows_the_finding_order():
    dataset = read()
    matrix = dataset.label_matrix()
    assert matrix.shape == (4, len(FINDING_NAMES)) and matrix.dtype == bool
    assert np.flatnonzero(matrix[0]).tolist() == [FINDING_NAMES.index("lung opacity"),
                                                  FINDING_NAMES.index("pleural effusion")]
    assert not matrix[1].any()
    assert [r.case_id for r in dataset.split("val")] == [E]


def test_region_labels_are_the_yes_attributes_of_each_region_in_catalogue_order():
    dataset = read()
    matrix = dataset.region_label_matrix()
    assert matrix.shape == (4, len(REGION_NAMES), len(FINDING_NAMES)) and matrix.dtype == bool
    assert dataset.records[0].case_id == A
    # A's scene graph says yes to lung opacity on the left mid lung zone and the left lung, and to
    # pleural effusion on the right costophrenic angle (then no, which does not clear it); nothing else.
    positive = {(REGION_NAMES[region], FINDING_NAMES[finding]) for region, finding in zip(*np.nonzero(matrix[0]))}
    assert positive == {("left mid lung zone", "lung opacity"), ("left lung", "lung opacity"),
                        ("right costophrenic angle", "pleural effusion")}
    assert dataset.records[0].region_labels[REGION_INDEX["left lung"]] == ("lung opacity",)
    np.testing.assert_array_equal(matrix.any(axis=1), dataset.label_matrix())  # positive where a region is


@pytest.mark.parametrize("change, message", [
    ({"region_labels": None}, "every record has region labels or none"),
    ({"region_labels": ((),) * 17}, "17 regions, expected 18"),
    ({"labels": ("lung opacity",)}, "region labels \\['pleural effusion'\\] are not among the image's labels"),
])
def test_a_dataset_refuses_region_labels_that_do_not_fit(change, message):
    dataset = read()
    records = [replace(dataset.records[0], **change), *dataset.records[1:]]
    with pytest.raises(ValueError, match=message):
        Dataset(dataset.name, dataset.label_names, records, dataset.regions_source)


def test_boxes_are_the_original_pixel_coordinates_in_catalogue_order():
    record = next(r for r in read().records if r.case_id == A)
    objects = json.loads(scene_graph_path(FIXTURES, A).read_text())["objects"]
    original = {o["bbox_name"]: [o[f"original_{k}"] for k in ("x1", "y1", "x2", "y2")] for o in objects}
    image = decode_image(record.image_path)
    boxes = record.anatomy.boxes(image.width, image.height)
    assert isinstance(record.anatomy, NamedBoxes)
    assert boxes.shape == (18, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [original[name] for name in REGION_NAMES])


def test_the_metadata_view_position_decides_the_view_when_given(copy):
    metadata = copy / METADATA_CSV
    metadata.write_text(metadata.read_text().replace(f"{G},10001884,56124570,CHEST (PORTABLE AP),AP,",
                                                     f"{G},10001884,56124570,CHEST (PORTABLE AP),AP AXIAL,"))
    assert G in [r.case_id for r in read(copy).records]
    with_metadata = read(copy, metadata_csv=metadata)
    assert G not in [r.case_id for r in with_metadata.records]
    assert with_metadata.excluded["not a frontal (PA or AP) view"] == 2


def test_missing_images_are_refused_by_default_and_counted_when_skipped(copy):
    (copy / "files/p10/p10001884/s56124570" / f"{G}.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        read(copy)
    [problem] = error.value.problems
    assert (problem.row, problem.column) == (8, "dicom_id") and "image file not found" in problem.problem
    skipped = read(copy, missing_images="skip")
    assert [r.case_id for r in skipped.records] == [A, C, E]
    assert skipped.excluded["image file missing"] == 1


def test_malformed_scene_graphs_are_named_by_file_and_field(copy):
    scene_graph_path(copy, C).write_text('{"objects": [')
    graph = json.loads(scene_graph_path(copy, E).read_text())
    graph["objects"][3]["original_x1"] = "wide"
    graph["attributes"][0]["attributes"][0].append("anatomicalfinding|yes")
    scene_graph_path(copy, E).write_text(json.dumps(graph))
    with pytest.raises(DatasetError) as error:
        read(copy)
    found = {(p.source, p.field) for p in error.value.problems}
    assert found == {(f"{C}_SceneGraph.json", None), (f"{E}_SceneGraph.json", "objects[3]"),
                     (f"{E}_SceneGraph.json", "attributes[0].attributes")}
    assert "not a readable JSON file" in str(error.value)


def test_scene_graphs_missing_from_the_split_file_are_counted(copy):
    extra = "00000000-11111111-22222222-33333333-44444444"
    shutil.copy(scene_graph_path(copy, A), scene_graph_path(copy, extra))
    dataset = read(copy)
    assert len(dataset.records) == 4
    assert dataset.excluded["scene graph not in the split file"] == 1


def test_an_unknown_split_name_names_the_line(copy):
    split = copy / SPLIT_CSV
    split.write_text(split.read_text().replace(f"{C},53189527,10000032,train", f"{C},53189527,10000032,holdout"))
    with pytest.raises(DatasetError) as error:
        read(copy)
    [problem] = error.value.problems
    assert (problem.row, problem.column) == (4, "split") and "holdout" in problem.problem


def test_reads_the_gzip_split_file_as_downloaded(copy):
    gzipped = copy / f"{SPLIT_CSV}.gz"
    gzipped.write_bytes(gzip.compress((copy / SPLIT_CSV).read_bytes()))
    dataset = read_imagenome(copy / "scene_graph", copy, gzipped)
    assert [r.case_id for r in dataset.records] == [A, C, E, G]
