"""The anatomy model's cost per radiograph as `POST /search` and `POST /regions` pay it: decoding the
upload and finding the regions (resize, ONNX Runtime, thresholds, region derivation), on the bundled
radiographs at their own size and upscaled to the sizes of digital radiographs (PNG uploads). The
JSON report has p50/p90 milliseconds per size and phase, and the machine; it is written atomically.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.anatomy_model import AnatomyModel, NoChestFoundError
from model.fileio import atomic_write_bytes
from model.imaging import ImageLimits, decode_image
from service.http_bench import bundled_uploads, machine
from service.query_regions import model_regions

GOAL_MS = 150.0
DEFAULT_SIDES = (1024, 2048, 3000)  # measured besides each radiograph's own size


@dataclass(frozen=True)
class AnatomyBenchConfig:
    """The model file (None: shipped), the JSON report, the longer sides to upscale to (the radiographs'
    own size is measured first), timed rounds."""

    out: Path
    model: Path | None = None
    sides: tuple[int, ...] = DEFAULT_SIDES
    rounds: int = 3


def run_anatomy_benchmark(config: AnatomyBenchConfig) -> dict:
    """Time decode and region finding on every bundled radiograph at each size; the report."""
    model = AnatomyModel.load(config.model)
    uploads = [upload.content for upload in bundled_uploads()]
    model_regions(model, decode_image(uploads[0]))  # warm-up: ONNX Runtime's first run allocates
    report: dict = {"model": str(model.path), "model_sha256": model.fingerprint, "input_size": model.input_size,
                    "images": len(uploads), "rounds": config.rounds, "goal_ms": GOAL_MS, "sizes": [],
                    "machine": machine()}
    for side in (0, *config.sides):
        files = uploads if side == 0 else [_upscaled_png(upload, side) for upload in uploads]
        decode_ms, anatomy_ms, shapes, refused = [], [], set(), 0
        for _ in range(config.rounds):
            for data in files:
                started = time.perf_counter()
                image = decode_image(data, ImageLimits())
                decoded = time.perf_counter()
                try:
                    model_regions(model, image)
                except NoChestFoundError:
                    refused += 1
                anatomy_ms.append((time.perf_counter() - decoded) * 1000)
                decode_ms.append((decoded - started) * 1000)
                shapes.add((image.width, image.height))
        report["sizes"].append({"longer_side": side or "own", "example_size": list(sorted(shapes)[0]),
                                "decode": _percentiles(decode_ms), "anatomy": _percentiles(anatomy_ms),
                                "refused": refused})
        atomic_write_bytes(config.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _upscaled_png(data: bytes, side: int) -> bytes:
    """The radiograph resized so its longer side is `side`, as an 8-bit PNG."""
    with Image.open(io.BytesIO(data)) as image:
        scale = side / max(image.size)
        resized = image.convert("L").resize((round(image.width * scale), round(image.height * scale)),
                                            Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _percentiles(milliseconds: list[float]) -> dict[str, float]:
    p50, p90 = np.percentile(milliseconds, [50, 90])
    return {"p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1)}
