"""Images per second of batch feature extraction, the baseline beside the fast path (`chextriev bench features`).

- baseline: the research code's way: exact crops (model.crops) of each batch cut in the main process,
  the backbone in float32 on eager NCHW PyTorch, no writes;
- fast: `chextriev features` itself (trainer.feature_cache.extract_features with the pipeline
  trainer.feature_pipeline chooses, or the one asked for), in the compute dtype, writing a real cache.

Both run over the same images: a manifest's, or the bundled radiographs repeated to the count. Each
runs once untimed on a few images first (compilation, runtime sessions, caches). The report also
gives how closely the fast features agree with the baseline's (cosine per feature), the CPU
seconds per image (this process and its finished workers: unlike images/s, barely moved by other
load on a shared machine) and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model.backbones import build_backbone
from model.devices import select_device
from model.feature_extractor import FeatureExtractor
from model.fileio import atomic_write_bytes
from model.precision import dtype_named
from trainer.datasets.anatomy_sources import LungBoxes
from trainer.datasets.records import Dataset, ImageRecord
from trainer.demo.samples import load_sample_cases
from trainer.feature_cache import FeatureCache, extract_features
from trainer.feature_pipeline import default_workers, feature_pipeline
from trainer.record_images import image_batches


@dataclass(frozen=True)
class FeatureBenchConfig:
    """What to measure; `dataset` None means the bundled radiographs repeated to `images`."""

    out: Path
    device: str = "auto"
    backbone: str = "efficientnet_lite0"
    weights: str | None = "default"  # None: random weights (speed only; the cosines stay meaningful)
    dtype: str = "float32"
    crops: str = "auto"
    compile_backbone: bool | None = None  # None: trainer.feature_pipeline's default
    images: int = 64
    baseline_images: int | None = None  # None: as many as `images`
    warmup_images: int = 8
    batch_size: int = 16
    baseline_batch_size: int | None = None  # None: batch_size
    workers: int | None = None  # None: trainer.feature_pipeline.default_workers


def bundled_dataset(count: int) -> Dataset:
    """The bundled radiographs (with their expert lung boxes) repeated to `count` records."""
    cases = load_sample_cases()
    records = [ImageRecord(f"{case.case_id}-{index}", case.image_path, case.patient_id, "train",
                           (case.finding,), LungBoxes(case.right_lung, case.left_lung))
               for index, case in ((index, cases[index % len(cases)]) for index in range(count))]
    return Dataset("bundled-repeated", tuple(sorted({case.finding for case in cases})), records, "lung_boxes")


def run_feature_bench(config: FeatureBenchConfig, dataset: Dataset | None = None) -> dict:
    """Measure the baseline and the fast path; write the JSON report to `config.out` atomically and return it."""
    dataset = dataset or bundled_dataset(config.images)
    device = select_device(config.device)
    if config.workers is None:
        config = replace(config, workers=default_workers(device))
    backbone = build_backbone(config.backbone, config.weights, allow_random=config.weights is None)
    baseline_rows = list(range(min(len(dataset.records), config.baseline_images or len(dataset.records))))
    baseline_extractor = FeatureExtractor(backbone, device=device, dtype=torch.float32, runtime="torch")
    baseline, baseline_features = _measure_baseline(
        dataset, baseline_rows, baseline_extractor, config.baseline_batch_size or config.batch_size, config)
    fast_extractor = FeatureExtractor(backbone, device=device, dtype=dtype_named(config.dtype))
    pipeline = feature_pipeline(fast_extractor, config.crops, config.compile_backbone)
    with tempfile.TemporaryDirectory(prefix="chextriev-feature-bench-") as work:
        warmup = replace(dataset, name="warm-up", records=dataset.records[: config.warmup_images])
        extract_features(warmup, fast_extractor, Path(work) / "warm-up", batch_size=config.batch_size,
                         num_workers=config.workers, pipeline=pipeline)
        fast, cache = _timed(lambda: extract_features(
            dataset, fast_extractor, Path(work) / "cache", batch_size=config.batch_size,
            num_workers=config.workers, pipeline=pipeline), len(dataset.records), device)
        agreement = _agreement(baseline_features, cache, baseline_rows)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(device),
        "config": {**{key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
                   "device": str(device), "dataset": dataset.name},
        "baseline": {**baseline, "path": "exact crops of each batch in the main process, float32, "
                     "eager NCHW PyTorch", "images": len(baseline_rows)},
        "fast": {**fast, "path": f"chextriev features: crops {pipeline.crops}, {config.dtype}",
                 "images": len(dataset.records)},
        "speedup": fast["images_per_s"] / baseline["images_per_s"],
        "agreement_with_baseline": agreement,
    }
    atomic_write_bytes(config.out, json.dumps(report, indent=2).encode())
    return report


def _measure_baseline(dataset: Dataset, rows: list[int], extractor: FeatureExtractor, batch_size: int,
                      config: FeatureBenchConfig) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Timed baseline over `rows` (after one untimed warm-up batch); returns its figures and features."""
    def run(selected: list[int]) -> tuple[np.ndarray, np.ndarray]:
        region, whole = [], []
        for batch in image_batches(dataset.records, selected, batch_size=batch_size, num_workers=config.workers):
            pixels = [item.pixels for item in batch]
            region.append(extractor.region_features(pixels, np.stack([item.boxes for item in batch])).cpu())
            whole.append(extractor.whole_image_features(pixels).cpu())
        return torch.cat(region).numpy(), torch.cat(whole).numpy()

    run(rows[: min(len(rows), config.warmup_images)])
    return _timed(lambda: run(rows), len(rows), extractor.device)


def _timed(call, images: int, device: torch.device) -> tuple[dict, object]:
    """images/s and CPU seconds per image of `call()`, and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before, started = os.times(), time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, after = time.perf_counter() - started, os.times()
    cpu = sum(getattr(after, name) - getattr(before, name)
              for name in ("user", "system", "children_user", "children_system"))
    return {"seconds": seconds, "images_per_s": images / seconds, "cpu_seconds_per_image": cpu / images}, result


def _agreement(baseline: tuple[np.ndarray, np.ndarray], cache: FeatureCache, rows: list[int]) -> dict:
    """Cosine between the baseline's float32 features and the fast path's cached ones, per feature."""
    def cosines(reference: np.ndarray, fast: np.ndarray) -> dict:
        reference, fast = reference.reshape(-1, reference.shape[-1]), fast.reshape(-1, fast.shape[-1])
        cosine = (reference * fast).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(fast, axis=1))
        return {"min": float(cosine.min()), "mean": float(cosine.mean())}

    region = np.asarray(cache.region_features[rows], dtype=np.float32)
    whole = np.asarray(cache.whole_image_features[rows], dtype=np.float32)
    return {"region_cosine": cosines(baseline[0], region), "whole_image_cosine": cosines(baseline[1], whole),
            "images": len(rows)}


def _machine(device: torch.device) -> dict:
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "usable_cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine
