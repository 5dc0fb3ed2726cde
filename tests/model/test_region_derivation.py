"""Derived Chest ImaGenome regions are anatomically plausible on real radiographs (JSRT, bundled samples)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.anatomy import validate_regions
from model.catalogue import REGION_NAMES
from model.errors import RegionError
from model.region_derivation import box_from_mask, derive_regions, derive_regions_from_masks

ZONES = ("apical zone", "upper lung zone", "mid lung zone", "lower lung zone")
SIDED = ("lung", *ZONES, "hilar structures", "costophrenic angle")


def centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def inside(inner, outer, tolerance: float = 1e-3) -> bool:
    return (inner[0] >= outer[0] - tolerance and inner[1] >= outer[1] - tolerance
            and inner[2] <= outer[2] + tolerance and inner[3] <= outer[3] + tolerance)


def area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def shared_area(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a, b) -> float:
    return shared_area(a, b) / (area(a) + area(b) - shared_area(a, b))


def assert_anatomically_plausible(regions: dict, width: int, height: int) -> None:
    """The invariants every derivation must meet, whatever its input."""
    assert list(regions) == list(REGION_NAMES)
    validate_regions(regions, width, height)
    for name, (x1, y1, x2, y2) in regions.items():
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, name
    for side in ("right", "left"):
        lung = regions[f"{side} lung"]
        zones = [regions[f"{side} {zone}"] for zone in ZONES]
        assert all(inside(zone, lung) for zone in zones), side
        assert inside(zones[0], zones[1]), f"{side} apical zone lies within the upper zone"
        tops = [zone[1] for zone in zones[1:]]
        assert tops == sorted(tops) and zones[1][3] <= zones[2][1] + 1e-3 and zones[2][3] <= zones[3][1] + 1e-3
        hilum_x, hilum_y = centre(regions[f"{side} hilar structures"])
        assert lung[1] + (lung[3] - lung[1]) / 4 < hilum_y < lung[3] - (lung[3] - lung[1]) / 4, side
        angle = regions[f"{side} costophrenic angle"]
        angle_x, angle_y = centre(angle)
        assert angle_y > centre(lung)[1], f"{side} costophrenic angle in the lower half"
        assert shared_area(angle, lung) >= 0.6 * area(angle), f"{side} costophrenic angle mostly lung"
        lung_x = centre(lung)[0]
        medial_side = hilum_x > lung_x if side == "right" else hilum_x < lung_x
        lateral_side = angle_x < lung_x if side == "right" else angle_x > lung_x
        assert medial_side and lateral_side, side
    for part in SIDED:
        assert centre(regions[f"right {part}"])[0] < centre(regions[f"left {part}"])[0], part
    right_x, left_x = centre(regions["right lung"])[0], centre(regions["left lung"])[0]
    for name in ("trachea", "mediastinum", "upper mediastinum"):
        assert right_x < centre(regions[name])[0] < left_x, name
    trachea = regions["trachea"]
    assert trachea[2] - trachea[0] < (left_x - right_x) / 4, "trachea is a narrow band"
    assert trachea[3] < centre(regions["right hilar structures"])[1], "trachea ends above the hila"
    assert inside(regions["cardiac silhouette"], regions["mediastinum"])


def jsrt_rows(shared_data: Path) -> list[dict]:
    """24 JSRT cases spread over nodule and normal images, none of the even rows the rules were fitted on."""
    with open(shared_data / "jsrt" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows[1::10][:24]


def read_mask(shared_data: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "jsrt" / relative)) > 127


@pytest.fixture(scope="module")
def jsrt_masks(shared_data) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    return [(row["image"], *(read_mask(shared_data, row[key]) for key in ("right_lung", "left_lung", "heart")))
            for row in jsrt_rows(shared_data)]


def test_regions_from_jsrt_masks_are_plausible_and_keep_the_heart(jsrt_masks):
    assert len(jsrt_masks) >= 20
    for image, right, left, heart in jsrt_masks:
        regions = derive_regions_from_masks(right, left, heart)
        assert_anatomically_plausible(regions, 1024, 1024)
        assert regions["cardiac silhouette"] == box_from_mask(heart), image
        assert regions["right lung"] == box_from_mask(right), image
        for side, mask in (("right", right), ("left", left)):
            rows, columns = np.nonzero(mask)
            lowest_y = rows.max()
            lowest_x = columns[rows == lowest_y]
            x1, y1, x2, y2 = regions[f"{side} costophrenic angle"]
            lateral_x = lowest_x.min() if side == "right" else lowest_x.max()
            assert x1 <= lateral_x <= x2 and y1 <= lowest_y <= y2, f"{image} {side}: lowest lung point"


def test_cardiac_silhouette_estimated_from_the_lungs_overlaps_the_jsrt_heart(jsrt_masks):
    """Without a heart box, the estimate must still cover the heart.

    Thresholds: on the 123 JSRT images the fractions were not fitted on, the estimate's IoU with the
    SCR heart box is at least 0.39 (median 0.77) and it holds at least 55% of the heart's pixels. A
    box displaced sideways by a third of the heart's width drops to IoU 0.5, by half to 0.33; so each
    image must reach 0.35 and the median 0.6, and each estimate must hold half the heart's pixels.
    """
    overlaps = []
    for image, right, left, heart in jsrt_masks:
        regions = derive_regions(box_from_mask(right), box_from_mask(left), 1024, 1024)
        assert_anatomically_plausible(regions, 1024, 1024)
        estimate = regions["cardiac silhouette"]
        overlaps.append(iou(estimate, box_from_mask(heart)))
        x1, y1, x2, y2 = (round(v) for v in estimate)
        assert heart[y1:y2, x1:x2].sum() >= 0.5 * heart.sum(), image
        assert overlaps[-1] >= 0.35, f"{image}: IoU {overlaps[-1]:.2f}"
    assert np.median(overlaps) >= 0.6


def image_size(case) -> tuple[int, int]:
    with Image.open(case.image_path) as image:
        return image.size


def test_regions_from_the_bundled_lung_boxes_are_plausible(sample_cases):
    for case in sample_cases:
        width, height = image_size(case)
        regions = derive_regions(case.right_lung, case.left_lung, width, height)
        assert_anatomically_plausible(regions, width, height)
        heart_x = centre(regions["cardiac silhouette"])[0]
        assert heart_x > (case.right_lung[2] + case.left_lung[0]) / 2, \
            f"{case.case_id}: heart biased to the patient's left"


def test_a_given_heart_box_is_used_as_the_cardiac_silhouette(sample_cases):
    case = sample_cases[0]
    heart = (200.0, 180.0, 420.0, 330.0)
    regions = derive_regions(case.right_lung, case.left_lung, *image_size(case), heart=heart)
    assert regions["cardiac silhouette"] == heart
    assert inside(heart, regions["mediastinum"])
    with pytest.raises(RegionError, match="cardiac silhouette: centred at x=50"):
        derive_regions(case.right_lung, case.left_lung, *image_size(case), heart=(0, 180, 100, 330))


def test_lung_boxes_partly_outside_the_image_are_clipped(sample_cases):
    case = sample_cases[0]
    right = (-30.0, -20.0, case.right_lung[2], case.right_lung[3])
    width, height = image_size(case)
    regions = derive_regions(right, case.left_lung, width, height)
    assert regions["right lung"][:2] == (0.0, 0.0)
    assert_anatomically_plausible(regions, width, height)


@pytest.mark.parametrize(("right", "left", "region", "words"), [
    ((277, 0, 493, 387), (23, 1, 254, 355), "right lung", "swapped"),
    ((23, 1, 300, 355), (120, 0, 493, 387), "left lung", "overlaps"),
    ((23, 1, 254, 150), (277, 200, 493, 387), "left lung", "side by side"),
    ((23, math.nan, 254, 355), (277, 0, 493, 387), "right lung", "non-finite"),
    ((23, 1, 254, 355), (277, 0, 277, 387), "left lung", "zero area"),
    ((23, 1, 254, 355), (600, 0, 700, 387), "left lung", "outside"),
])
def test_implausible_lung_boxes_raise_a_region_error_naming_the_problem(right, left, region, words):
    with pytest.raises(RegionError) as error:
        derive_regions(right, left, 512, 409)
    assert [problem.region for problem in error.value.problems] == [region]
    assert words in error.value.problems[0].problem


def test_masks_must_be_non_empty_and_of_one_shape():
    lung = np.zeros((64, 64), dtype=np.uint8)
    lung[10:50, 5:28] = 255
    other = np.zeros((64, 64), dtype=np.uint8)
    other[10:50, 36:60] = 255

    assert box_from_mask(lung) == (5.0, 10.0, 28.0, 50.0)
    with pytest.raises(RegionError, match="left lung: mask is empty"):
        derive_regions_from_masks(lung, np.zeros_like(other))
    with pytest.raises(RegionError, match="differs"):
        derive_regions_from_masks(lung, other, np.ones((32, 32), dtype=bool))


def test_a_one_pixel_wide_lung_mask_still_gets_its_costophrenic_angle():
    right = np.zeros((64, 64), dtype=bool)
    right[10:50, 5:28] = True
    left = np.zeros((64, 64), dtype=bool)
    left[10:50, 40] = True

    x1, y1, x2, y2 = derive_regions_from_masks(right, left)["left costophrenic angle"]
    assert x1 < 41 <= x2 and y1 < 50 <= y2, "at the lateral-inferior corner of the lowest pixel"
