"""Epoch time of training on cached features beside its pure compute time (`chextriev bench train`).

The pure compute time of an epoch is its matmul FLOPs (forward and backward of every train image,
forward of every validation image, counted by torch.utils.flop_counter.FlopCounterMode on a real
batch; elementwise operations are not counted) at the fp32 matmul rate this machine measures. Both
training paths run on the CPU with the same seed: micro-batches accumulated by Lightning, and the
merged batches of trainer.training (merge_micro_batches).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import ModelConfig
from model.fileio import atomic_write_bytes
from model.network import CheXtriev
from trainer.feature_cache import FeatureCache
from trainer.lightning_module import per_image_loss
from trainer.training import TrainingConfig, train

MATMUL_SIZE = 2048
COUNTED_IMAGES = 64  # FLOPs are counted on a batch of at most this many train images, per image


def matmul_rate(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` fp32 (size x size) @ (size x size) products, after a warm-up."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


def image_flops(network: CheXtriev, cache: FeatureCache, rows: np.ndarray) -> tuple[float, float]:
    """(forward + backward, forward) matmul FLOPs per image of the network on the cache's `rows`."""
    features = torch.from_numpy(np.asarray(cache.region_features[rows], dtype=np.float32))
    labels = torch.from_numpy(cache.labels[rows].astype(np.float32))
    node_labels = labels[:, None, :].expand(-1, features.shape[1], -1)
    with FlopCounterMode(display=False) as training:
        per_image_loss(network(features), labels, node_labels).mean().backward()
    with FlopCounterMode(display=False) as inference, torch.no_grad():
        network(features)
    return training.get_total_flops() / len(rows), inference.get_total_flops() / len(rows)


def run_train_bench(cache: FeatureCache, variant: str, epochs: int, out: str | os.PathLike) -> dict:
    """Measure both training paths for `epochs` epochs against the pure compute time; write the JSON
    report to `out` (atomically) and return it."""
    model_config = ModelConfig.for_variant(variant, input_dim=cache.feature_dim, num_classes=len(cache.label_names))
    train_rows, val_rows = cache.indices("train"), cache.indices("val")
    train_flops, val_flops = image_flops(CheXtriev(model_config), cache, train_rows[:COUNTED_IMAGES])
    rate = matmul_rate()
    compute_s = (len(train_rows) * train_flops + len(val_rows) * val_flops) / rate
    training = TrainingConfig(max_epochs=epochs, patience=epochs, accelerator="cpu", devices=1)
    paths = {}
    for name, merged in (("accumulated", False), ("merged", True)):
        with tempfile.TemporaryDirectory() as out_dir:
            history = train(cache, model_config, replace(training, merge_micro_batches=merged), out_dir).history
        seconds = [record.seconds for record in history]
        typical = statistics.median(seconds[1:] or seconds)  # the first epoch also warms up
        paths[name] = {"epoch_seconds": seconds, "median_epoch_seconds": typical,
                       "epoch_over_compute": typical / compute_s, "val_losses": [r.val_loss for r in history]}
    report = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "variant": variant, "model": model_config.to_dict(),
        "training": {**training.to_dict(), "merge_micro_batches": "per path"},
        "train_images": len(train_rows), "val_images": len(val_rows),
        "matmul": {"size": MATMUL_SIZE, "fp32_flops_per_s": rate},
        "flops": {"train_image_forward_backward": train_flops, "val_image_forward": val_flops,
                  "epoch": len(train_rows) * train_flops + len(val_rows) * val_flops},
        "compute_seconds_per_epoch": compute_s,
        "paths": paths,
        "val_loss_max_relative_difference": max(
            abs(a - b) / abs(a) for a, b in zip(paths["accumulated"]["val_losses"], paths["merged"]["val_losses"])),
    }
    atomic_write_bytes(Path(out), json.dumps(report, indent=2).encode())
    return report


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started
