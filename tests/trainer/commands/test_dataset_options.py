"""The dataset command-line options shared by the offline commands."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from trainer.commands.dataset_options import add_dataset_arguments, dataset_from_args
from trainer.datasets import DatasetError, read_manifest
from trainer.demo.samples import SAMPLE_DIR

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "imagenome"
# The options that load the real sets of ../shared/data (as given in README).
REAL_SET_OPTIONS = {
    "cxr-lungbox": ("--column patient_id=patientid --label-column finding "
                    "--yes-no-label survival,intubated,went_icu,needed_supplemental_O2", 494),
    "jsrt": ("--yes-no-label nodule", 247),
    "nih1000": ("--regions atlas --split-conflicts majority", 1000),
}


def parse(arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    return parser.parse_args(shlex.split(arguments))


def test_manifest_options_read_the_same_dataset_as_the_reader():
    args = parse(f"--manifest {SAMPLE_DIR / 'manifest.csv'} --column patient_id=patientid --label-column finding "
                 "--yes-no-label intubated --yes-no-label went_icu --split-seed 3 --split-fractions 0.6,0.2,0.2")
    dataset = dataset_from_args(args)
    expected = read_manifest(SAMPLE_DIR / "manifest.csv", columns={"patient_id": "patientid"},
                             label_columns=["finding"], yes_no_label_columns=["intubated", "went_icu"], seed=3,
                             split_fractions=(0.6, 0.2, 0.2))
    assert dataset.label_names == expected.label_names
    assert [(r.case_id, r.split, r.labels) for r in dataset.records] == [
        (r.case_id, r.split, r.labels) for r in expected.records]


def test_imagenome_options():
    dataset = dataset_from_args(parse(
        f"--imagenome-scene-graphs {FIXTURES / 'scene_graph'} --mimic-jpg {FIXTURES} "
        f"--mimic-split {FIXTURES / 'mimic-cxr-2.0.0-split.csv'} "
        f"--mimic-metadata {FIXTURES / 'mimic-cxr-2.0.0-metadata.csv'} --dataset-name mimic"))
    assert dataset.name == "mimic" and len(dataset.records) == 4 and dataset.regions_source == "imagenome"


def test_model_regions_come_from_the_anatomy_model_file_named(shipped_anatomy_model):
    dataset = dataset_from_args(parse(f"--manifest {SAMPLE_DIR / 'manifest.csv'} --regions model "
                                      f"--anatomy-model {shipped_anatomy_model}"))
    assert dataset.regions_source == "model" and dataset.records[0].anatomy.model_path == shipped_anatomy_model


@pytest.mark.parametrize("arguments, message", [
    ("", "choose a dataset"),
    (f"--manifest m.csv --mimic-jpg {FIXTURES}", "not both"),
    (f"--imagenome-scene-graphs {FIXTURES} --mimic-jpg {FIXTURES}", "needs --imagenome-scene-graphs"),
    (f"--imagenome-scene-graphs {FIXTURES / 'scene_graph'} --mimic-jpg {FIXTURES} "
     f"--mimic-split {FIXTURES / 'mimic-cxr-2.0.0-split.csv'} --label-column finding", "--label-column apply"),
    (f"--manifest {SAMPLE_DIR / 'manifest.csv'} --column patientid", "expected NAME=FILE_COLUMN"),
    (f"--manifest {SAMPLE_DIR / 'manifest.csv'} --split-fractions 0.7,x,0.2", "expected three numbers"),
    (f"--imagenome-scene-graphs {FIXTURES / 'scene_graph'} --mimic-jpg {FIXTURES} "
     f"--mimic-split {FIXTURES / 'mimic-cxr-2.0.0-split.csv'} --anatomy-model a.onnx", "--anatomy-model apply"),
    (f"--manifest {SAMPLE_DIR / 'manifest.csv'} --regions model --anatomy-model absent.onnx",
     "cannot read the anatomy model absent.onnx"),
])
def test_contradictory_or_malformed_options_are_refused(arguments, message):
    with pytest.raises(DatasetError, match=message):
        dataset_from_args(parse(arguments))


@pytest.mark.parametrize("name", REAL_SET_OPTIONS)
def test_the_real_sets_load_with_column_options_only(shared_data, name):
    options, count = REAL_SET_OPTIONS[name]
    dataset = dataset_from_args(parse(f"--manifest {shared_data / name / 'manifest.csv'} {options}"))
    assert dataset.name == name and len(dataset.records) == count
