"""The online embedder: (radiograph, 18 region boxes) -> retrieval embedding and node embeddings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.backbones import Backbone, build_backbone
from model.checkpoint import load_checkpoint
from model.errors import CheckpointError
from model.feature_extractor import FeatureExtractor
from model.network import CheXtriev
from model.onnx_backbone import OnnxBackbone
from model.region_crops import SINGLE, RegionCrops
from model.runtime import choose_runtime


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of a batch: `image` (B, D) and, per region, `nodes` (B, 18, D), each L2-normalised: a
    region's node embedding is the state that the image embedding averages (NetworkOutput.node_embeddings)."""

    image: np.ndarray
    nodes: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


class Embedder:
    """Frozen backbone + trained CheXtriev network on one device and dtype, ready for queries; the
    backbone runs on the `runtime` of model.runtime ("auto": ONNX Runtime for float32 on the CPU)."""

    def __init__(self, backbone: Backbone | OnnxBackbone, network: CheXtriev, fingerprint: str, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, runtime: str = "auto",
                 region_crops: RegionCrops = SINGLE):
        if network.config.input_dim != backbone.feature_dim:
            raise CheckpointError(f"network expects {network.config.input_dim}-d region features, "
                                  f"backbone {backbone.name} gives {backbone.feature_dim}")
        self.features = FeatureExtractor(backbone, device=device, dtype=dtype, runtime=runtime,
                                         region_crops=region_crops)
        self.device, self.dtype = self.features.device, dtype
        self.network = network.to(self.device, dtype).eval()
        self.fingerprint = fingerprint

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, backbone_weights: str | os.PathLike = "default",
                        runtime: str = "auto") -> "Embedder":
        """Load a verified checkpoint and the backbone it was trained on (checked by fingerprint).

        Where the backbone runs on ONNX Runtime and an export of the checkpoint's backbone fingerprint
        is cached (model.onnx_backbone), that export is loaded instead of building the backbone from
        `backbone_weights`: it computes the very features the checkpoint was trained on, in a fraction
        of the start-up time.
        """
        network, info = load_checkpoint(directory)
        crops = info.region_crops
        options = {"device": device, "dtype": dtype, "runtime": runtime, "region_crops": crops}
        if choose_runtime(runtime, torch.device(device), dtype) == "onnx":
            exported = OnnxBackbone.from_cache(info.backbone.name, info.backbone.fingerprint,
                                               network.config.input_dim, crops.pooling)
            if exported is not None:
                return cls(exported, network, info.fingerprint, **options)
        backbone = build_backbone(info.backbone.name, weights=backbone_weights, pooling=crops.pooling)
        if backbone.fingerprint != info.backbone.fingerprint:
            raise CheckpointError(
                f"checkpoint {directory} was trained on {info.backbone.name} weights "
                f"{info.backbone.fingerprint[:12]}..., the loaded backbone has {backbone.fingerprint[:12]}...")
        return cls(backbone, network, info.fingerprint, **options)

    @torch.inference_mode()
    def embed_features(self, region_features: torch.Tensor) -> Embeddings:
        """Run the network on precomputed region features (B, 18, feature_dim)."""
        output = self.network(region_features.to(self.device, self.dtype))
        return Embeddings(image=output.embedding.float().cpu().numpy(),
                          nodes=output.node_embeddings.float().cpu().numpy())

    def embed_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Embeddings:
        """Embed grey images in [0, 1] (each (H, W)) with their validated boxes (B, 18, 4)."""
        return self.embed_features(self.features.region_features(images, boxes))

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> Embeddings:
        """Embed one image with its (18, 4) boxes; the result has a batch of one."""
        return self.embed_batch([image], np.asarray(boxes)[None])
