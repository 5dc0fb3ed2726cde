"""Cross-validated retrieval on a real feature cache of bundled radiographs: patient-level folds, tasks from
label tables with region-level ranking, every image a query once, and the `chextriev evaluate --folds` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from model.backbones import build_backbone
from model.catalogue import REGION_INDEX
from model.config import ModelConfig
from model.feature_extractor import FeatureExtractor
from service.cli import main
from trainer.cached_embeddings import GLOBAL_CNN, baseline_embeddings, patient_groups
from trainer.datasets.errors import DatasetError
from trainer.datasets.manifest import read_manifest
from trainer.demo.samples import SAMPLE_DIR
from trainer.evaluation.crossval import REGION_FEATURE, REGION_LEVEL, cross_validate, patient_folds
from trainer.evaluation.metrics import query_scores, retrieve_top_k
from trainer.evaluation.report import EvaluationInputError
from trainer.evaluation.tasks import table_task
from trainer.feature_cache import FeatureCache, extract_features
from trainer.training import TrainingConfig

CASES = 14
ZONES = ("right upper", "left lower")
TINY = {"width": 32, "num_heads": 2, "head_dim": 8, "ff_dim": 64}
TINY_OPTIONS = ["--width", "32", "--num-heads", "2", "--head-dim", "8", "--ff-dim", "64"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> FeatureCache:
    """EfficientNet-Lite0 features of 14 bundled radiographs (patients with one or two images each)."""
    directory = tmp_path_factory.mktemp("crossval")
    with open(SAMPLE_DIR / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:CASES]
    for row in rows:
        row["image"] = str(SAMPLE_DIR / row["image"])
    with open(directory / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = read_manifest(directory / "manifest.csv", columns={"patient_id": "patientid", "labels": "finding"},
                            yes_no_label_columns=("went_icu",), name="bundled-crossval")
    extractor = FeatureExtractor(build_backbone("efficientnet_lite0"))
    return extract_features(dataset, extractor, directory / "cache", batch_size=14, num_workers=0)


@pytest.fixture(scope="module")
def zone_table(cache, tmp_path_factory) -> Path:
    """A regional-findings table in JSRT's layout: a lung zone for 10 of the images, keyed by image file."""
    path = tmp_path_factory.mktemp("tables") / "zones.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "zone", "malignancy"])
        for index, case_id in enumerate(cache.case_ids.tolist()[:10]):
            writer.writerow([f"images/{case_id}.jpg", ZONES[index % 2], "malignant" if index < 5 else "benign"])
    return path


def test_patient_folds_keep_each_patient_whole_and_the_folds_balanced(cache):
    rows = np.arange(cache.count)
    groups = patient_groups(cache, rows)
    folds = patient_folds(groups, rows, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == rows.tolist()
    fold_of = {row: f for f, fold in enumerate(folds) for row in fold.tolist()}
    for group in set(groups):
        assert len({fold_of[row] for row in rows if groups[row] == group}) == 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 2
    assert [f.tolist() for f in patient_folds(groups, rows, 3, seed=0)] == [f.tolist() for f in folds]
    with pytest.raises(EvaluationInputError, match="at least 20 patients"):
        patient_folds(groups, rows, 20, seed=0)


def test_a_label_table_gives_the_task_its_relevance_gallery_and_regions(cache, zone_table, tmp_path):
    task = table_task(cache, zone_table, "zone", gallery_label="went_icu", region_level=True)
    assert task.label_names == ("left lower", "right upper") and task.asks.sum() == 10
    icu = cache.labels[:, cache.label_names.index("went_icu")]
    assert np.array_equal(task.searched, task.asks | icu)
    assert set(task.query_regions[task.asks].tolist()) == {REGION_INDEX["right upper lung zone"],
                                                           REGION_INDEX["left lower lung zone"]}
    assert (task.query_regions[~task.asks] == -1).all()
    with pytest.raises(EvaluationInputError, match="name none of"):
        table_task(cache, zone_table, "malignancy", region_level=True)
    other = tmp_path / "other.csv"
    other.write_text("case_id,zone\nnot-in-the-cache,left mid\n")
    with pytest.raises(EvaluationInputError, match="no usable image"):
        table_task(cache, other, "zone")
    other.write_text("case_id,zone\na,left mid\na,right mid\n")
    with pytest.raises(DatasetError, match="listed twice"):
        table_task(cache, other, "zone")


def test_cross_validation_asks_every_image_once_and_scores_the_baselines_as_a_direct_ranking(cache, zone_table,
                                                                                               tmp_path):
    task = table_task(cache, zone_table, "zone", region_level=True)
    config = ModelConfig.for_variant("V6", cache.feature_dim, num_classes=len(cache.label_names), **TINY)
    training = TrainingConfig.preset("small-data", max_epochs=1, accelerator="cpu", devices=1)
    result = cross_validate(cache, task, config, training, tmp_path, folds=2, seed=0, ks=(3,), device="cpu")
    assert result.queries == 10 and sum(result.fold_sizes) == CASES
    assert result.methods[-2:] == ("CheXtriev", REGION_LEVEL) and REGION_FEATURE in result.methods
    for fold in range(2):
        assert (tmp_path / f"fold-{fold}" / "checkpoint").is_dir()
        assert json.loads((tmp_path / f"fold-{fold}" / "training.json").read_text())["history"]
    # The global CNN needs no training: pooled over the folds, each query's AP is that of ranking it directly.
    searched = np.flatnonzero(task.searched)
    vectors = baseline_embeddings(cache, np.arange(cache.count))[GLOBAL_CNN]
    ids = cache.case_ids.tolist()
    expected = {}
    for query in np.flatnonzero(task.asks):
        ranked = retrieve_top_k(vectors[[query]] @ vectors[searched].T, 3, [ids[query]], [ids[r] for r in searched])
        ap = query_scores(task.labels[[query]], task.labels[searched], ranked).ap[0]
        expected[ids[query]] = float(np.nanmean(ap))
    folds = patient_folds(patient_groups(cache, np.arange(cache.count)), np.arange(cache.count), 2, seed=0)
    asked = [ids[row] for fold in folds for row in fold if task.asks[row]]
    pooled = result.results["all images"][3][GLOBAL_CNN].pooled("ap")
    np.testing.assert_allclose(pooled, [expected[case_id] for case_id in asked])
    value, half = result.results["all images"][3][GLOBAL_CNN].interval("ap", weighted=True)
    per_fold = [fold.weighted_mean["ap"] for fold in result.results["all images"][3][GLOBAL_CNN].folds]
    assert value == pytest.approx(np.mean(per_fold)) and half > 0


def test_evaluate_folds_command_writes_the_tables(cache, zone_table, tmp_path, capsys):
    code = main(["evaluate", "--features", str(cache.directory), "--out", str(tmp_path), "--folds", "2",
                 "--labels-from", str(zone_table), "--label-column", "zone", "--region-level", "--k", "3",
                 "--region-findings", str(zone_table), "--region-label", "COVID-19", "--node-loss-weight", "1",
                 "--contrastive-weight", "1", "--epochs", "1", "--accelerator", "cpu", "--devices", "1",
                 "--device", "cpu", *TINY_OPTIONS])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "crossval.json").read_text())
    assert report["queries"] == 10 and report["folds"] == 2
    tests = report["scopes"]["all images"]["3"]["paired_tests"]
    assert {(entry["method"], entry["baseline"]) for entry in tests} >= {(REGION_LEVEL, "CheXtriev"),
                                                                         (REGION_LEVEL, REGION_FEATURE)}
    assert "| CheXtriev region-level |" in (tmp_path / "crossval.md").read_text()
    assert main(["evaluate", "--features", str(cache.directory), "--out", str(tmp_path / "x"),
                 "--labels-from", str(zone_table), "--label-column", "zone"]) == 1
    assert "--labels-from needs --folds" in capsys.readouterr().err
