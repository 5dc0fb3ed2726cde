"""Region crops cut and resized on the compute device with torchvision's roi_align: the fast path of
batch feature extraction on a GPU. model.crops stays the exact reference.

roi_align with `aligned=True` uses the same continuous pixel coordinates as model.crops (x1 = 0 is the
left edge of the first column). Each of the CROP_SIZE x CROP_SIZE output bins averages a grid of
bilinear samples, ceil(box side / CROP_SIZE) per axis (roi_align's adaptive sampling ratio): a box
filter of about the scale factor's width where model.crops uses a triangle twice as wide, and plain
bilinear when enlarging, as there. Samples outside the image read PAD_VALUE. The crops therefore
differ from the reference in their finest detail only; tests/model/test_gpu_crops.py bounds the
difference in pixels and in backbone features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.crops import normalise
from model.preprocessing import CROP_SIZE, PAD_VALUE

ADAPTIVE_SAMPLING = -1  # roi_align: ceil(box side / output side) samples per bin and axis


def roi_crops(canvas: Tensor, boxes: Tensor) -> Tensor:
    """Crops (B, R, 3, CROP_SIZE, CROP_SIZE) float32, ImageNet-normalised, of the (B, R, 4) boxes.

    `canvas` (B, H, W) holds the grey images as uint8 (0-255) or floats in [0, 1], each at the top
    left, the rest filled with PAD_VALUE; box b, r is [x1, y1, x2, y2] in the pixels of image b.
    """
    from torchvision.ops import roi_align  # importing torchvision takes seconds: only where crops are cut

    if canvas.dim() != 3 or boxes.dim() != 3 or boxes.shape[0] != canvas.shape[0] or boxes.shape[2] != 4:
        raise ValueError(f"expected a canvas (B, H, W) and boxes (B, R, 4); got {tuple(canvas.shape)} "
                         f"and {tuple(boxes.shape)}")
    grey = canvas.to(torch.float32)
    if canvas.dtype == torch.uint8:
        grey = grey / 255
    batch, regions = boxes.shape[:2]
    image_index = torch.arange(batch, device=canvas.device, dtype=torch.float32).repeat_interleave(regions)
    rois = torch.cat([image_index[:, None], boxes.reshape(-1, 4).to(canvas.device, torch.float32)], dim=1)
    # roi_align reads zero outside the canvas; shifting by PAD_VALUE makes that read PAD_VALUE.
    cut = roi_align((grey - PAD_VALUE)[:, None], rois, output_size=CROP_SIZE, spatial_scale=1.0,
                    sampling_ratio=ADAPTIVE_SAMPLING, aligned=True) + PAD_VALUE
    return normalise(cut.view(batch, regions, CROP_SIZE, CROP_SIZE))
