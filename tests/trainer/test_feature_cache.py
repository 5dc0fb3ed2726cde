"""The feature cache on bundled radiographs and the Chest ImaGenome fixtures: contents, region labels,
resuming, refusals, bad images, torchrun."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.catalogue import FINDING_NAMES, NUM_REGIONS, REGION_INDEX
from model.checkpoint import BackboneRecord
from model.feature_extractor import FeatureExtractor
from model.imaging import decode_image
from tests.trainer.datasets import imagenome_fixtures
from trainer.datasets import read_manifest
from trainer.datasets.anatomy_sources import LungBoxes
from trainer.datasets.records import Dataset, ImageRecord
from trainer.feature_cache import (
    DONE_FILE,
    MANIFEST_FILE,
    RECORDS_FILE,
    REGION_FILE,
    REGION_LABELS_FILE,
    SKIPPED_FILE,
    WHOLE_FILE,
    FeatureCache,
    FeatureCacheError,
    extract_features,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test", "test", "train", "train")  # by patient: 5, 103, 219, 219, 221, 221
# fp16 keeps 11 significant bits: cached features agree with float32 ones to about 5e-4 relative.
FP16_TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}
DATA_FILES = (REGION_FILE, WHOLE_FILE, DONE_FILE, SKIPPED_FILE, RECORDS_FILE)


class Interrupted(Exception):
    """Stands for a kill arriving right after a batch reached the disk."""


def interrupt_after(images: int):
    """An after_batch callback that stops the run once `images` images are on disk."""
    def after_batch(images_done: int) -> None:
        if images_done >= images:
            raise Interrupted
    return after_batch


def records_of(cases) -> list[ImageRecord]:
    return [ImageRecord(case.case_id, case.image_path, case.patient_id, split, (case.finding,),
                        LungBoxes(case.right_lung, case.left_lung))
            for case, split in zip(cases, SPLITS, strict=False)]


def dataset_of(records: list[ImageRecord], name: str = "bundled") -> Dataset:
    labels = tuple(sorted({label for record in records for label in record.labels}))
    return Dataset(name, labels, records, "lung_boxes")


def write_manifest(path: Path, records: list[ImageRecord]) -> Path:
    """A CSV manifest (`chextriev features --manifest`) of records with lung boxes."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "case_id", "patient_id", "split", "labels", "right_lung", "left_lung"])
        for record in records:
            writer.writerow([record.image_path, record.case_id, record.patient_id, record.split,
                             "|".join(record.labels), json.dumps(record.anatomy.right_lung),
                             json.dumps(record.anatomy.left_lung)])
    return path


def without_region_labels(directory: Path) -> None:
    """Make a cache look as one written before region labels were kept."""
    (directory / REGION_LABELS_FILE).unlink()
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    del manifest["region_labels"]
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def dataset(sample_cases) -> Dataset:
    return dataset_of(records_of(sample_cases[:6]))


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(build_backbone("efficientnet_lite0"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as in the torchrun processes: then no float sum depends on how rows are
    batched, and runs that batch differently give the same bytes. (With several threads a
    whole-image feature can move by its last fp16 bit.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(dataset, extractor, tmp_path_factory) -> FeatureCache:
    """An uninterrupted run: batches of 2, decoded by one worker process."""
    return extract_features(dataset, extractor, tmp_path_factory.mktemp("reference") / "cache",
                            batch_size=2, num_workers=1)


@pytest.fixture(scope="module")
def imagenome() -> Dataset:
    return imagenome_fixtures.read()


@pytest.fixture(scope="module")
def imagenome_reference(imagenome, extractor, tmp_path_factory) -> FeatureCache:
    """An uninterrupted run over the Chest ImaGenome fixtures (4 images), batches of 2."""
    return extract_features(imagenome, extractor, tmp_path_factory.mktemp("imagenome") / "cache",
                            batch_size=2, num_workers=0)


def test_a_cache_reopens_with_the_dataset_and_backbone_it_was_made_from(reference, dataset, extractor):
    cache = FeatureCache.open(reference.directory)
    assert cache.count == 6 and cache.dataset_name == "bundled" and cache.regions_source == "lung_boxes"
    assert cache.case_ids.tolist() == [record.case_id for record in dataset.records]
    assert cache.patient_ids.tolist() == [record.patient_id for record in dataset.records]
    assert cache.splits.tolist() == list(SPLITS)
    assert cache.label_names == dataset.label_names
    np.testing.assert_array_equal(cache.labels, dataset.label_matrix())
    assert cache.backbone == BackboneRecord.of(extractor.backbone)
    assert cache.region_features.shape == (6, NUM_REGIONS, 1280) and cache.region_features.dtype == np.float16
    assert cache.whole_image_features.shape == (6, 1280) and cache.whole_image_features.dtype == np.float16
    assert cache.done.all() and not cache.skipped.any()
    assert cache.indices("train").tolist() == [0, 4, 5] and cache.indices("test").tolist() == [2, 3]
    with pytest.raises(ValueError):
        cache.region_features[0, 0, 0] = 1  # read-only: nothing reading a cache can damage it
    manifest = json.loads((reference.directory / MANIFEST_FILE).read_text())
    assert manifest["count"] == 6 and manifest["feature_dim"] == 1280
    assert manifest["backbone"]["fingerprint"] == extractor.backbone.fingerprint
    assert cache.region_labels is None and "region_labels" not in manifest  # image labels only
    assert not (reference.directory / REGION_LABELS_FILE).exists()


def test_a_manifest_datasets_cache_holds_image_labels_only(dataset, extractor, tmp_path):
    manifest_dataset = read_manifest(write_manifest(tmp_path / "manifest.csv", dataset.records[:2]))
    cache = extract_features(manifest_dataset, extractor, tmp_path / "cache", num_workers=0)
    assert cache.region_labels is None and cache.summary()["region_labels"] is False
    assert sorted(path.name for path in cache.directory.iterdir()) == sorted(
        [MANIFEST_FILE, RECORDS_FILE, REGION_FILE, WHOLE_FILE, DONE_FILE, SKIPPED_FILE])


def test_an_imagenome_cache_holds_the_region_labels_of_the_scene_graphs(imagenome_reference, imagenome):
    cache = FeatureCache.open(imagenome_reference.directory)
    assert cache.region_labels.shape == (4, NUM_REGIONS, len(FINDING_NAMES)) and cache.region_labels.dtype == bool
    np.testing.assert_array_equal(cache.region_labels, imagenome.region_label_matrix())
    # By hand, from A's scene graph: "anatomicalfinding|yes|pleural effusion" on the right costophrenic
    # angle (a later "no" does not clear it), "...|yes|lung opacity" on the left mid lung zone and the
    # left lung; its right lung has only "no" relations.
    a = cache.region_labels[cache.case_ids.tolist().index(imagenome_fixtures.A)]
    effusion, opacity = FINDING_NAMES.index("pleural effusion"), FINDING_NAMES.index("lung opacity")
    assert a[REGION_INDEX["right costophrenic angle"], effusion]
    assert a[REGION_INDEX["left mid lung zone"], opacity] and a[REGION_INDEX["left lung"], opacity]
    assert int(a.sum()) == 3 and not a[REGION_INDEX["right lung"]].any()
    np.testing.assert_array_equal(cache.region_labels.any(axis=1), cache.labels)
    manifest = json.loads((cache.directory / MANIFEST_FILE).read_text())
    assert manifest["region_labels"] == REGION_LABELS_FILE and cache.summary()["region_labels"] is True
    with pytest.raises(ValueError):
        cache.region_labels[0, 0, 0] = True  # read-only, as the features


def test_an_interrupted_imagenome_run_resumes_to_the_same_bytes_region_labels_included(
        imagenome_reference, imagenome, extractor, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(Interrupted):
        extract_features(imagenome, extractor, out, batch_size=2, num_workers=0, after_batch=interrupt_after(2))
    assert FeatureCache.open(out, allow_incomplete=True).region_labels is not None
    extract_features(imagenome, extractor, out, batch_size=2, num_workers=0)
    for name in (*DATA_FILES, REGION_LABELS_FILE):
        assert (out / name).read_bytes() == (imagenome_reference.directory / name).read_bytes(), name


def test_a_cache_made_before_region_labels_were_kept_opens_and_a_rerun_adds_them(
        imagenome_reference, imagenome, extractor, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(imagenome_reference.directory, out)
    without_region_labels(out)
    old = FeatureCache.open(out)
    assert old.region_labels is None and old.count == 4 and old.summary()["region_labels"] is False
    data = {name: (out / name).read_bytes() for name in DATA_FILES}
    computed = []
    cache = extract_features(imagenome, extractor, out, num_workers=0, after_batch=computed.append)
    assert computed == []  # every row was done: the features are not computed again
    assert {name: (out / name).read_bytes() for name in DATA_FILES} == data
    np.testing.assert_array_equal(cache.region_labels, imagenome.region_label_matrix())


def test_a_cache_holding_other_region_labels_refuses_to_resume(imagenome_reference, imagenome, extractor, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(imagenome_reference.directory, out)
    changed = np.load(out / REGION_LABELS_FILE)
    changed[0, 0, 0] = ~changed[0, 0, 0]
    np.save(out / REGION_LABELS_FILE, changed)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(FeatureCacheError, match="cannot be resumed by this one .*region labels"):
        extract_features(imagenome, extractor, out, num_workers=0)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_cached_features_are_the_extractors_features_in_fp16(reference, dataset, extractor):
    rows = [0, 3]  # one from the first batch, one from a later one: two images keep this test quick
    images = [decode_image(dataset.records[row].image_path) for row in rows]
    boxes = np.stack([dataset.records[row].anatomy.boxes(image.width, image.height)
                      for row, image in zip(rows, images, strict=True)])
    pixels = [image.pixels for image in images]
    np.testing.assert_allclose(reference.region_features[rows].astype(np.float32),
                               extractor.region_features(pixels, boxes).numpy(), **FP16_TOLERANCE)
    np.testing.assert_allclose(reference.whole_image_features[rows].astype(np.float32),
                               extractor.whole_image_features(pixels).numpy(), **FP16_TOLERANCE)


def test_an_interrupted_run_leaves_an_incomplete_cache_that_resumes_to_the_same_bytes(
        reference, dataset, extractor, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(Interrupted):
        extract_features(dataset, extractor, out, batch_size=2, num_workers=0,
                         after_batch=interrupt_after(2))
    with pytest.raises(FeatureCacheError, match="incomplete: 4 of 6 rows are missing"):
        FeatureCache.open(out)
    partial = FeatureCache.open(out, allow_incomplete=True)
    assert partial.done.tolist() == [True, True, False, False, False, False]
    assert partial.indices("train").tolist() == [0]  # rows not done are not usable

    resumed_images = []
    extract_features(dataset, extractor, out, batch_size=2, num_workers=0, after_batch=resumed_images.append)
    assert resumed_images == [2, 4]  # only the four missing rows were computed
    for name in DATA_FILES:
        assert (out / name).read_bytes() == (reference.directory / name).read_bytes(), name
    created = json.loads((out / MANIFEST_FILE).read_text())
    made = json.loads((reference.directory / MANIFEST_FILE).read_text())
    assert {**created, "created": None} == {**made, "created": None}


@pytest.mark.parametrize("change, named", [
    ("backbone", "backbone"),
    ("dataset", "dataset_fingerprint"),
])
def test_a_cache_of_another_run_refuses_to_resume_and_stays_untouched(reference, dataset, extractor, change,
                                                                       named, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(reference.directory, out)
    before = {name: (out / name).read_bytes() for name in (*DATA_FILES, MANIFEST_FILE)}
    if change == "backbone":
        other_dataset, other = dataset, FeatureExtractor(build_backbone("resnet50", None, allow_random=True),
                                                         runtime="torch")  # no 100 MB ONNX export
    else:
        records = [replace(record, split="train") if record.split == "val" else record for record in dataset.records]
        other_dataset, other = dataset_of(records), extractor
    with pytest.raises(FeatureCacheError, match=f"cannot be resumed by this one .*{named}: cache has"):
        extract_features(other_dataset, other, out, num_workers=0)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_unusable_images_stop_the_run_or_are_skipped_and_left_out(dataset, extractor, tmp_path, caplog):
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(dataset.records[0].image_path.read_bytes()[:400])
    good = dataset.records[0]
    swapped = LungBoxes(good.anatomy.left_lung, good.anatomy.right_lung)  # right lung on the image right
    records = [replace(good, case_id="damaged", image_path=damaged, patient_id="patient-secret-1"),
               replace(good, patient_id="patient-secret-2"),
               replace(dataset.records[1], case_id="swapped-lungs", anatomy=swapped, patient_id="patient-secret-3")]
    bad_dataset = dataset_of(records, "with bad images")

    with pytest.raises(FeatureCacheError, match="case damaged: CorruptImageError.*case swapped-lungs: RegionError"):
        extract_features(bad_dataset, extractor, tmp_path / "stopped", num_workers=0)
    assert not np.load(tmp_path / "stopped" / DONE_FILE).any()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.feature_cache"):
        cache = extract_features(bad_dataset, extractor, tmp_path / "skipped", num_workers=0, skip_bad_images=True)
    assert cache.done.all() and cache.skipped.tolist() == [True, False, True]
    assert cache.indices("train").tolist() == [1]
    assert not cache.region_features[[0, 2]].any() and cache.region_features[1].any()
    warned = [record for record in caplog.records if record.getMessage() == "image cannot be used"]
    assert [record.case_id for record in warned] == ["damaged", "swapped-lungs"]
    logged = " ".join(json.dumps(vars(record), default=str) for record in warned)
    assert "patient-secret" not in logged and str(damaged) not in logged


@pytest.mark.torchrun
def test_two_torchrun_processes_fill_the_same_cache_as_one_process(reference, dataset, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", dataset.records)
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "service.cli", "features", "--out", str(out), "--backbone", "efficientnet_lite0",
               "--batch-size", "2", "--workers", "0", "--device", "cpu", "--manifest", str(manifest)]
    # Each process batches its own rows (0, 2 | 4 and 1, 3 | 5); on one thread (see one_thread) the
    # bytes still agree with the one-process run.
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                               timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summaries = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert sorted((s["rank"], s["world_size"]) for s in summaries) == [(0, 2), (1, 2)]

    cache = FeatureCache.open(out)
    assert cache.case_ids.tolist() == reference.case_ids.tolist()
    assert cache.splits.tolist() == reference.splits.tolist()
    for name in (REGION_FILE, WHOLE_FILE, DONE_FILE, SKIPPED_FILE):
        assert (out / name).read_bytes() == (reference.directory / name).read_bytes(), name
