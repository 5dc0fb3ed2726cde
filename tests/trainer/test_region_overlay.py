"""The region overlay draws each derived box in its own colour over the radiograph and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.anatomy import order_boxes
from model.catalogue import REGION_NAMES
from model.region_derivation import derive_regions
from trainer.region_overlay import REGION_COLOURS, draw_region_boxes, short_label


@pytest.fixture(scope="module")
def radiograph(sample_cases) -> tuple[np.ndarray, dict]:
    """A bundled radiograph as grey floats in [0, 1] and its derived region boxes."""
    case = sample_cases[2]
    with Image.open(case.image_path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255
    return pixels, derive_regions(case.right_lung, case.left_lung, pixels.shape[1], pixels.shape[0])


def near_box_edges(boxes: np.ndarray, shape: tuple[int, int], tolerance: int) -> np.ndarray:
    """Pixels within ``tolerance`` of any box outline."""
    rows, columns = np.mgrid[:shape[0], :shape[1]]
    near = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        within_x = (columns >= x1 - tolerance) & (columns <= x2 + tolerance)
        within_y = (rows >= y1 - tolerance) & (rows <= y2 + tolerance)
        on_vertical = (np.abs(columns - x1) <= tolerance) | (np.abs(columns - x2) <= tolerance)
        on_horizontal = (np.abs(rows - y1) <= tolerance) | (np.abs(rows - y2) <= tolerance)
        near |= (on_vertical & within_y) | (on_horizontal & within_x)
    return near


def test_without_labels_only_the_box_outlines_change(radiograph):
    pixels, regions = radiograph
    drawn = np.asarray(draw_region_boxes(pixels, regions, labels=False))
    grey = np.round(pixels * 255).astype(np.uint8)

    changed = (drawn != grey[:, :, None]).any(axis=2)
    assert drawn.shape == (*pixels.shape, 3)
    assert changed.any()
    assert not (changed & ~near_box_edges(order_boxes(regions), pixels.shape, tolerance=2)).any()
    x1, y1, x2, y2 = (round(v) for v in regions["trachea"])  # the outline lies just inside the box
    assert tuple(drawn[y2 - 1, (x1 + x2) // 2]) == REGION_COLOURS[REGION_NAMES.index("trachea")]


def test_labels_are_drawn_and_array_or_dict_boxes_draw_the_same(radiograph):
    pixels, regions = radiograph
    from_dict = draw_region_boxes(pixels, regions)
    from_array = draw_region_boxes(pixels, order_boxes(regions))

    assert from_dict.mode == "RGB" and from_dict.size == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(np.asarray(from_dict), np.asarray(from_array))
    unlabelled = np.asarray(draw_region_boxes(pixels, regions, labels=False))
    assert (np.asarray(from_dict) != unlabelled).any(axis=2).sum() > 18 * 20


def test_short_labels_are_distinct_and_short():
    labels = [short_label(name) for name in REGION_NAMES]
    assert len(set(labels)) == len(REGION_NAMES) == len(set(REGION_COLOURS))
    assert short_label("right upper lung zone") == "R upper"
    assert max(len(label) for label in labels) <= 12
