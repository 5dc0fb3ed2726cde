"""Frozen-backbone features of region crops (and of the whole image, for the global baseline).

The backbone runs on PyTorch or, for float32 on the CPU, on ONNX Runtime (model.runtime). Each region
is cut into the crops of a crop scheme (model.region_crops) and their features pooled into one.
`image_crops` cuts one image's crops apart from the backbone, so that batch extraction can cut them
in worker processes while the backbone runs (trainer.feature_pipeline); it gives the same crops as
`region_features` and `whole_image_features` cut from a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from model.backbones import Backbone
from model.crops import crop_regions, whole_image
from model.errors import ChextrievError
from model.onnx_backbone import OnnxBackbone
from model.region_crops import SINGLE, RegionCrops
from model.runtime import choose_runtime

# Crops per backbone call: larger CPU batches measured slower (their activations outgrow the caches
# and each call maps fresh memory).
CROPS_PER_BACKBONE_BATCH = 24


def image_crops(pixels: torch.Tensor, boxes: np.ndarray, region_crops: RegionCrops = SINGLE) -> torch.Tensor:
    """(18 * tiles + 1, 3, CROP_SIZE, CROP_SIZE) crops of one grey image (H, W): its regions' crops
    under `region_crops`, then the whole image."""
    tiles = region_crops.tile_boxes(torch.as_tensor(np.asarray(boxes)[None], dtype=torch.float32))
    return torch.cat([crop_regions([pixels], tiles)[0], whole_image([pixels])])


class FeatureExtractor:
    """Runs a frozen backbone on the 18 regions' crops of grey images, on one device, dtype and runtime.

    `backbone` is a PyTorch Backbone, or a cached ONNX export of one (model.onnx_backbone), which runs
    float32 on the CPU only; `self.backbone` is then None. Its pooling must be `region_crops`' pooling.
    """

    def __init__(self, backbone: Backbone | OnnxBackbone, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, runtime: str = "auto", region_crops: RegionCrops = SINGLE):
        if backbone.pooling != region_crops.pooling:
            raise ChextrievError(f"region crops {region_crops.name!r} pool {region_crops.pooling}, "
                                 f"the backbone pools {backbone.pooling}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.region_crops = region_crops
        self.runtime = choose_runtime(runtime, self.device, dtype)
        self.name, self.feature_dim = backbone.name, backbone.feature_dim
        self.backbone: Backbone | None = None
        if isinstance(backbone, OnnxBackbone):
            if self.runtime != "onnx":
                raise ChextrievError(f"an exported backbone runs on the onnx runtime, not {self.runtime}")
            self._forward = backbone
        else:
            self.backbone = backbone.to(self.device, dtype)
            self._forward = OnnxBackbone(self.backbone) if self.runtime == "onnx" else self.backbone

    @torch.inference_mode()
    def region_features(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> torch.Tensor:
        """(B, 18, feature_dim) float32 features of each image's regions, on the device."""
        boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=self.device)
        crops = crop_regions(self._to_tensors(images), self.region_crops.tile_boxes(boxes))
        batch, count = crops.shape[:2]
        return self.region_crops.pool(self.crop_features(crops.flatten(0, 1)).view(batch, count, -1))

    @torch.inference_mode()
    def whole_image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, feature_dim) float32 features of each whole image resized to the crop size."""
        return self.crop_features(whole_image(self._to_tensors(images)))

    @torch.inference_mode()
    def image_features(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 18, F) region and (B, F) whole-image float32 features of `image_crops` stacked
        (B, 18 * tiles + 1, ...)."""
        features = self.crop_features(crops.flatten(0, 1)).view(*crops.shape[:2], -1)
        return self.region_crops.pool(features[:, :-1]), features[:, -1]

    @torch.inference_mode()
    def crop_features(self, crops: torch.Tensor, *, chunk_size: int = CROPS_PER_BACKBONE_BATCH,
                      before_chunk: Callable[[], None] | None = None) -> torch.Tensor:
        """(N, feature_dim) float32 features of normalised crops (N, 3, CROP_SIZE, CROP_SIZE), in chunks
        of `chunk_size`; `before_chunk()` runs before each (a background caller waits there for its turn)."""
        features = []
        for chunk in crops.to(self.device, self.dtype).split(chunk_size):
            if before_chunk is not None:
                before_chunk()
            features.append(self._forward(chunk))
        return torch.cat(features).float()

    def _to_tensors(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [torch.as_tensor(image, dtype=torch.float32, device=self.device) for image in images]
