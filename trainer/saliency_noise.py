"""The noise floor of saliency (`chextriev bench saliency-noise`): how much the region-occlusion
similarity drops of a (query, case) pair change when the case's radiograph is embedded again after
a change that carries no anatomy: a 1-pixel shift right, a 2-pixel shift down (the boxes shifted
with the image) and a JPEG re-encoding at quality 90. A drop smaller than those changes cannot be
told from noise.

Every bundled radiograph is a query; the first `cases` are the retrieved cases, each paired with
every other query. The report has, per perturbation and over all of them, percentiles of the
absolute change of the drops, the percentiles of the drops themselves, and the floor it suggests
(the 99th percentile of the change, rounded up to one significant digit), the figure behind
model.saliency_scale.DEFAULT_NOISE_FLOOR.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.embedder import Embedder
from model.fileio import atomic_write_bytes
from model.saliency import OcclusionResult, occlusion_embeddings
from model.saliency_scale import DEFAULT_NOISE_FLOOR
from trainer.demo.samples import load_sample_cases, sample_case_input

FLOOR_PERCENTILE = 99
JPEG_QUALITY = 90
PERCENTILES = (50, 95, 99, 100)

Perturbation = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SaliencyNoiseConfig:
    """The checkpoint, the JSON report to write and how many bundled radiographs serve as cases."""

    checkpoint: Path
    out: Path
    cases: int = 12


def shifted(pixels: np.ndarray, boxes: np.ndarray, right: int = 0, down: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The image moved `right` and `down` pixels (edge pixels repeated), its boxes moved with it."""
    padded = np.pad(pixels, ((down, 0), (right, 0)), mode="edge")[:pixels.shape[0], :pixels.shape[1]]
    return padded, boxes + np.array([right, down, right, down], dtype=boxes.dtype)


def jpeg_reencoded(pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image written as an 8-bit JPEG at JPEG_QUALITY and read back; the boxes unchanged."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32) / 255.0
    return decoded, boxes


PERTURBATIONS: dict[str, Perturbation] = {
    "shift 1 px right": lambda pixels, boxes: shifted(pixels, boxes, right=1),
    "shift 2 px down": lambda pixels, boxes: shifted(pixels, boxes, down=2),
    f"JPEG quality {JPEG_QUALITY}": jpeg_reencoded,
}


def pair_drops(queries: np.ndarray, occlusion: OcclusionResult) -> np.ndarray:
    """(Q, 18) similarity drops of each query (Q, D) against one case's occlusion embeddings."""
    return (queries @ occlusion.unoccluded)[:, None] - queries @ occlusion.embeddings.T


def suggested_floor(changes: np.ndarray) -> float:
    """The FLOOR_PERCENTILE-th percentile of the absolute changes, rounded up to one significant digit."""
    value = float(np.percentile(np.abs(changes), FLOOR_PERCENTILE))
    if value <= 0:
        return 0.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    return round(math.ceil(value / magnitude) * magnitude, 12)


def run_saliency_noise(config: SaliencyNoiseConfig) -> dict:
    """Measure the changes of drops under each perturbation; the report, also written to `config.out`."""
    started = time.perf_counter()
    embedder = Embedder.from_checkpoint(config.checkpoint)
    inputs = [sample_case_input(case) for case in load_sample_cases()]
    queries = np.stack([embedder.embed(pixels, boxes).image[0] for pixels, boxes in inputs]).astype(np.float64)
    drops, changes = [], {name: [] for name in PERTURBATIONS}
    for index, (pixels, boxes) in enumerate(inputs[:config.cases]):
        others = np.delete(queries, index, axis=0)
        original = pair_drops(others, occlusion_embeddings(embedder, pixels, boxes))
        drops.append(original)
        for name, perturb in PERTURBATIONS.items():
            again = pair_drops(others, occlusion_embeddings(embedder, *perturb(pixels, boxes)))
            changes[name].append(again - original)
    every_change = np.concatenate([np.concatenate(values) for values in changes.values()])
    all_drops = np.concatenate(drops)
    floor = suggested_floor(every_change)
    report = {
        "checkpoint": str(config.checkpoint), "cases": min(config.cases, len(inputs)), "queries": len(inputs),
        "pairs": int(all_drops.shape[0]), "backbone_runtime": embedder.features.runtime,
        "drop_change": {name: _percentiles(np.concatenate(values)) for name, values in changes.items()},
        "drop_change_all": _percentiles(every_change),
        "drops": _percentiles(all_drops),
        "suggested_noise_floor": floor,
        "floor_percentile": FLOOR_PERCENTILE,
        "default_noise_floor": DEFAULT_NOISE_FLOOR,
        "above_suggested_floor": _above(all_drops, floor),
        "above_default_floor": _above(all_drops, DEFAULT_NOISE_FLOOR),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_bytes(config.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _percentiles(values: np.ndarray) -> dict:
    """Percentiles of the absolute values, and the largest positive and negative value."""
    magnitudes = np.percentile(np.abs(values), PERCENTILES)
    summary = {f"abs_p{p}" if p < 100 else "abs_max": round(float(v), 6) for p, v in zip(PERCENTILES, magnitudes)}
    return {**summary, "min": round(float(values.min()), 6), "max": round(float(values.max()), 6)}


def _above(drops: np.ndarray, floor: float) -> dict:
    """The share of (pair, region) drops above `floor`, and of pairs with at least one region above it."""
    return {"floor": floor, "share_of_drops": round(float((drops > floor).mean()), 4),
            "share_of_pairs_with_a_region": round(float((drops > floor).any(1).mean()), 4)}
