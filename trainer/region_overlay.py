"""Draw the 18 region boxes over a radiograph, one colour and a short label per region."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.anatomy import Box, order_boxes
from model.catalogue import NUM_REGIONS, REGION_NAMES

# One distinct colour per region, in REGION_NAMES order: right-side regions in warm colours, left-side
# ones in cool colours, mediastinal ones in neutral/pastel colours.
REGION_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (255, 225, 25), (245, 130, 48), (255, 180, 120), (170, 110, 40),
    (240, 50, 230), (250, 190, 212),
    (0, 130, 200), (70, 240, 240), (60, 180, 75), (170, 255, 195), (0, 128, 128),
    (145, 30, 180), (220, 190, 255),
    (255, 255, 255), (190, 190, 190), (128, 0, 0), (210, 245, 60),
)
_ABBREVIATIONS = (("right ", "R "), ("left ", "L "), (" lung zone", ""), (" zone", ""),
                  (" structures", ""), ("costophrenic angle", "CP angle"),
                  ("cardiac silhouette", "heart"), ("upper mediastinum", "upper med."))


def short_label(region: str) -> str:
    """A short label for a region name, e.g. 'R upper' for 'right upper lung zone'."""
    for long, short in _ABBREVIATIONS:
        region = region.replace(long, short)
    return region


def draw_region_boxes(pixels: np.ndarray, boxes: np.ndarray | Mapping[str, Box],
                      labels: bool = True) -> Image.Image:
    """An RGB image of ``pixels`` ((H, W) grey or (H, W, 3), values in [0, 1]) with the boxes drawn.

    ``boxes`` is an (18, 4) array in `REGION_NAMES` order or a dict keyed by region name.
    """
    image = _to_rgb(pixels)
    ordered = order_boxes(boxes) if isinstance(boxes, Mapping) else np.asarray(boxes, dtype=np.float64)
    if ordered.shape != (NUM_REGIONS, 4):
        raise ValueError(f"expected boxes of shape ({NUM_REGIONS}, 4), got {ordered.shape}")
    draw = ImageDraw.Draw(image)
    scale = min(image.size)
    line = max(1, round(scale / 400))
    font = ImageFont.load_default(size=max(9, round(scale / 60)))
    corners = []
    for box, colour in zip(ordered, REGION_COLOURS):
        # Pixel-edge box -> the first and last pixel rows and columns inside it.
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=line)
        corners.append((x1 + line, y1 + line))
    if labels:  # after every outline, so that no line crosses a label
        placed: list[tuple[float, float, float, float]] = []
        for name, corner, colour in zip(REGION_NAMES, corners, REGION_COLOURS):
            placed.append(_draw_label(draw, font, short_label(name), corner, colour, placed))
    return image


def _to_rgb(pixels: np.ndarray) -> Image.Image:
    """Grey or RGB floats in [0, 1] as an 8-bit RGB image."""
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {array.shape}")
    return Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB")


def _draw_label(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, text: str,
                corner: tuple[float, float], colour: tuple[int, int, int],
                placed: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Draw text on a dark patch at ``corner``, moved down past earlier labels; its rectangle."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 2, bottom - top + 2
    x, y = corner
    while any(x < px2 and px1 < x + width and y < py2 and py1 < y + height
              for px1, py1, px2, py2 in placed):
        y += height
    draw.rectangle((x, y, x + width, y + height), fill=(0, 0, 0))
    draw.text((x + 1 - left, y + 1 - top), text, fill=colour, font=font)
    return (x, y, x + width, y + height)
