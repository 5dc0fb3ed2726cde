"""Batch feature extraction on an accelerator: crops cut on the device, with roi_align (model.gpu_crops,
fast, close to the reference) or with model.crops (the exact reference), then the frozen backbone in
channels_last memory, in the compute dtype, optionally compiled with torch.compile.

A compiled backbone sees chunks of exactly `chunk_size` crops (the last one padded: `fixed_chunks`), so
that it is specialised to one shape and never recompiles.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.backbones import Backbone
from model.catalogue import NUM_REGIONS
from model.crops import crop_regions
from model.gpu_crops import roi_crops
from model.region_crops import SINGLE, RegionCrops

# 32 images' crops (18 regions and the whole image): batches of a multiple of 32 images need no padding.
CROPS_PER_DEVICE_CHUNK = 32 * (NUM_REGIONS + 1)
DEVICE_CROPS = ("roi_align", "exact")


def exact_crops(canvas: Tensor, sizes: Tensor, boxes: Tensor) -> Tensor:
    """model.crops' crops of the images on a uint8 canvas: each image's own pixels, as the reference cuts them."""
    images = [canvas[index, :height, :width].float() / 255 for index, (height, width) in enumerate(sizes.tolist())]
    return crop_regions(images, boxes)


class BatchFeatures:
    """Region and whole-image features of batches of uint8 images on one device (see the module docstring)."""

    def __init__(self, backbone: Backbone, *, device: str | torch.device, dtype: torch.dtype,
                 compile_backbone: bool = False, chunk_size: int = CROPS_PER_DEVICE_CHUNK,
                 crops: str = "roi_align", fixed_chunks: bool | None = None, region_crops: RegionCrops = SINGLE):
        if crops not in DEVICE_CROPS:
            raise ValueError(f"unknown device crops {crops!r}; expected one of {', '.join(DEVICE_CROPS)}")
        self.crops = crops
        self.region_crops = region_crops
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.fixed_chunks = compile_backbone if fixed_chunks is None else fixed_chunks
        self.backbone = backbone.to(self.device, dtype).to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.backbone, dynamic=False) if compile_backbone else self.backbone

    @property
    def feature_dim(self) -> int:
        """Size of one pooled backbone feature."""
        return self.backbone.feature_dim

    @torch.inference_mode()
    def __call__(self, canvas: Tensor, sizes: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(B, R, F) region and (B, F) whole-image float32 features of the images on `canvas` (B, H, W)
        uint8, of (B, 2) sizes (H, W), with (B, R, 4) region boxes cut under the crop scheme; all moved
        to the device here."""
        canvas = canvas.to(self.device, non_blocking=True)
        sizes = sizes.to(self.device, non_blocking=True)
        boxes = self.region_crops.tile_boxes(boxes.to(self.device, torch.float32, non_blocking=True))
        whole = torch.zeros(len(sizes), 1, 4, device=self.device)
        whole[:, 0, 2], whole[:, 0, 3] = sizes[:, 1], sizes[:, 0]
        boxes = torch.cat([boxes, whole], dim=1)
        crops = roi_crops(canvas, boxes) if self.crops == "roi_align" else exact_crops(canvas, sizes, boxes)
        features = self.crop_features(crops.flatten(0, 1)).view(*crops.shape[:2], -1)
        return self.region_crops.pool(features[:, :-1]), features[:, -1]

    def crop_features(self, crops: Tensor) -> Tensor:
        """(N, F) float32 features of normalised crops (N, 3, S, S), in chunks of chunk_size (exactly,
        the last one padded, with fixed_chunks)."""
        count = len(crops)
        padding = -count % self.chunk_size if self.fixed_chunks else 0
        crops = torch.cat([crops, crops.new_zeros(padding, *crops.shape[1:])]) if padding else crops
        crops = crops.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return torch.cat([self._forward(chunk) for chunk in crops.split(self.chunk_size)])[:count].float()
