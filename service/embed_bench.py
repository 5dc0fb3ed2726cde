"""Embedding speed on the CPU: one bundled radiograph with its 18 region boxes, embedded as
`POST /search` embeds it (crops, backbone, network), on the eager float32 PyTorch path (the baseline)
and on the runtime "auto" chooses (model.runtime), in one process. The JSON report has p50/p90
milliseconds of each, the baseline/fast ratio of their p50s, the cosine between their embeddings and
the machine; it is written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from model.embedder import Embedder
from model.fileio import atomic_write_bytes
from model.onnx_backbone import physical_cores
from trainer.demo.samples import load_sample_cases, sample_case_input

PATHS = {"baseline": "torch", "fast": "auto"}  # report key -> runtime


@dataclass(frozen=True)
class EmbedBenchConfig:
    """The checkpoint to embed with, the JSON report to write and the timed embeddings per path."""

    checkpoint: Path
    out: Path
    repeats: int = 30


def run_embed_benchmark(config: EmbedBenchConfig) -> dict:
    """Time both paths on the first bundled radiograph; the report, also written to `config.out`."""
    case = load_sample_cases()[0]
    pixels, boxes = sample_case_input(case)
    report: dict = {"checkpoint": str(config.checkpoint), "case": case.case_id,
                    "image_size": list(pixels.shape[::-1]), "repeats": config.repeats, "machine": _machine()}
    embeddings = {}
    for key, runtime in PATHS.items():
        started = time.perf_counter()
        embedder = Embedder.from_checkpoint(config.checkpoint, runtime=runtime)
        load_seconds = time.perf_counter() - started
        embeddings[key] = embedder.embed(pixels, boxes).image[0]  # also the warm-up
        milliseconds = [_embed_ms(embedder, pixels, boxes) for _ in range(config.repeats)]
        p50, p90 = np.percentile(milliseconds, [50, 90])
        report[key] = {"runtime": embedder.features.runtime, "load_seconds": round(load_seconds, 3),
                       "p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1)}
    report["p50_ratio"] = round(report["baseline"]["p50_ms"] / report["fast"]["p50_ms"], 2)
    report["cosine"] = round(float(embeddings["baseline"] @ embeddings["fast"]), 6)
    atomic_write_bytes(config.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _embed_ms(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray) -> float:
    started = time.perf_counter()
    embedder.embed(pixels, boxes)
    return (time.perf_counter() - started) * 1000


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "physical_cores": physical_cores(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__}
