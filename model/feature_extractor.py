"""Frozen-backbone features of region crops (and of the whole image, for the global baseline).

The backbone runs on PyTorch or, for float32 on the CPU, on ONNX Runtime (model.runtime).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.backbones import Backbone
from model.crops import crop_regions, whole_image
from model.onnx_backbone import OnnxBackbone
from model.runtime import choose_runtime

CROPS_PER_BACKBONE_BATCH = 72


class FeatureExtractor:
    """Runs a frozen backbone on the 18 region crops of grey images, on one device, dtype and runtime."""

    def __init__(self, backbone: Backbone, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, runtime: str = "auto"):
        self.device = torch.device(device)
        self.dtype = dtype
        self.backbone = backbone.to(self.device, dtype)
        self.runtime = choose_runtime(runtime, self.device, dtype)
        self._forward = OnnxBackbone(self.backbone) if self.runtime == "onnx" else self.backbone

    @property
    def feature_dim(self) -> int:
        """Size of one pooled backbone feature."""
        return self.backbone.feature_dim

    @torch.inference_mode()
    def region_features(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> torch.Tensor:
        """(B, 18, feature_dim) float32 features of each image's region crops, on the device."""
        crops = crop_regions(self._to_tensors(images),
                             torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=self.device))
        batch, regions = crops.shape[:2]
        return self.crop_features(crops.flatten(0, 1)).view(batch, regions, -1)

    @torch.inference_mode()
    def whole_image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, feature_dim) float32 features of each whole image resized to the crop size."""
        return self.crop_features(whole_image(self._to_tensors(images)))

    @torch.inference_mode()
    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) float32 features of normalised crops (N, 3, CROP_SIZE, CROP_SIZE), in chunks."""
        chunks = crops.to(self.device, self.dtype).split(CROPS_PER_BACKBONE_BATCH)
        return torch.cat([self._forward(chunk) for chunk in chunks]).float()

    def _to_tensors(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [torch.as_tensor(image, dtype=torch.float32, device=self.device) for image in images]
