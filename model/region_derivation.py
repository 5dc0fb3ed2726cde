"""Derive the 18 Chest ImaGenome region boxes from a right and a left lung (boxes or masks).

Images without Chest ImaGenome scene graphs still need the 18 regions. These rules place them from
two lung boxes, in image coordinates (x right, y down). In a PA/AP view the patient's right lung is
on the image left, so a lung's *medial* edge is the right lung's x2 and the left lung's x1.

Words used below: a lung box is ``(x1, y1, x2, y2)`` with width w and height h; the *thorax* spans
from the right lung's lateral edge to the left lung's (width W); the *chest height* H spans from
the higher lung top to the lower lung bottom; the *midline* is halfway between the medial edges.

Rules, per lung (fractions of that lung's box, measured from its top or its medial edge):
- lung: the lung box.
- apical zone: full width, the top APICAL_ZONE_END of the height: above the clavicle. (The lower
  border of the SCR clavicle masks crosses the lung at 0.17 of its height, JSRT median.)
- upper, mid, lower lung zones: full width, the height cut at UPPER_ZONE_END and MID_ZONE_END
  (about the anterior ends of the 2nd and 4th ribs). Adjacent zones touch and do not overlap, as
  Chest ImaGenome zones overlap little; the upper zone contains the apical zone.
- hilar structures: the medial HILUM_WIDTH of the width, from HILUM_TOP to HILUM_BOTTOM of the height.
- costophrenic angle: a square of side COSTOPHRENIC_SIZE x w whose lateral-inferior corner is the
  lowest lateral point of the lung, reaching COSTOPHRENIC_MARGIN of its side beyond that point
  laterally and downwards. From a box that point is the box's lateral-inferior corner; from a mask
  it is the most lateral of the lowest pixels in the mask's lateral half.
Mediastinal regions (fractions of W from the midline, of H from the top of the chest):
- cardiac silhouette: the heart box when one is given. Otherwise HEART_RIGHT_EDGE to HEART_LEFT_EDGE
  across and HEART_TOP to HEART_BOTTOM down: the medians of the 247 SCR heart masks of JSRT relative
  to their lung masks, which put most of the heart to the patient's left (image right).
- mediastinum: between the lungs' medial edges over the full chest height, grown to cover the
  cardiac silhouette (the heart lies in the mediastinum, and its lower border can reach below the
  lungs' lowest point).
- upper mediastinum: between the medial edges, at least UPPER_MEDIASTINUM_WIDTH wide around the
  midline, from the top of the chest down to UPPER_MEDIASTINUM_END (just above the heart).
- trachea: TRACHEA_WIDTH wide on the midline, from TRACHEA_ABOVE_APEX above the top of the chest
  (the cervical trachea) down to TRACHEA_END (the carina, above the hila).
All boxes are clipped to the image. Lung boxes whose centres are in the wrong order (right lung to
the image right of the left lung), that overlap across more than MAX_LUNG_OVERLAP of the narrower
lung, or that share less than MIN_SIDE_BY_SIDE of the shorter lung's height raise a RegionError, as
does a heart box not centred between the lungs' centres. (The 494 expert-boxed radiographs of the
shared cxr-lungbox set overlap across at most 13% and share at least 85%.)
"""

from __future__ import annotations

import math

import numpy as np

from model.anatomy import Box, box_problem, clip_box
from model.catalogue import REGION_NAMES
from model.errors import RegionError, RegionProblem

APICAL_ZONE_END = 0.18
UPPER_ZONE_END = 0.33
MID_ZONE_END = 0.58
HILUM_WIDTH = 0.40
HILUM_TOP = 0.30
HILUM_BOTTOM = 0.58
COSTOPHRENIC_SIZE = 0.30
COSTOPHRENIC_MARGIN = 0.10

HEART_RIGHT_EDGE = -0.15
HEART_LEFT_EDGE = 0.32
HEART_TOP = 0.47
HEART_BOTTOM = 0.88
UPPER_MEDIASTINUM_WIDTH = 0.20
UPPER_MEDIASTINUM_END = 0.45
TRACHEA_WIDTH = 0.07
TRACHEA_ABOVE_APEX = 0.10
TRACHEA_END = 0.33

MAX_LUNG_OVERLAP = 0.25
MIN_SIDE_BY_SIDE = 0.50


def derive_regions(right_lung: Box, left_lung: Box, width: int, height: int,
                   heart: Box | None = None) -> dict[str, Box]:
    """The 18 region boxes of a ``width`` x ``height`` PA/AP image from its two lung boxes.

    Raises a RegionError naming each unusable or implausibly placed input box.
    """
    right, left, heart = _checked_inputs(right_lung, left_lung, heart, width, height)
    return _regions(right, left, heart, width, height,
                    right_lowest=(right[0], right[3]), left_lowest=(left[2], left[3]))


def box_from_mask(mask: np.ndarray, name: str = "mask") -> Box:
    """Tight bounding box of the non-zero pixels of a 2-D mask, in pixel-edge coordinates."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RegionError([RegionProblem(name, f"mask must be 2-D, got shape {mask.shape}")])
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise RegionError([RegionProblem(name, "mask is empty")])
    return (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))


def derive_regions_from_masks(right_lung_mask: np.ndarray, left_lung_mask: np.ndarray,
                              heart_mask: np.ndarray | None = None) -> dict[str, Box]:
    """The 18 region boxes from binary lung (and heart) masks of one image, all of the same shape.

    Like `derive_regions` on the masks' boxes, except that each costophrenic angle sits at the
    lowest point of the lateral half of its lung mask rather than at the box corner.
    """
    masks = {"right lung": right_lung_mask, "left lung": left_lung_mask}
    if heart_mask is not None:
        masks["cardiac silhouette"] = heart_mask
    shapes = {name: np.shape(mask) for name, mask in masks.items()}
    if len(set(shapes.values())) > 1:
        raise RegionError([RegionProblem(name, f"mask shape {shape} differs from the others")
                           for name, shape in shapes.items()])
    boxes = {name: box_from_mask(mask, name) for name, mask in masks.items()}
    height, width = shapes["right lung"]
    right, left, heart = _checked_inputs(boxes["right lung"], boxes["left lung"],
                                         boxes.get("cardiac silhouette"), width, height)
    return _regions(right, left, heart, width, height,
                    right_lowest=_lowest_lateral_point(np.asarray(right_lung_mask), right, lateral=-1),
                    left_lowest=_lowest_lateral_point(np.asarray(left_lung_mask), left, lateral=+1))


def _checked_inputs(right: Box, left: Box, heart: Box | None, width: int,
                    height: int) -> tuple[Box, Box, Box | None]:
    """The lung (and heart) boxes clipped to the image, or a RegionError naming every problem."""
    given = {"right lung": right, "left lung": left, "cardiac silhouette": heart}
    problems = [RegionProblem(name, problem) for name, box in given.items()
                if box is not None and (problem := box_problem(box, width, height))]
    if problems:
        raise RegionError(problems)
    right, left = clip_box(right, width, height), clip_box(left, width, height)
    heart = None if heart is None else clip_box(heart, width, height)
    problems = _placement_problems(right, left, heart)
    if problems:
        raise RegionError(problems)
    return right, left, heart


def _placement_problems(right: Box, left: Box, heart: Box | None) -> list[RegionProblem]:
    """Problems with where the lung boxes lie relative to each other and the heart to them."""
    problems = []
    right_centre, left_centre = (right[0] + right[2]) / 2, (left[0] + left[2]) / 2
    heart_centre = None if heart is None else (heart[0] + heart[2]) / 2
    if heart_centre is not None and not right_centre < heart_centre < left_centre:
        problems.append(RegionProblem(
            "cardiac silhouette", f"centred at x={heart_centre:g}, not between the lungs' centres "
            f"(x={right_centre:g} and x={left_centre:g})"))
    if right_centre >= left_centre:
        problems.append(RegionProblem(
            "right lung", f"centred at x={right_centre:g}, not to the image left of the left lung "
            f"(x={left_centre:g}); in a PA/AP view the patient's right is on the image left: "
            "are the sides swapped?"))
    overlap = (min(right[2], left[2]) - max(right[0], left[0])) / min(right[2] - right[0],
                                                                       left[2] - left[0])
    if overlap > MAX_LUNG_OVERLAP:
        problems.append(RegionProblem(
            "left lung", f"overlaps the right lung across {overlap:.0%} of the narrower lung's width "
            f"(at most {MAX_LUNG_OVERLAP:.0%} is plausible)"))
    shared = (min(right[3], left[3]) - max(right[1], left[1])) / min(right[3] - right[1],
                                                                     left[3] - left[1])
    if shared < MIN_SIDE_BY_SIDE:
        problems.append(RegionProblem(
            "left lung", f"shares only {max(shared, 0):.0%} of the shorter lung's height with the "
            f"right lung (at least {MIN_SIDE_BY_SIDE:.0%} expected for lungs side by side)"))
    return problems


def _lowest_lateral_point(mask: np.ndarray, lung: Box, lateral: int) -> tuple[float, float]:
    """Pixel-edge (x, y) of the lowest mask pixel in the lung's lateral half (-1: image left)."""
    centre = (lung[0] + lung[2]) / 2
    start = 0 if lateral < 0 else math.floor(centre)
    half = mask[:, start:math.ceil(centre)] if lateral < 0 else mask[:, start:]
    rows, columns = np.nonzero(half)
    lowest = rows.max()
    in_row = columns[rows == lowest]
    x = in_row.min() if lateral < 0 else start + in_row.max() + 1
    return float(x), float(lowest + 1)


def _regions(right: Box, left: Box, heart: Box | None, width: int, height: int,
             right_lowest: tuple[float, float], left_lowest: tuple[float, float]) -> dict[str, Box]:
    """Apply the module's rules to checked, clipped inputs."""
    midline = (right[2] + left[0]) / 2
    thorax = left[2] - right[0]
    top, bottom = min(right[1], left[1]), max(right[3], left[3])
    chest = bottom - top
    if heart is None:
        heart = (midline + HEART_RIGHT_EDGE * thorax, top + HEART_TOP * chest,
                 midline + HEART_LEFT_EDGE * thorax, top + HEART_BOTTOM * chest)
    medial_left, medial_right = sorted((right[2], left[0]))
    upper_half_width = UPPER_MEDIASTINUM_WIDTH * thorax / 2
    trachea_half_width = TRACHEA_WIDTH * thorax / 2
    regions = {
        **_lung_regions("right", right, medial=+1, lowest=right_lowest),
        **_lung_regions("left", left, medial=-1, lowest=left_lowest),
        "mediastinum": (min(medial_left, heart[0]), min(top, heart[1]),
                        max(medial_right, heart[2]), max(bottom, heart[3])),
        "upper mediastinum": (min(medial_left, midline - upper_half_width), top,
                              max(medial_right, midline + upper_half_width),
                              top + UPPER_MEDIASTINUM_END * chest),
        "cardiac silhouette": heart,
        "trachea": (midline - trachea_half_width, top - TRACHEA_ABOVE_APEX * chest,
                    midline + trachea_half_width, top + TRACHEA_END * chest),
    }
    return {name: clip_box(regions[name], width, height) for name in REGION_NAMES}


def _lung_regions(side: str, lung: Box, medial: int,
                  lowest: tuple[float, float]) -> dict[str, Box]:
    """The seven regions of one lung; ``medial`` is +1 when the lung's medial edge is its x2."""
    x1, y1, x2, y2 = lung
    w, h = x2 - x1, y2 - y1

    def band(start: float, end: float) -> Box:
        return (x1, y1 + start * h, x2, y1 + end * h)

    hilum_x = (x2 - HILUM_WIDTH * w, x2) if medial > 0 else (x1, x1 + HILUM_WIDTH * w)
    return {
        f"{side} lung": lung,
        f"{side} apical zone": band(0.0, APICAL_ZONE_END),
        f"{side} upper lung zone": band(0.0, UPPER_ZONE_END),
        f"{side} mid lung zone": band(UPPER_ZONE_END, MID_ZONE_END),
        f"{side} lower lung zone": band(MID_ZONE_END, 1.0),
        f"{side} hilar structures": (hilum_x[0], y1 + HILUM_TOP * h, hilum_x[1], y1 + HILUM_BOTTOM * h),
        f"{side} costophrenic angle": _costophrenic_box(lowest, COSTOPHRENIC_SIZE * w, lateral=-medial),
    }


def _costophrenic_box(lowest: tuple[float, float], side: float, lateral: int) -> Box:
    """A square reaching medially and upwards from the lowest lateral point, with a small margin."""
    x, y = lowest
    margin = COSTOPHRENIC_MARGIN * side
    x_range = (x - margin, x + side) if lateral < 0 else (x - side, x + margin)
    return (x_range[0], y - side, x_range[1], y + margin)
