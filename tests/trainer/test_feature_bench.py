"""The fast feature pipelines of `chextriev features` against the reference path, and `chextriev bench features`
at a tiny size, on bundled radiographs."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.crops import crop_regions, whole_image
from model.feature_extractor import FeatureExtractor
from model.imaging import decode_image
from model.region_crops import SINGLE
from trainer.commands import bench_features
from trainer.datasets.anatomy_sources import LungBoxes
from trainer.datasets.records import Dataset, ImageRecord
from trainer.feature_cache import FeatureCacheError, extract_features
from trainer.feature_pipeline import RecordCrops, feature_pipeline


@pytest.fixture(scope="module")
def dataset(sample_cases) -> Dataset:
    records = [ImageRecord(case.case_id, case.image_path, case.patient_id, "train", (case.finding,),
                           LungBoxes(case.right_lung, case.left_lung)) for case in sample_cases[:3]]
    return Dataset("bundled", tuple(sorted({r.labels[0] for r in records})), records, "lung_boxes")


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(build_backbone("efficientnet_lite0"))


@pytest.fixture(scope="module")
def decoded(dataset):
    """The reference path's inputs: every image decoded, with its (18, 4) boxes."""
    images = [decode_image(record.image_path) for record in dataset.records]
    return ([image.pixels for image in images],
            np.stack([r.anatomy.boxes(i.width, i.height) for r, i in zip(dataset.records, images, strict=True)]))


@pytest.fixture(scope="module")
def exact_cache(dataset, extractor, tmp_path_factory):
    return extract_features(dataset, extractor, tmp_path_factory.mktemp("exact") / "cache", batch_size=2,
                            num_workers=1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float32), b.reshape(-1, b.shape[-1]).astype(np.float32)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_worker_crops_are_the_crops_the_batched_reference_path_cuts(dataset, decoded):
    pixels, boxes = decoded
    tensors = [torch.from_numpy(image) for image in pixels]
    reference = torch.cat([crop_regions(tensors, torch.as_tensor(boxes, dtype=torch.float32)),
                           whole_image(tensors)[:, None]], dim=1)
    crops = RecordCrops(dataset.records, range(len(dataset.records)), SINGLE)
    assert torch.equal(torch.stack([crops[row].pixels for row in range(len(dataset.records))]), reference)


def test_the_fast_cpu_path_caches_the_reference_paths_features(exact_cache, extractor, decoded):
    pixels, boxes = decoded
    region = extractor.region_features(pixels, boxes).to(torch.float16).numpy()
    whole = extractor.whole_image_features(pixels).to(torch.float16).numpy()
    assert json.loads((exact_cache.directory / "manifest.json").read_text())["crops"] == "exact"
    # Same crops, same backbone: ONNX Runtime computes each crop on its own, so batching them otherwise
    # (per image in the workers, 24 per call) leaves every cached value as it was.
    np.testing.assert_array_equal(exact_cache.region_features, region)
    np.testing.assert_array_equal(exact_cache.whole_image_features, whole)


def test_device_crops_make_a_cache_close_to_the_exact_one_that_an_exact_run_refuses(
        dataset, extractor, exact_cache, tmp_path):
    first = dataclasses.replace(dataset, records=dataset.records[:1])  # the device path runs eager PyTorch here: slow
    pipeline = feature_pipeline(extractor, "device")
    cache = extract_features(first, extractor, tmp_path / "cache", batch_size=1, num_workers=0, pipeline=pipeline)
    assert json.loads((cache.directory / "manifest.json").read_text())["crops"] == "roi_align"
    # See tests/model/test_gpu_crops.py for the tolerance.
    assert cosines(cache.region_features, exact_cache.region_features[:1]).min() > 0.98
    assert cosines(cache.whole_image_features, exact_cache.whole_image_features[:1]).min() > 0.98
    with pytest.raises(FeatureCacheError, match="crops"):
        extract_features(first, extractor, tmp_path / "cache", batch_size=1, num_workers=0)


def test_the_bench_measures_both_paths_and_writes_a_report(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_features.register(parser.add_subparsers())
    out = tmp_path / "features.json"
    args = parser.parse_args(["features", "--device", "cpu", "--images", "3", "--warmup-images", "1",
                              "--batch-size", "2", "--workers", "0", "--out", str(out)])
    assert args.handler(args) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["speedup"] == report["speedup"]
    assert report["baseline"]["images"] == report["fast"]["images"] == 3
    for path in ("baseline", "fast"):
        assert report[path]["images_per_s"] > 0 and report[path]["cpu_seconds_per_image"] > 0
    assert report["speedup"] == pytest.approx(report["fast"]["images_per_s"] / report["baseline"]["images_per_s"])
    assert report["agreement_with_baseline"]["region_cosine"]["min"] > 0.999  # exact crops: fp16 rounding only
    assert report["config"]["device"] == "cpu" and report["machine"]["cpu_count"] >= 1
