"""The generic manifest reader on the bundled sample manifest and on small manifests built from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.anatomy import validate_regions
from model.catalogue import REGION_NAMES
from model.region_derivation import derive_regions_from_masks
from tests.trainer.datasets.manifests import lung_row, write_csv, write_jsonl
from trainer.datasets import DatasetError, LungBoxes, LungMasks, NamedBoxes, read_manifest
from trainer.demo.samples import SAMPLE_DIR, sample_case_input

SAMPLE_MANIFEST = SAMPLE_DIR / "manifest.csv"
SAMPLE_OPTIONS = {"columns": {"patient_id": "patientid"}, "label_columns": ("finding",),
                  "yes_no_label_columns": ("intubated", "went_icu")}


def test_reads_the_bundled_sample_manifest(sample_cases):
    dataset = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS)
    assert [r.case_id for r in dataset.records] == [case.case_id for case in sample_cases]
    assert dataset.name == "cxr_lungbox" and dataset.regions_source == "lung_boxes"
    by_id = {case.case_id: case for case in sample_cases}
    for record in dataset.records:
        case = by_id[record.case_id]
        assert record.image_path == case.image_path and record.patient_id == case.patient_id
        assert set(record.labels) - {"intubated", "went_icu"} == {
            name.strip() for name in case.finding.split(",")
            if name.strip().lower() not in ("todo", "no finding", "unknown")}
        assert record.anatomy == LungBoxes(case.right_lung, case.left_lung)
        assert record.metadata["view"] == case.metadata["view"]
    assert dataset.label_names[-2:] == ("intubated", "went_icu")
    assert list(dataset.label_names[:-2]) == sorted(dataset.label_names[:-2])
    assert not dataset.has_region_labels and dataset.region_label_matrix() is None  # image labels only


def test_lung_boxes_give_the_derived_regions_of_the_decoded_image(sample_cases):
    dataset = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS)
    for record, case in list(zip(dataset.records, sample_cases))[:3]:
        pixels, expected = sample_case_input(case)
        height, width = pixels.shape
        assert (record.metadata["width"], record.metadata["height"]) == (width, height)
        np.testing.assert_array_equal(record.anatomy.boxes(width, height), expected)


def test_every_image_of_a_patient_lands_in_one_split_and_the_seed_decides(sample_cases):
    first = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, seed=3)
    again = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, seed=3)
    other = read_manifest(SAMPLE_MANIFEST, **SAMPLE_OPTIONS, seed=4)
    splits = [r.split for r in first.records]
    assert splits == [r.split for r in again.records] != [r.split for r in other.records]
    by_patient = {}
    for record in first.records:
        by_patient.setdefault(record.patient_id, set()).add(record.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {name: splits.count(name) for name in ("train", "val", "test")}["train"] > len(splits) / 2
    assert set(splits) == {"train", "val", "test"}


def test_labels_columns_and_yes_no_columns(tmp_path, sample_cases):
    case = sample_cases[0]
    values = [("COVID-19, ARDS", "Y"), ("No Finding", "N"), ("todo", "Not visible"), ("Unknown", ""),
              ("Pneumonia|SARS", "yes"), ("?", "1")]
    rows = [lung_row(case, finding=finding, icu=icu, case_id=f"c{i}") for i, (finding, icu) in enumerate(values)]
    dataset = read_manifest(write_csv(tmp_path / "m.csv", rows), label_columns=("finding",),
                            yes_no_label_columns=("icu",))
    assert [r.labels for r in dataset.records] == [("ARDS", "COVID-19", "icu"), (), (), (),
                                                    ("Pneumonia", "SARS", "icu"), ("icu",)]
    assert dataset.label_names == ("ARDS", "COVID-19", "Pneumonia", "SARS", "icu")
    matrix = dataset.label_matrix()
    assert matrix.sum(axis=0).tolist() == [1, 1, 1, 1, 3]
    custom = read_manifest(tmp_path / "m.csv", label_columns=("finding",), no_label_values=("todo",),
                           label_separators="|")
    assert [r.labels for r in custom.records][:4] == [("COVID-19, ARDS",), ("No Finding",), (), ("Unknown",)]


def test_jsonl_with_regions_json_split_column_and_label_lists(tmp_path, sample_cases):
    case = sample_cases[1]
    pixels, boxes = sample_case_input(case)
    named = {name: [float(v) for v in box] for name, box in zip(REGION_NAMES, boxes)}
    rows = [{"image": str(case.image_path), "case_id": "x1", "patient_id": 7, "split": "validation",
             "labels": ["Effusion", "Edema"], "regions": named},
            {"image": str(case.image_path), "case_id": "x2", "patient_id": 8, "split": "Training",
             "labels": "No Finding", "regions": json.dumps(named)}]
    dataset = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    first, second = dataset.records
    assert (first.patient_id, first.split, first.labels) == ("7", "val", ("Edema", "Effusion"))
    assert (second.split, second.labels) == ("train", ())
    assert isinstance(first.anatomy, NamedBoxes) and dataset.regions_source == "boxes"
    np.testing.assert_array_equal(first.anatomy.boxes(pixels.shape[1], pixels.shape[0]), boxes)
    np.testing.assert_array_equal(second.anatomy.regions, first.anatomy.regions)


def test_mask_paths_relative_to_the_manifest(tmp_path, sample_cases):
    case = sample_cases[2]
    width, height = Image.open(case.image_path).size
    (tmp_path / "masks").mkdir()
    arrays = {}
    for name, box in (("right", case.right_lung), ("left", case.left_lung)):
        mask = Image.new("L", (width, height))
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        mask.save(tmp_path / "masks" / f"{name}.png")
        arrays[name] = np.asarray(mask) > 0
    manifest = write_csv(tmp_path / "m.csv", [{"image": str(case.image_path), "right_lung": "masks/right.png",
                                               "left_lung": "masks/left.png"}])
    [record] = read_manifest(manifest).records
    assert record.anatomy == LungMasks(tmp_path / "masks/right.png", tmp_path / "masks/left.png")
    expected = validate_regions(derive_regions_from_masks(arrays["right"], arrays["left"]), width, height)
    np.testing.assert_array_equal(record.anatomy.boxes(width, height), expected)
    with pytest.raises(Exception, match="the mask right.png is"):
        record.anatomy.boxes(width + 1, height)


def test_case_id_defaults_to_the_image_stem(tmp_path, sample_cases):
    dataset = read_manifest(write_csv(tmp_path / "m.csv", [lung_row(c) for c in sample_cases[:2]]))
    assert [r.case_id for r in dataset.records] == [c.image_path.stem for c in sample_cases[:2]]
    assert [r.patient_id for r in dataset.records] == [None, None]


def problems(error: pytest.ExceptionInfo[DatasetError]) -> list[tuple]:
    return [(p.row, p.column) for p in error.value.problems]


def test_unknown_column_mapping_and_mapping_to_an_absent_column(tmp_path, sample_cases):
    manifest = write_csv(tmp_path / "m.csv", [lung_row(sample_cases[0], patientid="3")])
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest, columns={"patient": "patientid", "labels": "finding"})
    first, second = error.value.problems
    assert first.source == "option columns" and "unknown column mapping patient=patientid" in first.problem
    assert (second.source, second.column) == (str(manifest), "finding")
    with pytest.raises(DatasetError, match="column 'went_icu': no such column"):
        read_manifest(manifest, yes_no_label_columns=("went_icu",))


def test_a_manifest_without_an_image_column_is_refused(tmp_path, sample_cases):
    row = lung_row(sample_cases[0])
    row["path"] = row.pop("image")
    manifest = write_csv(tmp_path / "m.csv", [row])
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest)
    assert problems(error) == [(None, "image")]
    assert len(read_manifest(manifest, columns={"image": "path"}).records) == 1


def test_every_bad_box_is_named_by_line_and_column(tmp_path, sample_cases):
    rows = [lung_row(case) for case in sample_cases[:4]]
    rows[1]["right_lung"] = "[10, 20, 30"
    rows[2]["left_lung"] = "[10, 20, 5, 40]"
    rows[3]["right_lung"] = json.dumps({"x1": 1})
    with pytest.raises(DatasetError) as error:
        read_manifest(write_csv(tmp_path / "m.csv", rows))
    assert problems(error) == [(3, "right_lung"), (4, "left_lung"), (5, "right_lung")]
    messages = [p.problem for p in error.value.problems]
    assert "not a JSON box" in messages[0] and "inverted box" in messages[1]
    assert "expected 4 numbers" in messages[2]


def test_boxes_that_do_not_fit_the_stated_image_size_are_named(tmp_path, sample_cases):
    case = sample_cases[0]
    swapped = lung_row(case, width=512, height=512)
    swapped["right_lung"], swapped["left_lung"] = swapped["left_lung"], swapped["right_lung"]
    outside = lung_row(sample_cases[1], width=100, height="tall")
    with pytest.raises(DatasetError) as error:
        read_manifest(write_csv(tmp_path / "m.csv", [swapped, outside]))
    assert problems(error) == [(2, "right_lung"), (3, "height")]
    assert "are the sides swapped?" in error.value.problems[0].problem


def test_duplicate_case_ids_are_refused(tmp_path, sample_cases):
    rows = [lung_row(sample_cases[0], case_id="a"), lung_row(sample_cases[1], case_id="b"),
            lung_row(sample_cases[2], case_id="a")]
    with pytest.raises(DatasetError) as error:
        read_manifest(write_csv(tmp_path / "m.csv", rows))
    assert problems(error) == [(4, "case_id")] and "also on line 2" in error.value.problems[0].problem
    stems = [lung_row(sample_cases[0]), lung_row(sample_cases[0])]
    with pytest.raises(DatasetError) as error:
        read_manifest(write_csv(tmp_path / "n.csv", stems))
    assert problems(error) == [(3, "image")]


def test_unknown_split_names_and_rows_without_anatomy_are_named(tmp_path, sample_cases):
    rows = [lung_row(sample_cases[0], split="valid"), lung_row(sample_cases[1], split="holdout"),
            {"image": str(sample_cases[2].image_path), "split": "test"}]
    with pytest.raises(DatasetError) as error:
        read_manifest(write_csv(tmp_path / "m.csv", rows))
    assert problems(error) == [(3, "split"), (4, None)]
    assert "--regions atlas" in error.value.problems[1].problem


def test_missing_images_are_refused_or_skipped(tmp_path, sample_cases):
    rows = [lung_row(sample_cases[0]), lung_row(sample_cases[1], image="images/absent.jpg")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest)
    assert problems(error) == [(3, "image")]
    dataset = read_manifest(manifest, missing_images="skip")
    assert len(dataset.records) == 1 and dataset.excluded == {"image file missing": 1}


def test_a_patient_in_several_given_splits_is_refused_or_moved_to_the_majority(tmp_path, sample_cases):
    rows = [lung_row(case, patient_id=patient, split=split) for case, (patient, split) in zip(
        sample_cases, [("p1", "train"), ("p1", "test"), ("p1", "test"), ("p2", "train"), ("p3", "val")])]
    manifest = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest)
    assert problems(error) == [(2, "split")] and "lines 2, 3, 4" in error.value.problems[0].problem
    dataset = read_manifest(manifest, split_conflicts="majority")
    assert [r.split for r in dataset.records] == ["test", "test", "test", "train", "val"]


def test_bad_options_are_refused(tmp_path, sample_cases):
    manifest = write_csv(tmp_path / "m.csv", [lung_row(sample_cases[0])])
    with pytest.raises(DatasetError, match="option regions"):
        read_manifest(manifest, regions="guess")
    with pytest.raises(DatasetError, match="option split_fractions"):
        read_manifest(manifest, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DatasetError, match="expected a .csv or .jsonl"):
        read_manifest(tmp_path / "m.txt")


def test_malformed_lines_are_named(tmp_path, sample_cases):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,labels\n{sample_cases[0].image_path},A\n{sample_cases[1].image_path},B,extra\n")
    with pytest.raises(DatasetError) as error:
        read_manifest(manifest, regions="atlas")
    assert problems(error) == [(3, None)] and "more values than" in error.value.problems[0].problem
    lines = tmp_path / "m.jsonl"
    lines.write_text(f'{{"image": "{sample_cases[0].image_path}"}}\n\n["not", "an object"]\n{{"image": \n')
    with pytest.raises(DatasetError) as error:
        read_manifest(lines, regions="atlas")
    assert problems(error) == [(3, None), (4, None)]
