"""Saliency as a picture: the region-importance heatmap blended over the radiograph, with a legend.

Each pixel's heat is the mean importance of the regions whose boxes cover it (the research code's
per-pixel map); pixels no region covers show the plain radiograph. Heat is coloured with viridis
(perceptually uniform, readable in grey-scale print and by most colour-blind readers), interpolated
from nine stops, and blended over the grey image at OPACITY. Below the image a legend shows the
colour bar from 0 to 1 and the three most important regions.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.saliency import box_pixel_spans, top_regions

# matplotlib's viridis sampled at 0, 1/8, ..., 1.
VIRIDIS_STOPS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)
OPACITY = 0.5
LEGEND_TITLE = "similarity drop (normalised)"
LEGEND_BACKGROUND = (24, 24, 24)
LEGEND_TEXT = (235, 235, 235)
DEFAULT_MAX_SIDE = 1024


def colour_map(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) of values in [0, 1] (clipped) on the viridis scale."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, len(VIRIDIS_STOPS))
    stops = np.asarray(VIRIDIS_STOPS, dtype=np.float64)
    channels = [np.interp(values, positions, stops[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def heat_map(boxes: np.ndarray, importance: np.ndarray, height: int,
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel heat (H, W) float32 = mean importance of the covering boxes, and the covered mask."""
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.int32)
    for (col0, row0, col1, row1), weight in zip(box_pixel_spans(boxes, height, width), importance):
        total[row0:row1, col0:col1] += weight
        count[row0:row1, col0:col1] += 1
    covered = count > 0
    heat = np.divide(total, count, out=np.zeros_like(total), where=covered)
    return heat.astype(np.float32), covered


def render_saliency_png(pixels: np.ndarray, boxes: np.ndarray, importance: np.ndarray, *,
                        max_side: int = DEFAULT_MAX_SIDE) -> bytes:
    """PNG of the grey radiograph (H, W) in [0, 1] with the heatmap of its (18, 4) boxes' importance.

    The image keeps its size unless its longer side exceeds `max_side`, when it is scaled down (boxes
    with it); the legend is added below it, as wide as the image.
    """
    grey, boxes, importance = _checked_inputs(pixels, boxes, importance, max_side)
    height, width = grey.shape
    heat, covered = heat_map(boxes, importance, height, width)
    plain = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    blended = (1.0 - OPACITY) * plain + OPACITY * colour_map(heat)
    rgb = np.where(covered[..., None], blended, plain)
    picture = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    legend = _legend(width, importance)
    canvas = Image.new("RGB", (width, height + legend.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (0, height))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _legend(width: int, importance: np.ndarray) -> Image.Image:
    """Colour bar 0..1 with its title and ticks, then the top three regions, on a dark strip."""
    size = max(11, round(width / 40))
    font = ImageFont.load_default(size=size)
    margin, gap = size, max(2, size // 3)
    top = [f"{rank}. {REGION_NAMES[r]}  {importance[r]:.2f}"
           for rank, r in enumerate(top_regions(importance), start=1)]
    lines = ["most important regions:", *(top or ["none: no region lowers the similarity"])]
    height = margin + (size + gap) * (3 + len(lines)) + gap + margin
    legend = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(legend)
    y = margin
    draw.text((margin, y), LEGEND_TITLE, fill=LEGEND_TEXT, font=font)
    y += size + gap
    bar_width = max(1, width - 2 * margin)
    bar = colour_map(np.linspace(0.0, 1.0, bar_width))[None].repeat(size, axis=0)
    legend.paste(Image.fromarray(bar, mode="RGB"), (margin, y))
    y += size + gap
    for text, x, anchor in (("0", margin, "la"), ("0.5", margin + bar_width // 2, "ma"),
                            ("1", margin + bar_width - 1, "ra")):
        draw.text((x, y), text, fill=LEGEND_TEXT, font=font, anchor=anchor)
    for line in lines:
        y += size + gap
        draw.text((margin, y), line, fill=LEGEND_TEXT, font=font)
    return legend


def _checked_inputs(pixels: np.ndarray, boxes: np.ndarray, importance: np.ndarray,
                    max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey float32 (H, W) in [0, 1] scaled to fit `max_side`, boxes scaled alike, importance (18,)."""
    grey = np.asarray(pixels, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    importance = np.asarray(importance, dtype=np.float32)
    if (grey.ndim != 2 or grey.size == 0 or boxes.shape != (NUM_REGIONS, 4)
            or importance.shape != (NUM_REGIONS,)):
        raise ValueError(f"render_saliency_png needs pixels (H, W), boxes ({NUM_REGIONS}, 4) and importance "
                         f"({NUM_REGIONS},); got {grey.shape}, {boxes.shape}, {importance.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    grey = np.clip(grey, 0.0, 1.0)
    scale = max_side / max(grey.shape)
    if scale < 1:
        height, width = grey.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BOX))
        boxes = boxes * np.array([size[0] / width, size[1] / height] * 2, dtype=np.float32)
    return grey, boxes, np.clip(importance, 0.0, 1.0)
