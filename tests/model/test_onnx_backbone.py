"""The ONNX Runtime backbone on real bundled radiographs: the same features and embeddings as PyTorch,
its export cached per fingerprint, a damaged cache file exported again, and the runtime choice."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model.onnx_backbone as onnx_backbone
from model.crops import crop_regions
from model.embedder import Embedder
from model.errors import ChextrievError
from model.onnx_backbone import OnnxBackbone
from model.runtime import choose_runtime
from tests.model.test_embedder import backbone, checkpoint_dir, two_inputs  # noqa: F401 - fixtures

MIN_COSINE = 0.999
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cosines(first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(torch.as_tensor(first), torch.as_tensor(second), dim=-1)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty $XDG_CACHE_HOME for this test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def crops(two_inputs):  # noqa: F811 - the imported fixture
    """The 36 region crops of two radiographs, as the backbone receives them."""
    images = [torch.as_tensor(pixels) for pixels, _ in two_inputs]
    return crop_regions(images, torch.as_tensor(np.stack([boxes for _, boxes in two_inputs]),
                                                dtype=torch.float32)).flatten(0, 1)


def test_onnx_features_and_embeddings_match_pytorch(checkpoint_dir, two_inputs, cache_home):  # noqa: F811
    reference = Embedder.from_checkpoint(checkpoint_dir, runtime="torch")
    fast = Embedder.from_checkpoint(checkpoint_dir, runtime="onnx")
    assert (reference.features.runtime, fast.features.runtime) == ("torch", "onnx")
    images, boxes = [pixels for pixels, _ in two_inputs], np.stack([boxes for _, boxes in two_inputs])
    reference_features = reference.features.region_features(images, boxes)
    fast_features = fast.features.region_features(images, boxes)
    assert fast_features.shape == reference_features.shape == (2, 18, 1280)
    assert _cosines(fast_features, reference_features).min() >= MIN_COSINE
    assert _cosines(fast.features.whole_image_features(images),
                    reference.features.whole_image_features(images)).min() >= MIN_COSINE
    reference_embeddings, fast_embeddings = reference.embed_batch(images, boxes), fast.embed_batch(images, boxes)
    assert _cosines(fast_embeddings.image, reference_embeddings.image).min() >= MIN_COSINE
    assert _cosines(fast_embeddings.nodes, reference_embeddings.nodes).min() >= MIN_COSINE
    assert len(list((cache_home / "chextriev" / "onnx").glob("efficientnet_lite0-*.onnx"))) == 1


def test_export_is_cached_and_reused_on_the_second_load(backbone, crops, tmp_path, monkeypatch):  # noqa: F811
    first = OnnxBackbone(backbone, tmp_path)
    written = first.path.stat()
    monkeypatch.setattr(onnx_backbone, "export_onnx", _no_export)
    second = OnnxBackbone(backbone, tmp_path)
    assert second.path == first.path and second.path.stat().st_ino == written.st_ino
    assert backbone.fingerprint in first.path.name and list(tmp_path.iterdir()) == [first.path]
    torch.testing.assert_close(second(crops), first(crops))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_cache_file_is_exported_again(backbone, crops, tmp_path, damage, caplog):  # noqa: F811
    good = OnnxBackbone(backbone, tmp_path)
    whole = good.path.read_bytes()
    good.path.write_bytes({"truncated": whole[:len(whole) // 2], "garbage": b"not an onnx model" * 64,
                           "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="model.onnx_backbone"):
        rebuilt = OnnxBackbone(backbone, tmp_path)
    assert "unusable ONNX backbone cache file" in caplog.text
    assert rebuilt.path.stat().st_size == len(whole)
    assert _cosines(rebuilt(crops), backbone(crops)).min() >= MIN_COSINE


def test_unwritable_cache_directory_runs_the_export_from_memory(backbone, crops, tmp_path, caplog):  # noqa: F811
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would be")
    with caplog.at_level(logging.WARNING, logger="model.onnx_backbone"):
        runner = OnnxBackbone(backbone, blocker)
    assert "cache not writable" in caplog.text
    assert _cosines(runner(crops), backbone(crops)).min() >= MIN_COSINE


@pytest.mark.parametrize("name, device, dtype, chosen", [
    ("auto", "cpu", torch.float32, "onnx"),
    ("auto", "cpu", torch.bfloat16, "torch"),
    ("auto", "cuda", torch.float32, "torch"),
    ("torch", "cpu", torch.float32, "torch"),
    ("onnx", "cpu", torch.float32, "onnx"),
])
def test_auto_runs_onnx_for_float32_on_the_cpu_only(name, device, dtype, chosen):
    assert choose_runtime(name, torch.device(device), dtype) == chosen


@pytest.mark.parametrize("name, device, dtype, message", [
    ("onnx", "cuda", torch.float32, "float32 on the CPU only"),
    ("onnx", "cpu", torch.float16, "float32 on the CPU only"),
    ("tensorrt", "cpu", torch.float32, "unknown runtime"),
])
def test_impossible_runtimes_are_refused(name, device, dtype, message):
    with pytest.raises(ChextrievError, match=message):
        choose_runtime(name, torch.device(device), dtype)


def _no_export(backbone):
    raise AssertionError("the cached export should have been used")


WARM_LOAD_PROBE = """
import json, sys
import numpy as np
from model.embedder import Embedder
embedder = Embedder.from_checkpoint(sys.argv[1], backbone_weights="/no/such/weights.pth")
pixels, boxes = np.load(sys.argv[2])["pixels"], np.load(sys.argv[2])["boxes"]
print(json.dumps({"embedding": embedder.embed(pixels, boxes).image[0].tolist(), "built": embedder.features.backbone
                  is not None, "loaded": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_a_cached_export_serves_without_building_the_backbone(checkpoint_dir, two_inputs, cache_home,  # noqa: F811
                                                              tmp_path):
    pixels, boxes = two_inputs[0]
    reference = Embedder.from_checkpoint(checkpoint_dir, runtime="onnx")  # builds, exports, caches
    expected = reference.embed(pixels, boxes).image[0]
    np.savez(tmp_path / "query.npz", pixels=pixels, boxes=boxes)
    arguments = [sys.executable, "-c", WARM_LOAD_PROBE, str(checkpoint_dir), str(tmp_path / "query.npz")]
    completed = subprocess.run(arguments, cwd=REPO_ROOT, env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    # no weight file was read (the configured one does not exist), no timm or torchvision imported
    assert not report["built"] and not {"timm", "torchvision"} & set(report["loaded"])
    assert float(np.asarray(report["embedding"]) @ expected) >= 0.99999


def test_a_cached_export_of_other_features_is_not_used(checkpoint_dir, cache_home, caplog):  # noqa: F811
    reference = Embedder.from_checkpoint(checkpoint_dir, runtime="onnx")
    name, fingerprint = reference.features.name, reference.features.backbone.fingerprint
    assert OnnxBackbone.from_cache(name, fingerprint, reference.features.feature_dim) is not None
    assert OnnxBackbone.from_cache(name, fingerprint, 2048) is None  # the export gives 1280-d features
    assert "unusable ONNX backbone cache file" in caplog.text
    assert OnnxBackbone.from_cache(name, "0" * 64, reference.features.feature_dim) is None  # never exported
    with pytest.raises(ChextrievError, match="onnx runtime"):
        Embedder(OnnxBackbone.from_cache(name, fingerprint, 1280), reference.network, "x", runtime="torch")
