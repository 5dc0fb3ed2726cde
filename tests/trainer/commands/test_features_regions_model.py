"""`chextriev features --regions model`: regions predicted by the shipped anatomy model; `--region-crops`."""

from __future__ import annotations

import argparse
import json

from PIL import Image

from model.region_crops import TILES
from tests.trainer.datasets.manifests import write_csv
from trainer.commands import features
from trainer.feature_cache import FeatureCache


def test_features_with_model_regions_skip_an_image_without_a_chest(shipped_anatomy_model, sample_cases,
                                                                    tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (512, 512), 128).save(blank)
    rows = [{"image": str(case.image_path), "labels": "Edema", "split": "train"} for case in sample_cases[:2]]
    manifest = write_csv(tmp_path / "manifest.csv", rows + [{"image": str(blank), "labels": "", "split": "test"}])
    parser = argparse.ArgumentParser()
    features.register(parser.add_subparsers())
    args = parser.parse_args(["features", "--manifest", str(manifest), "--regions", "model",
                              "--out", str(tmp_path / "cache"), "--backbone", "efficientnet_lite0",
                              "--device", "cpu", "--workers", "1", "--batch-size", "3", "--skip-bad-images"])
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["count"], summary["done"], summary["skipped"]) == (3, 3, 1)
    cache = FeatureCache.open(tmp_path / "cache")
    assert cache.regions_source == "model" and cache.skipped.tolist() == [False, False, True]


def test_features_with_tiles_record_the_crop_scheme(shipped_anatomy_model, sample_cases, tmp_path, capsys):
    rows = [{"image": str(case.image_path), "labels": "Edema", "split": "train"} for case in sample_cases[:2]]
    manifest = write_csv(tmp_path / "manifest.csv", rows)
    parser = argparse.ArgumentParser()
    features.register(parser.add_subparsers())
    args = parser.parse_args(["features", "--manifest", str(manifest), "--regions", "model", "--region-crops", "tiles",
                              "--out", str(tmp_path / "cache"), "--backbone", "efficientnet_lite0",
                              "--device", "cpu", "--workers", "0"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["region_crops"] == "tiles"
    cache = FeatureCache.open(tmp_path / "cache")
    assert cache.region_crops is TILES and cache.done.all()
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["preprocessing"]["region_crops"] == \
        TILES.config()
