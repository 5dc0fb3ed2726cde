"""Embedding speed on the CPU: one bundled radiograph with its 18 region boxes, embedded as
`POST /search` embeds it (crops, backbone, network), on the eager float32 PyTorch path (the baseline)
and on a fast runtime (model.runtime; "auto" by default), in one process. The embedder is a checkpoint's,
or a backbone with seeded random weights and a fresh network of the paper's width (model.config), for
backbones without weights at hand (ResNet50 offline). The JSON report has p50/p90 milliseconds of each
path, the baseline/fast ratio of their p50s, the cosine between their embeddings and the machine; it is
written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from model.backbones import build_backbone
from model.config import ModelConfig
from model.embedder import Embedder
from model.fileio import atomic_write_bytes
from model.network import CheXtriev
from model.onnx_backbone import physical_cores
from model.precision import RUNTIMES
from trainer.demo.samples import load_sample_cases, sample_case_input

BASELINE_RUNTIME = "torch"
FAST_RUNTIMES = tuple(name for name in RUNTIMES if name != BASELINE_RUNTIME)
RANDOM_SEED = 0
RANDOM_NETWORK_VARIANT = "V6"  # the paper's full model, at its default (paper) width


@dataclass(frozen=True)
class EmbedBenchConfig:
    """What to embed with (a checkpoint directory, or else the name of a backbone given random weights),
    the fast runtime, the JSON report to write and the timed embeddings per path."""

    out: Path
    checkpoint: Path | None = None
    random_backbone: str | None = None
    runtime: str = "auto"
    repeats: int = 30

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.random_backbone is None):
            raise ValueError("give either a checkpoint or a random backbone, not both or neither")
        if self.runtime not in FAST_RUNTIMES:
            raise ValueError(f"fast runtime {self.runtime!r} is not one of {', '.join(FAST_RUNTIMES)}")


def run_embed_benchmark(config: EmbedBenchConfig) -> dict:
    """Time both paths on the first bundled radiograph; the report, also written to `config.out`."""
    case = load_sample_cases()[0]
    pixels, boxes = sample_case_input(case)
    build_embedder, weights = _embedder_builder(config)
    report: dict = {"checkpoint": str(config.checkpoint) if config.checkpoint else None, "weights": weights,
                    "case": case.case_id, "image_size": list(pixels.shape[::-1]), "repeats": config.repeats,
                    "machine": _machine()}
    embeddings = {}
    for key, runtime in (("baseline", BASELINE_RUNTIME), ("fast", config.runtime)):
        started = time.perf_counter()
        embedder = build_embedder(runtime)
        load_seconds = time.perf_counter() - started
        embeddings[key] = embedder.embed(pixels, boxes).image[0]  # also the warm-up
        milliseconds = [_embed_ms(embedder, pixels, boxes) for _ in range(config.repeats)]
        p50, p90 = np.percentile(milliseconds, [50, 90])
        report[key] = {"runtime": embedder.features.runtime, "load_seconds": round(load_seconds, 3),
                       "p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1)}
    report["backbone"] = embedder.features.name
    report["p50_ratio"] = round(report["baseline"]["p50_ms"] / report["fast"]["p50_ms"], 2)
    report["cosine"] = round(float(embeddings["baseline"] @ embeddings["fast"]), 6)
    atomic_write_bytes(config.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _embedder_builder(config: EmbedBenchConfig) -> tuple[Callable[[str], Embedder], str]:
    """A function building the embedder on a runtime, and a description of its weights. A random
    backbone and network are built once, so both paths embed with the same weights; their load time
    is then the runtime's alone (the ONNX export, for instance)."""
    if config.checkpoint is not None:
        return (lambda runtime: Embedder.from_checkpoint(config.checkpoint, runtime=runtime),
                "checkpoint (the backbone's default weights)")
    torch.manual_seed(RANDOM_SEED)
    backbone = build_backbone(config.random_backbone, None, allow_random=True)
    network = CheXtriev(ModelConfig.for_variant(RANDOM_NETWORK_VARIANT, input_dim=backbone.feature_dim))
    weights = f"random (torch seed {RANDOM_SEED}), network {RANDOM_NETWORK_VARIANT} at width {network.config.width}"
    return lambda runtime: Embedder(backbone, network, "random-weights", runtime=runtime), weights


def _embed_ms(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray) -> float:
    started = time.perf_counter()
    embedder.embed(pixels, boxes)
    return (time.perf_counter() - started) * 1000


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "physical_cores": physical_cores(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__}
