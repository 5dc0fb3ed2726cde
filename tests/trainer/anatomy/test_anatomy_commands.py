"""`chextriev anatomy train` and `evaluate` end to end on the bundled radiographs: a real (short)
training run, an ONNX model the service can load, and figures on the images it did not see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.anatomy_model import LUNGS, AnatomyModel
from service.cli import main
from trainer.demo.samples import SAMPLE_DIR

MANIFEST = SAMPLE_DIR / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for two epochs at 64 x 64 on the bundled radiographs (open licences only)."""
    out = tmp_path_factory.mktemp("anatomy")
    arguments = ["anatomy", "train", "--manifest", str(MANIFEST), "--column", "patient_id=patientid",
                 "--open-licences-only", "--epochs", "2", "--size", "64", "--batch-size", "8", "--out", str(out)]
    assert main(arguments) == 0
    return out


def test_training_writes_a_loadable_model_and_its_record(trained):
    model = AnatomyModel.load(trained / "anatomy.onnx")
    record = json.loads((trained / "training.json").read_text())
    assert model.input_size == 64 and model.trained_structures == LUNGS  # boxes of lungs only: no heart
    assert len(record["history"]) == 2 and record["best_epoch"] in (0, 1)
    counts = record["datasets"]["cxr_lungbox"]
    assert counts["images"] == 48 and 0 < counts["val"] < counts["train"] < 48
    assert model.training_images == frozenset(record["training_images"])
    assert len(model.training_images) == counts["train"] + counts["val"]
    assert record["negatives"] == round(counts["train"] * 0.25) and record["open_licences_only"]
    assert model.probabilities(np.zeros((80, 60), dtype=np.float32)).shape == (3, 64, 64)


def test_evaluation_leaves_out_the_images_trained_on(trained, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert main(["anatomy", "evaluate", "--model", str(trained / "anatomy.onnx"), "--manifest", str(MANIFEST),
                 "--column", "patient_id=patientid", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    report = figures["datasets"]["cxr_lungbox"]
    seen = len(AnatomyModel.load(trained / "anatomy.onnx").training_images)
    assert report["images"] == 48 - seen and report["lung_box_iou"]["n"] == report["images"]
    assert 0 <= report["lung_box_iou"]["median"] <= 1 and "regions_iou" in report
    assert "lung-box IoU median" in capsys.readouterr().out


def test_a_manifest_without_a_licence_column_cannot_choose_open_images(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,right_lung,left_lung\nimages/0007.jpg,\"[1, 1, 50, 90]\",\"[60, 1, 110, 90]\"\n")
    assert main(["anatomy", "train", "--manifest", str(manifest), "--open-licences-only", "--out",
                 str(tmp_path / "out")]) == 2
    assert "no 'license' column" in capsys.readouterr().err
