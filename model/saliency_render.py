"""Saliency as a picture: the similarity drops of the regions that stand out, blended over the
radiograph on a fixed scale, with a legend.

Each pixel shows the largest drop among the regions that stand out above the noise floor and cover
it; pixels no such region covers show the plain radiograph, so a pair whose drops are all noise
shows the radiograph alone and the legend says that no region stands out. The colour of a drop is
fixed (0 to the scale's top, model.saliency.SaliencyScale), the same for every pair: viridis
(perceptually uniform, readable in grey-scale print and by most colour-blind readers), interpolated
from nine stops, blended over the grey image at OPACITY. Below the image the legend shows the
labelled colour bar, its part below the noise floor in NOISE_COLOUR, and the regions that stand out.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.saliency import SaliencyResult, box_pixel_spans, top_regions

# matplotlib's viridis sampled at 0, 1/8, ..., 1.
VIRIDIS_STOPS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)
NOISE_COLOUR = (96, 96, 96)
OPACITY = 0.5
LEGEND_TITLE = "similarity drop when the region is blanked (fixed scale)"
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


def heat_map(boxes: np.ndarray, importance: np.ndarray, stands_out: np.ndarray, height: int,
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel heat (H, W) float32 = the largest importance of the standing-out boxes covering it,
    and the mask of pixels such a box covers."""
    heat = np.zeros((height, width), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    spans = box_pixel_spans(boxes, height, width)
    for (col0, row0, col1, row1), weight, standing in zip(spans, importance, stands_out):
        if standing:
            heat[row0:row1, col0:col1] = np.maximum(heat[row0:row1, col0:col1], weight)
            covered[row0:row1, col0:col1] = True
    return heat, covered


def render_saliency_png(pixels: np.ndarray, saliency: SaliencyResult, *, max_side: int = DEFAULT_MAX_SIDE) -> bytes:
    """PNG of the grey radiograph (H, W) in [0, 1] with the drops of `saliency`'s standing-out regions.

    The image keeps its size unless its longer side exceeds `max_side`, when it is scaled down (boxes
    with it); the legend is added below it, as wide as the image.
    """
    grey, boxes = _checked_inputs(pixels, saliency.boxes, max_side)
    height, width = grey.shape
    heat, covered = heat_map(boxes, saliency.importance, saliency.stands_out, height, width)
    plain = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    blended = (1.0 - OPACITY) * plain + OPACITY * colour_map(heat)
    rgb = np.where(covered[..., None], blended, plain)
    picture = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    legend = _legend(width, saliency)
    canvas = Image.new("RGB", (width, height + legend.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (0, height))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def legend_lines(saliency: SaliencyResult) -> list[str]:
    """The legend's text below the colour bar: the regions that stand out, or that none does."""
    floor = saliency.scale.noise_floor
    top = [f"{rank}. {REGION_NAMES[r]}  drop {saliency.similarity_drop[r]:.4f}"
           for rank, r in enumerate(top_regions(saliency), start=1)]
    if top:
        return [f"regions that stand out (drop above the noise floor {floor:g}):", *top]
    return [f"No region stands out: every drop is below the noise floor {floor:g}",
            "(the spread of drops when the same radiograph is embedded again)."]


def _legend(width: int, saliency: SaliencyResult) -> Image.Image:
    """The fixed colour bar with its title and labelled ticks, then the legend's lines, on a dark strip."""
    size = max(11, round(width / 40))
    font = ImageFont.load_default(size=size)
    margin, gap = size, max(2, size // 3)
    lines = legend_lines(saliency)
    height = margin + (size + gap) * (3 + len(lines)) + gap + margin
    legend = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(legend)
    y = margin
    draw.text((margin, y), LEGEND_TITLE, fill=LEGEND_TEXT, font=font)
    y += size + gap
    bar_width = max(1, width - 2 * margin)
    scale = saliency.scale
    drops = np.linspace(0.0, scale.scale_max, bar_width)
    bar = colour_map(drops / scale.scale_max)
    bar[drops <= scale.noise_floor] = NOISE_COLOUR
    legend.paste(Image.fromarray(bar[None].repeat(size, axis=0), mode="RGB"), (margin, y))
    y += size + gap
    floor_x = margin + round(bar_width * scale.noise_floor / scale.scale_max)
    ticks = (("0", margin, "la"), (f"noise floor {scale.noise_floor:g}", floor_x, "la"),
             (f"{scale.scale_max:g}+", margin + bar_width - 1, "ra"))
    for text, x, anchor in ticks:
        draw.text((x, y), text, fill=LEGEND_TEXT, font=font, anchor=anchor)
    for line in lines:
        y += size + gap
        draw.text((margin, y), line, fill=LEGEND_TEXT, font=font)
    return legend


def _checked_inputs(pixels: np.ndarray, boxes: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey float32 (H, W) in [0, 1] scaled to fit `max_side`, and the boxes scaled alike."""
    grey = np.asarray(pixels, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if grey.ndim != 2 or grey.size == 0 or boxes.shape != (NUM_REGIONS, 4):
        raise ValueError(f"render_saliency_png needs pixels (H, W) and boxes ({NUM_REGIONS}, 4); "
                         f"got {grey.shape}, {boxes.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    grey = np.clip(grey, 0.0, 1.0)
    scale = max_side / max(grey.shape)
    if scale < 1:
        height, width = grey.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BOX))
        boxes = boxes * np.array([size[0] / width, size[1] / height] * 2, dtype=np.float32)
    return grey, boxes
