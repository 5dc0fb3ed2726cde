"""Fast training on cached features: in-memory batches, merged micro-batches that train like accumulated
ones, and `chextriev bench train` on a real cache of bundled radiographs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from tests.trainer.test_training import _config, _training, cache, cache_dir  # noqa: F401 (fixtures)
from trainer.commands.bench_train import register
from trainer.lightning_module import CachedRegionFeatures, batch_loader
from trainer.training import train


def test_in_memory_batches_hold_the_cache_rows(cache):
    rows = cache.indices("train")
    dataset = CachedRegionFeatures(cache.region_features, cache.labels, np.zeros((cache.count, 18, 2)),
                                   np.ones((cache.count, 18), dtype=bool), rows)
    batches = list(batch_loader(dataset, 3, shuffle=True))
    assert [len(batch[0]) for batch in batches] == [3, 3, 1]
    features, labels, _, known, seen = (torch.cat(part) for part in zip(*batches))
    assert known.all()
    assert sorted(seen.tolist()) == sorted(rows.tolist())
    assert features.dtype == torch.float16
    assert np.array_equal(features.numpy(), cache.region_features[seen.numpy()])
    assert np.array_equal(labels.numpy(), cache.labels[seen.numpy()].astype(np.float32))


def test_merged_micro_batches_train_like_accumulated_ones(cache, tmp_path):
    # 7 train images, steps of 2 x 2: the second step has micro-batches of 2 and 1, weighted as accumulated.
    settings = {"batch_size": 2, "accumulate_grad_batches": 2, "max_epochs": 3, "seed": 3}
    results = {merged: train_to(cache, tmp_path / str(merged), merge_micro_batches=merged, **settings)
               for merged in (False, True)}
    (accumulated, _), (merged, _) = (load_checkpoint(result.checkpoint_dir) for result in results.values())
    for name, weights in accumulated.state_dict().items():  # equal up to float rounding: sums in another order
        # atol: a tenth of one Adam step (~lr = 1e-4); a plain mean over each step's images is off by ~2e-4
        torch.testing.assert_close(merged.state_dict()[name], weights, rtol=1e-5, atol=1e-5)
    val_losses = [[record.val_loss for record in result.history] for result in results.values()]
    np.testing.assert_allclose(val_losses[1], val_losses[0], rtol=1e-6)


def train_to(cache, out_dir, **settings):
    return train(cache, _config(cache), _training(**settings), out_dir)


def test_bench_train_reports_both_paths_beside_the_compute_time(cache_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--features", str(cache_dir), "--out", str(tmp_path / "bench.json"),
                              "--epochs", "2"])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["train_images"] == 7 and report["val_images"] == 4 and report["machine"]["cpu_count"] >= 1
    assert report["flops"]["train_image_forward_backward"] > 2 * report["flops"]["val_image_forward"] > 0
    compute = report["compute_seconds_per_epoch"]
    assert compute == report["flops"]["epoch"] / report["matmul"]["fp32_flops_per_s"] > 0
    for path in report["paths"].values():
        assert len(path["epoch_seconds"]) == 2
        assert path["epoch_over_compute"] == path["median_epoch_seconds"] / compute > 0
    assert report["val_loss_max_relative_difference"] < 1e-5
    assert json.loads(capsys.readouterr().out)["merged"] == report["paths"]["merged"]["median_epoch_seconds"]
    assert list(tmp_path.iterdir()) == [tmp_path / "bench.json"]  # no temporary file left
