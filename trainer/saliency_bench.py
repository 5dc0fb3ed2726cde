"""Saliency on demand (`chextriev bench saliency`): the occlusion embeddings of a gallery case that has
none precomputed, as `GET /saliency` computes them (model.saliency.occlusion_embeddings), against the
research code's way in the same run: each of the 18 blanked images re-embedded from scratch, its 18
crops cut and run through the backbone (324 crops). Both run on bundled radiographs with a trained
checkpoint; the report has each path's p50 and p90 milliseconds, their ratio and the largest
difference between the two paths' embeddings.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.catalogue import NUM_REGIONS
from model.crops import crop_regions
from model.embedder import Embedder
from model.fileio import atomic_write_bytes
from model.preprocessing import IMAGENET_MEAN
from model.saliency import box_pixel_spans, occlusion_embeddings
from trainer.demo.samples import load_sample_cases, sample_case_input


@dataclass(frozen=True)
class SaliencyBenchConfig:
    """The checkpoint, the JSON report to write and how many bundled radiographs to time."""

    checkpoint: Path
    out: Path
    cases: int = 8


@torch.inference_mode()
def occlusion_from_scratch(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(18, D) embeddings of the image with each box blanked at the ImageNet mean, every blanked image
    cropped and embedded whole (the research code's way)."""
    grey = torch.as_tensor(pixels, dtype=torch.float32)
    region_crops = embedder.features.region_crops
    crop_boxes = region_crops.tile_boxes(torch.as_tensor(boxes, dtype=torch.float32))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    features = []
    for col0, row0, col1, row1 in box_pixel_spans(boxes, *pixels.shape).tolist():
        filled = grey.repeat(2, 1, 1)
        filled[0, row0:row1, col0:col1], filled[1, row0:row1, col0:col1] = 0.0, 1.0
        black, white = crop_regions(filled, crop_boxes.expand(2, -1, -1))
        features.append(region_crops.pool(embedder.features.crop_features(black + mean * (white - black))))
    return embedder.embed_features(torch.stack(features)).image


def run_saliency_bench(config: SaliencyBenchConfig) -> dict:
    """Time both paths on the first `config.cases` bundled radiographs; the report, also written to `config.out`."""
    embedder = Embedder.from_checkpoint(config.checkpoint)
    inputs = [sample_case_input(case) for case in load_sample_cases()[:config.cases]]
    occlusion_embeddings(embedder, *inputs[0])  # warm-up: the runtime's first pass allocates
    on_demand, from_scratch, recomputed, difference = [], [], [], 0.0
    for pixels, boxes in inputs:
        started = time.perf_counter()
        result = occlusion_embeddings(embedder, pixels, boxes)
        on_demand.append(_milliseconds_since(started))
        started = time.perf_counter()
        reference = occlusion_from_scratch(embedder, pixels, boxes)
        from_scratch.append(_milliseconds_since(started))
        recomputed.append(result.recomputed_crops)
        difference = max(difference, float(np.abs(result.embeddings - reference).max()))
    report = {"checkpoint": str(config.checkpoint), "cases": len(inputs), "machine": _machine(),
              "backbone_runtime": embedder.features.runtime,
              "baseline": {"path": "each blanked image embedded from scratch",
                           "crops_per_case": NUM_REGIONS * NUM_REGIONS * embedder.features.region_crops.tiles,
                           **_percentiles(from_scratch)},
              "on_demand": {"path": "model.saliency.occlusion_embeddings",
                            "median_recomputed_crops": float(np.median(recomputed)), **_percentiles(on_demand)},
              "max_abs_difference": round(difference, 7)}
    report["p50_ratio"] = round(report["baseline"]["p50_ms"] / report["on_demand"]["p50_ms"], 2)
    atomic_write_bytes(config.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _percentiles(milliseconds: list[float]) -> dict:
    p50, p90 = np.percentile(milliseconds, [50, 90])
    return {"p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1)}


def _milliseconds_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
