"""Region crops for the backbone, as REFERENCE_NOTES "Crop" describes.

Each box (original-resolution pixels, [x1, y1, x2, y2]) is cut from its radiograph, parts outside
the image are filled with PAD_VALUE, and the cut-out is resized to CROP_SIZE x CROP_SIZE without
keeping its aspect ratio; grey is replicated to three channels and ImageNet-normalised.

The resize uses the weights of `F.interpolate(cut, mode="bilinear", antialias=True)` applied to the
cut-out (a triangle filter as wide as the scale factor when shrinking, plain bilinear when enlarging,
taps renormalised at the cut-out's edges; tests/model/test_crops.py holds the two within 1e-4),
computed for all boxes of a batch at once as two separable passes: rows through one sparse matrix
product, columns through a gather. A crop depends only on the pixels whose centres lie inside its
box. Fractional box coordinates are resampled continuously; a box must be at least one pixel wide
and high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from model.errors import RegionError, RegionProblem
from model.preprocessing import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, PAD_VALUE

# The most memory one resampling pass may use for its intermediate values: a box as wide as a
# 16384-pixel image gathers 148 taps per output, ~70 MB per region and image.
PASS_BUDGET_BYTES = 128 * 2**20


def crop_regions(images: Sequence[Tensor] | Tensor, boxes: Tensor) -> Tensor:
    """Crops (B, R, 3, CROP_SIZE, CROP_SIZE) float32 of the (B, R, 4) boxes of B grey images.

    Images are (H, W) floats in [0, 1] and may differ in size; box b, r is [x1, y1, x2, y2] in the
    pixel coordinates of image b (x1 = 0 is the left edge of the first column). The regions are
    resampled a few at a time, within PASS_BUDGET_BYTES of intermediate values.
    """
    sizes = _sizes(images)
    canvas = _stack(images, sizes)
    boxes = _checked_boxes(boxes, len(sizes)).to(device=canvas.device, dtype=torch.float64)
    step = _regions_per_pass(boxes, canvas.shape[2])
    return torch.cat([_crop(canvas, sizes, boxes[:, start:start + step])
                      for start in range(0, boxes.shape[1], step)], dim=1)


def _regions_per_pass(boxes: Tensor, width: int) -> int:
    """How many regions of every image one pass resamples within PASS_BUDGET_BYTES: per region, the
    row pass keeps CROP_SIZE rows of the canvas, the column pass gathers `taps` values per output."""
    taps = math.ceil(2 * max(float((boxes[..., 2] - boxes[..., 0]).max()) / CROP_SIZE, 1.0)) + 1
    per_region = 4 * boxes.shape[0] * CROP_SIZE * (width + 2 * CROP_SIZE * taps)
    return int(max(1, min(boxes.shape[1], PASS_BUDGET_BYTES // per_region)))


def _crop(canvas: Tensor, sizes: Tensor, boxes: Tensor) -> Tensor:
    """Crops (B, R, 3, CROP_SIZE, CROP_SIZE) of checked float64 boxes on the stacked images."""
    batch, regions = boxes.shape[:2]
    row_taps, row_weights = _axis_taps(boxes[..., 1], boxes[..., 3], sizes[:, 0])
    col_taps, col_weights = _axis_taps(boxes[..., 0], boxes[..., 2], sizes[:, 1])

    # Rows: one sparse (B*R*S, B*Hc) matrix applied to the stacked images -> (B*R*S, Wc).
    height, width = canvas.shape[1:]
    out_rows = torch.arange(batch * regions * CROP_SIZE, device=canvas.device)
    out_rows = out_rows.view(batch, regions, CROP_SIZE, 1).expand_as(row_taps)
    in_rows = row_taps + height * torch.arange(batch, device=canvas.device).view(batch, 1, 1, 1)
    used = row_weights != 0
    rows = torch.sparse_coo_tensor(
        torch.stack([out_rows[used], in_rows[used]]), row_weights[used],
        size=(batch * regions * CROP_SIZE, batch * height), check_invariants=True,
    )
    resampled_rows = torch.sparse.mm(rows, canvas.reshape(batch * height, width))

    # Columns: gather each output column's taps within its box's rows -> (B*R, S, S).
    resampled_rows = resampled_rows.view(batch * regions, CROP_SIZE, width)
    taps = col_taps.reshape(batch * regions, 1, -1).expand(-1, CROP_SIZE, -1)
    gathered = resampled_rows.gather(2, taps).view(batch * regions, CROP_SIZE, CROP_SIZE, -1)
    grey = (gathered * col_weights.reshape(batch * regions, 1, CROP_SIZE, -1)).sum(-1)
    # Taps outside the image carry no weight above; their share of each output is PAD_VALUE.
    inside = (row_weights.sum(-1).reshape(-1, CROP_SIZE, 1)
              * col_weights.sum(-1).reshape(-1, 1, CROP_SIZE))
    grey = grey + PAD_VALUE * (1 - inside)
    return normalise(grey.view(batch, regions, CROP_SIZE, CROP_SIZE))


def whole_image(images: Sequence[Tensor] | Tensor) -> Tensor:
    """Each whole image resized to (3, CROP_SIZE, CROP_SIZE), normalised: the global-CNN input."""
    boxes = torch.tensor([[[0, 0, width, height]] for height, width in _sizes(images).tolist()])
    return crop_regions(images, boxes)[:, 0]


def normalise(grey: Tensor) -> Tensor:
    """Grey values in [0, 1] of shape (..., H, W) -> ImageNet-normalised (..., 3, H, W) float32."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=grey.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=grey.device).view(3, 1, 1)
    return (grey.to(torch.float32).unsqueeze(-3) - mean) / std


def _sizes(images: Sequence[Tensor] | Tensor) -> Tensor:
    """The (B, 2) sizes (H, W) of a batch of grey images, which must be 2-D float tensors."""
    if (isinstance(images, Tensor) and images.dim() != 3) or len(images) == 0:
        raise ValueError("images must be a (B, H, W) tensor or a non-empty sequence of (H, W) tensors")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 2 or not image.is_floating_point():
            raise ValueError(f"image {index}: expected a 2-D float tensor (H, W) with values in [0, 1]")
    return torch.tensor([tuple(image.shape) for image in images], device=images[0].device)


def _stack(images: Sequence[Tensor] | Tensor, sizes: Tensor) -> Tensor:
    """The images on one zero canvas (B, Hmax, Wmax) float32, each at the top left."""
    if isinstance(images, Tensor):
        return images.to(torch.float32)
    device = images[0].device
    if all(image.shape == images[0].shape for image in images):
        return torch.stack([image.to(device, torch.float32) for image in images])
    canvas = torch.zeros(len(images), *sizes.amax(0).tolist(), dtype=torch.float32, device=device)
    for index, image in enumerate(images):
        canvas[index, : image.shape[0], : image.shape[1]] = image
    return canvas


def _checked_boxes(boxes: Tensor, batch: int) -> Tensor:
    """The boxes if they are (batch, R, 4), finite and at least one pixel wide and high."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor ({batch}, R, 4) of [x1, y1, x2, y2]; got {shape}")
    boxes = boxes.detach().to(torch.float64)
    too_small = (boxes[..., 2] - boxes[..., 0] < 1) | (boxes[..., 3] - boxes[..., 1] < 1)
    bad = ~torch.isfinite(boxes).all(-1) | too_small
    if bad.any():
        raise RegionError([
            RegionProblem(f"image {b} box {r}",
                          f"{boxes[b, r].tolist()} is not finite or is under one pixel wide or high")
            for b, r in bad.nonzero().tolist()
        ])
    return boxes


def _axis_taps(start: Tensor, end: Tensor, extent: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel indices and weights (B, R, S, K) resampling [start, end) of each image row to S samples.

    The weights are F.interpolate's antialiased bilinear ones for the cut-out [start, end): a triangle
    of half-width max(scale, 1) around each output centre, over the pixels whose centres lie in the box,
    normalised to sum to one. Taps outside the image (`extent` pixels) then get weight zero: the
    caller fills the missing share with PAD_VALUE.
    """
    scale = (end - start) / CROP_SIZE
    support = scale.clamp(min=1.0)[..., None, None]
    steps = torch.arange(CROP_SIZE, dtype=torch.float64, device=start.device) + 0.5
    centre = (start.unsqueeze(-1) + steps * scale.unsqueeze(-1)).unsqueeze(-1)
    width = math.ceil(2 * float(support.max())) + 1
    first = torch.floor(centre - support - 0.5)
    taps = first + torch.arange(width, dtype=torch.float64, device=start.device)
    pixel_centre = taps + 0.5
    weights = (1 - (pixel_centre - centre).abs() / support).clamp(min=0)
    weights = weights * ((pixel_centre >= start[..., None, None]) & (pixel_centre < end[..., None, None]))
    weights = weights / weights.sum(-1, keepdim=True)
    limit = extent.view(-1, 1, 1, 1).to(torch.float64)
    weights = weights * ((taps >= 0) & (taps < limit))
    taps = torch.minimum(taps.clamp(min=0), limit - 1).long()
    return taps, weights.to(torch.float32)


def span_coverage(boxes: Tensor, span: Sequence[int], height: int, width: int) -> Tensor:
    """(R, CROP_SIZE, CROP_SIZE) float32: the weight each crop pixel of `boxes` (R, 4) gives to the
    image pixels of `span` [col0, row0, col1, row1] (end-exclusive) of an (H, W) image.

    It is the crop of the span's indicator image before normalisation and padding, and separable:
    a row factor times a column factor, so it costs no resampling pass.
    """
    boxes = _checked_boxes(boxes[None], 1).to(device=boxes.device)
    col0, row0, col1, row1 = (int(value) for value in span)
    extent = torch.tensor([[height, width]], device=boxes.device)
    row_taps, row_weights = _axis_taps(boxes[..., 1], boxes[..., 3], extent[:, 0])
    col_taps, col_weights = _axis_taps(boxes[..., 0], boxes[..., 2], extent[:, 1])
    rows = (row_weights * ((row_taps >= row0) & (row_taps < row1))).sum(-1)[0]
    cols = (col_weights * ((col_taps >= col0) & (col_taps < col1))).sum(-1)[0]
    return rows[:, :, None] * cols[:, None, :]
