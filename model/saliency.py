"""Region-occlusion saliency (REFERENCE_NOTES "Occlusion saliency", paper section 2.3).

For each of the 18 regions r the retrieved image is re-embedded with r's box blanked, and the drop in
cosine similarity to the query says how much the match rests on that region.

Blanking. The research code multiplied the ImageNet-normalised image by a mask, so a blanked pixel is
0 in normalised space, i.e. each channel holds its ImageNet mean (a colour no single grey value gives:
the grey is replicated to three channels before normalisation). Here the pixels whose centres lie in
box r are filled, channel by channel, with that channel's ImageNet mean before the crops are cut and
resized; a crop sampling only blanked pixels is exactly 0 after normalisation, one straddling the box
edge blends the two as the resize does. Each channel of a normalised crop is affine in the fill value
v, crop(v) = crop(0) + v * (crop(1) - crop(0)), so two grey crops (fill 0 and fill 1) give all three.

Efficiency. A crop depends only on the pixels whose centres lie in its box (model.crops), so blanking
box r changes exactly the crops whose boxes share a pixel centre with r; boxes that merely touch
share none. The crops are those of the embedder's crop scheme (model.region_crops): one per region,
or each region's tiles, pooled into region features after the backbone as the embedder pools them.
A crop whose box lies inside the image and whose pixels all lie in box r is blanked whole: it is 0
after normalisation, and one backbone pass on a zero crop gives the feature of all of them (box r's
own crop among them). The plain crop features are computed once, the backbone runs again only on
the partly blanked (r, j) crops, batched across all r, and the network runs once on the 18 occluded
feature sets (plus the plain one). With single crops and the regions derived for the bundled
radiographs that is about 110 crops instead of the 18 x 18 = 324 of re-embedding each occluded image
from scratch. Only the crop with the box at fill 0 is resampled: the crop is affine in the fill, and
its slope, the crop of the box's indicator image, is separable (model.crops.span_coverage).

Honesty. A drop is reported as it is, on a fixed scale (SaliencyScale: 0 to `scale_max` similarity),
never divided by the pair's largest drop, so a pair whose drops are all noise does not look like a
confident explanation. A drop stands out only above the noise floor (model.saliency_scale); below it,
a region does not stand out and its importance is 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.crops import crop_regions, span_coverage
from model.embedder import Embedder
from model.errors import ImageError, RegionError, RegionProblem
from model.preprocessing import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD
from model.saliency_scale import SaliencyScale

logger = logging.getLogger(__name__)

# Crops per backbone pass of a computation that yields between passes: a search waits at most one
# (about 70 ms with EfficientNet-Lite0 on two CPU cores).
YIELDING_PASS_CROPS = 4


@dataclass(frozen=True)
class OcclusionResult:
    """Embeddings of one image with each region blanked in turn."""

    embeddings: np.ndarray  # (18, D) float32, L2-normalised: row r is the image with region r blanked
    unoccluded: np.ndarray  # (D,) float32, L2-normalised: the image's plain retrieval embedding
    recomputed_crops: int  # crops that went through the backbone again (partly blanked (r, crop j) pairs)
    blanked_crops: int  # crops wholly inside the blanked box: all share the feature of a zero crop


@dataclass(frozen=True)
class SaliencyResult:
    """Per-region similarity drops of a (query, retrieved) pair, in `REGION_NAMES` order."""

    similarity: float  # cosine similarity of the query and the unoccluded retrieved image
    names: tuple[str, ...]
    boxes: np.ndarray  # (18, 4) the retrieved image's boxes [x1, y1, x2, y2]
    similarity_drop: np.ndarray  # (18,) similarity - similarity with the region blanked
    stands_out: np.ndarray  # (18,) bool: the drop is above the noise floor
    importance: np.ndarray  # (18,) the drop / the scale's top, clipped to [0, 1]; 0 where it does not stand out
    scale: SaliencyScale

    @property
    def any_stands_out(self) -> bool:
        """Whether at least one region's drop is above the noise floor."""
        return bool(self.stands_out.any())

    def rows(self) -> list[dict]:
        """One JSON-ready dict per region: name, box, similarity_drop, importance, stands_out."""
        return [{"name": name, "box": [float(v) for v in box], "similarity_drop": float(drop),
                 "importance": float(weight), "stands_out": bool(standing)}
                for name, box, drop, weight, standing in zip(self.names, self.boxes, self.similarity_drop,
                                                             self.importance, self.stands_out)]


def box_pixel_spans(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Int (R, 4) [col0, row0, col1, row1]: the pixels whose centres lie in each box, within the image.

    Pixel (row, col) has its centre at (col + 0.5, row + 0.5); a box [x1, y1, x2, y2] holds the
    centres with x1 <= x < x2 and y1 <= y < y2, as the crop resampling does. A span with col1 <= col0
    or row1 <= row0 holds no pixel. Boxes are taken in float32, as the embedder receives them.
    """
    corners = np.asarray(boxes, dtype=np.float32).astype(np.float64)
    first = np.ceil(corners - 0.5).astype(np.int64)
    limits = np.array([width, height, width, height])
    return np.clip(first, 0, limits)


def overlapping_pairs(blanked: np.ndarray, cropped: np.ndarray) -> np.ndarray:
    """Bool (R, C): [r, j] is True when blanked span r and crop span j share at least one pixel centre."""
    cols = np.maximum(blanked[:, None, 0], cropped[None, :, 0]) < np.minimum(blanked[:, None, 2], cropped[None, :, 2])
    rows = np.maximum(blanked[:, None, 1], cropped[None, :, 1]) < np.minimum(blanked[:, None, 3], cropped[None, :, 3])
    return cols & rows


def wholly_blanked_pairs(blanked: np.ndarray, crop_boxes: np.ndarray, cropped: np.ndarray,
                         height: int, width: int) -> np.ndarray:
    """Bool (R, C): [r, j] is True when crop box j lies inside the image and its pixels (span
    `cropped[j]`) all lie in blanked span r, so that blanking r blanks j's whole crop (no padding,
    every sampled pixel at the fill)."""
    corners = np.asarray(crop_boxes, dtype=np.float32)
    inside = ((corners[:, :2] >= 0).all(1) & (corners[:, 2] <= width) & (corners[:, 3] <= height))
    covered = ((blanked[:, None, :2] <= cropped[None, :, :2]).all(-1)
               & (blanked[:, None, 2:] >= cropped[None, :, 2:]).all(-1))
    return covered & inside[None] & overlapping_pairs(blanked, cropped)


@torch.inference_mode()
def occlusion_embeddings(embedder: Embedder, pixels: np.ndarray, boxes: np.ndarray, *,
                         before_pass: Callable[[], None] | None = None) -> OcclusionResult:
    """The retrieval embedding of a grey image in [0, 1] (H, W) with each of its (18, 4) boxes blanked.

    Only the crops that overlap the blanked box are recomputed (see the module docstring); the result
    equals blanking the pixels and re-embedding the whole image, to float rounding. With
    `before_pass`, the backbone runs in passes of YIELDING_PASS_CROPS crops and `before_pass()` runs
    before each: a background computation waits there while searches need the cores.
    """
    started = time.perf_counter()
    image, boxes = _checked_inputs(pixels, boxes)
    region_crops = embedder.features.region_crops
    crop_boxes = region_crops.tile_boxes(torch.from_numpy(boxes)).numpy()
    spans, crop_spans = box_pixel_spans(boxes, *image.shape), box_pixel_spans(crop_boxes, *image.shape)
    blanked = wholly_blanked_pairs(spans, crop_boxes, crop_spans, *image.shape)
    recomputed = overlapping_pairs(spans, crop_spans) & ~blanked
    device = embedder.device
    grey = torch.as_tensor(image, dtype=torch.float32, device=device)
    box_tensor = torch.as_tensor(crop_boxes, dtype=torch.float32, device=device)

    passes = {} if before_pass is None else {"chunk_size": YIELDING_PASS_CROPS, "before_chunk": before_pass}
    plain = embedder.features.crop_features(crop_regions([grey], box_tensor[None])[0], **passes)
    occluded = plain.repeat(NUM_REGIONS, 1, 1)  # (r, j, feature): region r blanked, crop j
    crops = [_occluded_crops(grey, box_tensor[torch.from_numpy(recomputed[r]).to(device)], spans[r])
             for r in range(NUM_REGIONS) if recomputed[r].any()]
    if blanked.any():
        crops.append(torch.zeros(1, 3, CROP_SIZE, CROP_SIZE, device=device))
    if crops:
        features = embedder.features.crop_features(torch.cat(crops), **passes)
        if blanked.any():
            occluded[torch.from_numpy(blanked).to(device)] = features[-1]
            features = features[:-1]
        occluded[torch.from_numpy(recomputed).to(device)] = features
    embeddings = embedder.embed_features(region_crops.pool(torch.cat([plain[None], occluded]))).image
    logger.debug("occlusion embeddings computed", extra={
        "recomputed_crops": int(recomputed.sum()), "blanked_crops": int(blanked.sum()),
        "from_scratch_crops": NUM_REGIONS * len(crop_boxes), "seconds": round(time.perf_counter() - started, 3)})
    return OcclusionResult(embeddings=embeddings[1:], unoccluded=embeddings[0],
                           recomputed_crops=int(recomputed.sum()), blanked_crops=int(blanked.sum()))


def region_saliency(query_embedding: np.ndarray, retrieved_embedding: np.ndarray,
                    occluded: np.ndarray, boxes: np.ndarray, scale: SaliencyScale | None = None) -> SaliencyResult:
    """Similarity drop per region when it is blanked in the retrieved image, whether it stands out
    above `scale`'s noise floor, and its importance on `scale` (default: SaliencyScale()).

    `query_embedding` and `retrieved_embedding` are (D,) L2-normalised, `occluded` (18, D) the
    retrieved image's occlusion embeddings, `boxes` its (18, 4) region boxes.
    """
    scale = scale or SaliencyScale()
    query = np.asarray(query_embedding, dtype=np.float64)
    retrieved = np.asarray(retrieved_embedding, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float32)
    dimension = query.shape[-1] if query.ndim == 1 else None
    if (dimension is None or retrieved.shape != (dimension,) or occluded.shape != (NUM_REGIONS, dimension)
            or boxes.shape != (NUM_REGIONS, 4)):
        raise ValueError(
            f"region_saliency needs query (D,), retrieved (D,), occluded ({NUM_REGIONS}, D) and boxes "
            f"({NUM_REGIONS}, 4); got {query.shape}, {retrieved.shape}, {occluded.shape}, {boxes.shape}")
    similarity = float(query @ retrieved)
    drops = (similarity - occluded @ query).astype(np.float32)
    stands_out = drops > scale.noise_floor
    importance = np.where(stands_out, np.clip(drops / scale.scale_max, 0.0, 1.0), 0.0)
    return SaliencyResult(similarity=similarity, names=REGION_NAMES, boxes=boxes, similarity_drop=drops,
                          stands_out=stands_out, importance=importance.astype(np.float32), scale=scale)


def top_regions(saliency: SaliencyResult, count: int = 3) -> list[int]:
    """Indices of at most `count` regions that stand out, the largest drop first."""
    order = np.argsort(-saliency.similarity_drop, kind="stable")
    return [int(r) for r in order[:count] if saliency.stands_out[r]]


def _occluded_crops(grey: Tensor, boxes: Tensor, span: np.ndarray) -> Tensor:
    """Normalised crops (n, 3, S, S) of `boxes` from `grey` with the `span` pixels at the ImageNet mean:
    the crop at fill 0 plus, per channel, the fill times the span's coverage (model.crops.span_coverage)."""
    col0, row0, col1, row1 = (int(v) for v in span)
    black = grey.clone()
    black[row0:row1, col0:col1] = 0.0
    crops = crop_regions([black], boxes[None])[0]
    coverage = span_coverage(boxes, span, *grey.shape)
    mean = torch.tensor(IMAGENET_MEAN, dtype=crops.dtype, device=crops.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=crops.dtype, device=crops.device).view(3, 1, 1)
    return crops + (mean / std) * coverage[:, None]


def _checked_inputs(pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image as float32 (H, W) and the boxes as float32 (18, 4), or a typed error."""
    image = np.asarray(pixels)
    if image.ndim != 2 or image.size == 0 or not np.issubdtype(image.dtype, np.number):
        raise ImageError(f"occlusion needs a grey image of shape (H, W) with values in [0, 1]; "
                         f"got {image.dtype} {image.shape}")
    ordered = np.asarray(boxes)
    if ordered.shape != (NUM_REGIONS, 4):
        raise RegionError([RegionProblem("boxes", f"expected an array ({NUM_REGIONS}, 4) in catalogue "
                                                  f"order, got shape {ordered.shape}")])
    return image.astype(np.float32, copy=False), ordered.astype(np.float32)
