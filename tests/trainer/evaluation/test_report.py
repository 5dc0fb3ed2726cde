"""Paper-style evaluation, gallery export and their commands, on a real feature cache of bundled radiographs."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from index_store.gallery import read_gallery_npz
from index_store.snapshot import open_snapshot
from model.backbones import build_backbone
from model.checkpoint import BackboneRecord, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.errors import CheckpointError
from model.feature_extractor import FeatureExtractor
from model.network import CheXtriev
from service.cli import main
from trainer.cached_embeddings import (
    BASELINES,
    CHEXTRIEV,
    GLOBAL_CNN,
    REGION_MEAN,
    network_embeddings,
    network_node_embeddings,
)
from trainer.datasets.manifest import read_manifest
from trainer.demo.samples import SAMPLE_DIR
from trainer.evaluation.markdown import render_markdown
from trainer.evaluation.metrics import query_scores
from trainer.evaluation.report import EvaluationInputError, evaluate, evaluate_methods, write_report
from trainer.evaluation.results import EvaluationResult
from trainer.evaluation.significance import paired_p_value, paired_tests
from trainer.feature_cache import FeatureCache, FeatureCacheError, extract_features
from trainer.gallery_export import GalleryExportError, export_gallery

# Test split: five patients with two radiographs each; one more image in train.
TEST_CASES = ("cxrlb-0310", "cxrlb-0311", "cxrlb-0319", "cxrlb-0320", "cxrlb-0312", "cxrlb-0313",
              "cxrlb-0365", "cxrlb-0366", "cxrlb-0344", "cxrlb-0345")
TRAIN_CASES = ("cxrlb-0007",)
SALT = "a-long-random-test-salt"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> FeatureCache:
    """EfficientNet-Lite0 features of 11 bundled radiographs read through the generic manifest reader."""
    directory = tmp_path_factory.mktemp("evaluation")
    with open(SAMPLE_DIR / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["case_id"] in TEST_CASES + TRAIN_CASES]
    for row in rows:
        row["image"] = str(SAMPLE_DIR / row["image"])
        row["split"] = "test" if row["case_id"] in TEST_CASES else "train"
    with open(directory / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = read_manifest(directory / "manifest.csv", columns={"patient_id": "patientid", "labels": "finding"},
                            yes_no_label_columns=("intubated", "went_icu"), name="bundled-sample")
    extractor = FeatureExtractor(build_backbone("efficientnet_lite0"))
    return extract_features(dataset, extractor, directory / "cache", batch_size=11, num_workers=0)


@pytest.fixture(scope="module")
def checkpoint(cache, tmp_path_factory):
    """An untrained small V6 network on the cache's features."""
    torch.manual_seed(0)
    config = ModelConfig.for_variant("V6", cache.feature_dim, width=32, num_heads=2, head_dim=16, ff_dim=64,
                                     num_classes=len(cache.label_names))
    directory = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(directory, CheXtriev(config), cache.backbone)
    return directory


@pytest.fixture(scope="module")
def result(cache, checkpoint) -> EvaluationResult:
    return evaluate(cache, checkpoint, ks=(5, 3), device="cpu")


def test_every_method_is_scored_on_the_test_split(result, cache, checkpoint):
    assert result.methods == (GLOBAL_CNN, REGION_MEAN, CHEXTRIEV)
    assert [evaluation.k for evaluation in result.per_k] == [3, 5]
    assert result.num_queries == len(TEST_CASES)
    assert result.checkpoint_fingerprint == load_checkpoint(checkpoint)[1].fingerprint
    assert result.absent_classes == ("ARDS", "intubated")  # positive only in train
    test_labels = cache.labels[cache.indices("test")]
    for evaluation in result.per_k:
        for method in result.methods:
            honest, skipped = evaluation.reports[method], evaluation.skipped_reports[method]
            for c, row in enumerate(honest.per_class):
                assert row.n_positive == test_labels[:, c].sum()
                values = np.array(dataclasses.astuple(row.scores))
                if row.name in result.absent_classes:
                    assert np.isnan(values).all()
                    continue
                assert ((values >= 0) & (values <= 1)).all()
                assert (np.array(dataclasses.astuple(skipped.per_class[c].scores)) >= values - 1e-12).all()
        assert len(evaluation.tests) == len(BASELINES) * len(cache.label_names)
        for test in evaluation.tests:
            p = np.array(dataclasses.astuple(test.p_values))
            assert (np.isnan(p) | ((p >= 0) & (p <= 1))).all()
            assert test.n_queries == test_labels[:, cache.label_names.index(test.finding)].sum()


def test_without_a_checkpoint_only_the_baselines_are_scored(cache, result):
    baselines = evaluate(cache, None, ks=(5,), device="cpu")
    assert baselines.methods == (GLOBAL_CNN, REGION_MEAN)
    assert baselines.checkpoint_fingerprint is None and baselines.per_k[0].tests == ()
    assert baselines.per_k[0].reports[REGION_MEAN] == result.per_k[1].reports[REGION_MEAN]
    assert "baselines only" in render_markdown(baselines)


def test_the_split_is_queries_and_gallery_and_each_query_never_retrieves_itself(cache):
    n = len(TEST_CASES)
    everything = evaluate(cache, None, ks=(n - 1,), device="cpu").per_k[0]
    labels = cache.labels[cache.indices("test")]
    for method in BASELINES:  # every other test image is retrieved, no train image, never the query
        for c, row in enumerate(everything.reports[method].per_class):
            if row.n_positive:
                assert row.scores.hr == pytest.approx((labels[:, c].sum() - 1) / (n - 1))


def test_same_patient_exclusion_leaves_out_the_other_radiograph_of_the_patient(cache):
    n = len(TEST_CASES)
    rows = cache.indices("test")
    labels, patients = cache.labels[rows], cache.patient_ids[rows]
    evaluation = evaluate(cache, None, ks=(n - 2,), device="cpu").per_k[0]
    for c in range(len(cache.label_names)):
        positive = np.flatnonzero(labels[:, c])
        if not len(positive):
            continue
        same_patient_positives = [labels[(patients == patients[q]), c].sum() for q in positive]
        expected = np.mean([(labels[:, c].sum() - same) / (n - 2) for same in same_patient_positives])
        for method in BASELINES:
            assert evaluation.other_patient_reports[method].per_class[c].scores.hr == pytest.approx(expected)
    assert evaluation.other_patient_reports != evaluation.reports
    # Without the patient's other image a query has too few candidates for n - 1: that scope is not scored.
    too_many = evaluate(cache, None, ks=(n - 1,), device="cpu")
    assert too_many.per_k[0].other_patient_reports is None and too_many.per_k[0].reports
    assert "other patients only: not scored" in render_markdown(too_many)


def test_paired_p_values_by_hand():
    assert np.isnan(paired_p_value(np.array([0.5, 1.0, 0.2]), np.array([0.5, 1.0, 0.2])))  # identical
    assert np.isnan(paired_p_value(np.array([1.0]), np.array([0.0])))  # one pair: undefined
    # differences 1, 1, 0.5, 1: mean 0.875, sd 0.25, t = 7 with 3 degrees of freedom
    assert paired_p_value(np.array([1, 1, 1, 1.0]), np.array([0, 0, 0.5, 0.0])) == pytest.approx(0.005986, abs=1e-6)
    assert paired_p_value(np.ones(5), np.zeros(5)) == 0.0  # always better: t is infinite


def test_perfect_retrieval_beats_the_wrong_one_and_identical_rankings_do_not_differ():
    labels = np.repeat(np.eye(2, dtype=bool), 6, axis=0)  # 12 queries, two findings
    same_finding = np.array([[j for j in np.flatnonzero(labels[:, labels[q].argmax()]) if j != q][:3]
                             for q in range(12)])
    other_finding = np.array([np.flatnonzero(~labels[:, labels[q].argmax()])[[q % 6, (q + 1) % 6, (q + 2) % 6]]
                              for q in range(12)])
    perfect, wrong = query_scores(labels, labels, same_finding), query_scores(labels, labels, other_finding)
    versus_wrong = paired_tests(("a", "b"), CHEXTRIEV, perfect, GLOBAL_CNN, wrong)
    assert all(test.significant(metric) for test in versus_wrong for metric in ("ap", "hr", "rr"))
    assert [test.n_queries for test in versus_wrong] == [6, 6]
    versus_itself = paired_tests(("a", "b"), CHEXTRIEV, perfect, REGION_MEAN, perfect)
    assert not any(test.significant(metric) for test in versus_itself for metric in ("ap", "hr", "rr"))


@pytest.fixture(scope="module")
def constructed(result) -> EvaluationResult:
    """A result where CheXtriev retrieves by the labels, the global CNN at random and the region mean like CheXtriev."""
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 3), dtype=bool)
    labels[:12, 0] = labels[12:, 1] = True  # the third finding is absent
    ours = labels.astype(float) + rng.normal(0, 0.01, labels.shape)
    embeddings = {GLOBAL_CNN: rng.normal(size=(24, 8)), REGION_MEAN: ours, CHEXTRIEV: ours}
    names = ("lung opacity", "pleural effusion", "pneumothorax")
    evaluation = evaluate_methods(embeddings, labels, [f"case-{i}" for i in range(24)], 5, names)
    return dataclasses.replace(result, dataset="constructed", num_queries=24, label_names=names,
                               absent_classes=("pneumothorax",), per_k=(evaluation,))


def test_markdown_marks_significant_baselines_with_the_papers_asterisk(constructed):
    markdown = render_markdown(constructed)
    honest = markdown.index("## Top-5, zero-hit queries counted as 0")
    assert honest < markdown.index("### Top-5: p-values") < markdown.index("## Top-5, zero-hit queries SKIPPED")
    for finding in ("lung opacity", "pleural effusion"):  # in the honest, p-value and skipped tables
        assert sum(line.startswith(f"| {finding} | 12 | ") for line in markdown.splitlines()) == 3
    table_row = next(line for line in markdown.splitlines() if line.startswith("| lung opacity | 12 | "))
    cells = table_row.strip("| ").split(" | ")
    assert all(cell.endswith("*") for cell in cells[2:5])  # global CNN vs CheXtriev: significant
    assert not any(cell.endswith("*") for cell in cells[5:])  # the region mean identical to CheXtriev; CheXtriev unmarked
    assert "Absent from the split (no positive query, not scored): pneumothorax" in markdown
    assert "| pneumothorax" not in markdown


def test_atlas_regions_are_announced_prominently(constructed):
    atlas = dataclasses.replace(constructed, regions_source="atlas")
    assert render_markdown(atlas).splitlines()[2].startswith("**REGIONS FROM THE ATLAS**")
    assert atlas.to_dict()["atlas_regions"] is True
    assert "ATLAS" not in render_markdown(constructed) and constructed.to_dict()["atlas_regions"] is False


def test_report_files_round_trip(result, tmp_path):
    json_path, markdown_path = write_report(result, tmp_path / "report")
    document = json.loads(json_path.read_text())
    assert document == json.loads(json.dumps(result.to_dict()))
    assert markdown_path.read_text() == render_markdown(result)
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == ["evaluation.json", "evaluation.md"]
    assert (document["dataset"], document["split"]) == ("bundled-sample", "test")
    assert (document["regions_source"], document["atlas_regions"]) == ("lung_boxes", False)
    assert document["backbone"]["name"] == "efficientnet_lite0"
    assert document["checkpoint_fingerprint"] == result.checkpoint_fingerprint
    k5 = document["results"][1]
    assert k5["k"] == 5 and list(k5) == ["k", "zero_hit_counted", "zero_hit_skipped", "paired_tests",
                                         "other_patients_zero_hit_counted", "other_patients_paired_tests"]
    assert document["protocol"]["num_patients"] == 5 and "not independent" in document["protocol"]["paired_test"]
    covid = next(t for t in k5["paired_tests"] if t["finding"] == "COVID-19" and t["baseline"] == REGION_MEAN)
    assert covid["n_queries"] == 8 and set(covid["p_values"]) == {"ap", "hr", "rr"}
    per_class = {row["name"]: row for row in k5["zero_hit_counted"][CHEXTRIEV]["per_class"]}
    assert per_class["COVID-19"]["n_positive"] == 8 and per_class["ARDS"]["ap"] is None


def test_bad_requests_are_refused(cache, checkpoint, tmp_path):
    with pytest.raises(EvaluationInputError, match="needs at least 11"):
        evaluate(cache, None, ks=(10,), device="cpu")
    with pytest.raises(EvaluationInputError, match="positive integers"):
        evaluate(cache, None, ks=(0,), device="cpu")
    with pytest.raises(FeatureCacheError, match="unknown split"):
        evaluate(cache, None, split="testing", device="cpu")
    other = BackboneRecord("efficientnet_lite0", "file:other.pth", "0" * 64)
    network, _ = load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "other", network, other)
    with pytest.raises(CheckpointError, match="trained on efficientnet_lite0 features"):
        evaluate(cache, tmp_path / "other", device="cpu")


def test_gallery_export_is_accepted_by_the_index_store(cache, checkpoint, tmp_path):
    export = export_gallery(cache, checkpoint, tmp_path / "gallery.npz", salt=SALT, device="cpu")
    gallery, fingerprint = read_gallery_npz(tmp_path / "gallery.npz")
    rows = cache.indices("test")
    assert fingerprint == export.model_fingerprint == load_checkpoint(checkpoint)[1].fingerprint
    assert gallery.case_ids == tuple(cache.case_ids[rows])
    np.testing.assert_allclose(gallery.embeddings, network_embeddings(load_checkpoint(checkpoint)[0], cache, rows,
                                                                      device="cpu"), atol=1e-6)
    np.testing.assert_allclose(gallery.region_embeddings, network_node_embeddings(  # for region-level search
        load_checkpoint(checkpoint)[0], cache, rows, device="cpu"), atol=1e-6)
    patients = cache.patient_ids[rows]
    keys = np.array(gallery.group_keys)
    for i in range(len(rows)):
        assert ((keys == keys[i]) == (patients == patients[i])).all()
        assert str(patients[i]) not in keys[i]
    assert main(["index", "build", "--embeddings", str(tmp_path / "gallery.npz"), "--out",
                 str(tmp_path / "snapshot")]) == 0
    assert open_snapshot(tmp_path / "snapshot").has_region_vectors


def test_group_keys_need_a_salt_that_is_long_enough(cache, checkpoint, tmp_path):
    unsalted = export_gallery(cache, checkpoint, tmp_path / "plain.npz", split="all", device="cpu")
    gallery, _ = read_gallery_npz(tmp_path / "plain.npz")
    assert unsalted.count == cache.count and gallery.group_keys is None
    with pytest.raises(GalleryExportError, match="at least 16 characters"):
        export_gallery(cache, checkpoint, tmp_path / "weak.npz", salt="short", device="cpu")
    assert not (tmp_path / "weak.npz").exists()


def test_evaluate_command_prints_and_writes_the_tables(cache, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", "--features", str(cache.directory), "--checkpoint", str(checkpoint), "--out",
                 str(out), "--k", "3", "--k", "5", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "## Top-3, zero-hit queries counted as 0" in printed and "| COVID-19 | 8 |" in printed
    # The same-patient-excluded table comes beside the default one without a flag, with its p-values.
    assert printed.index("## Top-3, zero-hit queries counted as 0") < printed.index(
        "## Top-3, other patients only, zero-hit queries counted as 0") < printed.index("### Top-3: p-values")
    assert "### Top-3, other patients only: p-values" in printed and "not independent" in printed
    document = json.loads((out / "evaluation.json").read_text())
    assert document["results"][0]["other_patients_zero_hit_counted"][CHEXTRIEV]["per_class"]
    assert main(["evaluate", "--features", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "is not a feature cache" in capsys.readouterr().err


def test_embed_command_takes_the_salt_from_the_environment(cache, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHEXTRIEV_PATIENT_SALT", SALT)
    assert main(["embed", "--features", str(cache.directory), "--checkpoint", str(checkpoint), "--split", "test",
                 "--out", str(tmp_path / "gallery.npz"), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == len(TEST_CASES) and summary["group_keys"] is True
    assert read_gallery_npz(tmp_path / "gallery.npz")[0].group_keys is not None

