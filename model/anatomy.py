"""Region boxes sent with an image: parse them, check them against the image, order them.

A box is ``(x1, y1, x2, y2)`` in pixels of the image, x to the right and y down. Regions are named
by the 18 Chest ImaGenome names of `model.catalogue`; names match exactly, ignoring only case and
surrounding whitespace. Every problem found is reported at once, in one `RegionError`.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np

from model.catalogue import NUM_REGIONS, REGION_INDEX, REGION_NAMES
from model.errors import RegionError, RegionProblem

Box = tuple[float, float, float, float]

# Problems with the payload as a whole (not one region) are reported under this name.
PAYLOAD_NAME = "regions"
# Unknown names are reported one by one (with a "did you mean" from difflib) up to this many; the rest
# are counted in one problem, so a payload of thousands of invented names costs no more than 18 do.
MAX_UNKNOWN_NAMES_REPORTED = 2 * NUM_REGIONS
SCENE_GRAPH_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")


def parse_regions(payload: str | bytes | Mapping) -> dict[str, Box]:
    """Boxes by name (as sent) from ``{"right lung": [x1, y1, x2, y2], ...}`` or a scene-graph JSON.

    A scene graph is recognised by its ``objects`` list; each object gives ``bbox_name`` and the
    original-resolution ``original_x1..original_y2`` (its 224-scale ``x1..y2`` are ignored). Its
    objects outside the 18 catalogue regions (clavicles, hemidiaphragms, spine, ...) are left out,
    as the trainer's scene-graph reader leaves them out.
    """
    if isinstance(payload, Mapping):
        document = payload
    else:
        document = _load_json(payload)
    if not isinstance(document, Mapping):
        raise RegionError([RegionProblem(PAYLOAD_NAME, "expected a JSON object of region boxes "
                                         f"or a scene graph, got {type(document).__name__}")])
    if "objects" in document:
        entries, problems = _scene_graph_entries(document["objects"])
    else:
        entries, problems = list(document.items()), []
    boxes: dict[str, Box] = {}
    for name, value in entries:
        if name in boxes:
            problems.append(RegionProblem(name, "given more than once"))
            continue
        box = _as_box(value)
        if isinstance(box, str):
            problems.append(RegionProblem(name, box))
        else:
            boxes[name] = box
    if problems:
        raise RegionError(problems)
    return boxes


def order_boxes(boxes: Mapping[str, Box]) -> np.ndarray:
    """The 18 boxes as a float32 (18, 4) array in `REGION_NAMES` order, without image checks."""
    matched, problems = _match_names(boxes)
    if problems:
        raise RegionError(problems)
    return np.array([matched[name] for name in REGION_NAMES], dtype=np.float32)


def validate_regions(boxes: Mapping[str, Box], width: int, height: int) -> np.ndarray:
    """Check the boxes against a ``width`` x ``height`` image; float32 (18, 4) in catalogue order.

    Raises one `RegionError` listing, by region, every unknown or missing name, malformed or
    non-finite coordinate, inverted or zero-area box and box entirely outside the image. Boxes that
    only partly leave the image are kept as they are: their crops are zero-padded outside the image,
    as the paper's preprocessing does (model.crops), not clipped and then stretched.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    matched, problems = _match_names(boxes)
    ordered = np.zeros((NUM_REGIONS, 4), dtype=np.float64)
    for index, name in enumerate(REGION_NAMES):
        if name not in matched:
            continue  # missing or malformed: already reported
        problem = box_problem(matched[name], width, height)
        if problem:
            problems.append(RegionProblem(name, problem))
            continue
        ordered[index] = matched[name]
    if problems:
        raise RegionError(problems)
    return ordered.astype(np.float32)


def boxes_by_name(boxes: np.ndarray) -> dict[str, Box]:
    """The inverse of `order_boxes`: an (18, 4) array as a dict keyed by the catalogue names."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.shape != (NUM_REGIONS, 4):
        raise ValueError(f"expected an array of shape ({NUM_REGIONS}, 4), got {array.shape}")
    return {name: tuple(float(v) for v in row) for name, row in zip(REGION_NAMES, array)}


def _load_json(payload: str | bytes) -> object:
    """Decode JSON text, keeping duplicate keys visible (json.loads would keep only the last)."""
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        return json.loads(text, object_pairs_hook=_PairList)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, over-long integers, deep nesting
        raise RegionError([RegionProblem(PAYLOAD_NAME, f"not valid JSON: {error}")]) from None


class _PairList(dict):
    """A JSON object as a dict that still yields every (key, value) pair, duplicates included."""

    def __init__(self, pairs: list[tuple[str, object]]):
        super().__init__(pairs)
        self.pairs = pairs

    def items(self):  # type: ignore[override]
        return iter(self.pairs)


def _scene_graph_entries(objects: object) -> tuple[list[tuple[str, object]], list[RegionProblem]]:
    """(name, original-pixel box) pairs of a scene graph's ``objects``, and the problems found."""
    if not isinstance(objects, list):
        return [], [RegionProblem(PAYLOAD_NAME, "scene graph 'objects' must be a list")]
    entries, problems = [], []
    for position, item in enumerate(objects):
        label = f"objects[{position}]"
        if not isinstance(item, Mapping):
            problems.append(RegionProblem(label, "expected an object with bbox_name and original_x1..y2"))
            continue
        name = item.get("bbox_name")
        if not isinstance(name, str):
            problems.append(RegionProblem(label, "missing a text 'bbox_name'"))
            continue
        if name.strip().lower() not in REGION_INDEX:
            continue  # another anatomical object of the scene graph
        absent = [key for key in SCENE_GRAPH_KEYS if key not in item]
        if absent:
            problems.append(RegionProblem(name, f"missing {', '.join(absent)}"))
            continue
        entries.append((name, [item[key] for key in SCENE_GRAPH_KEYS]))
    return entries, problems


def _as_box(value: object) -> Box | str:
    """Four numbers as a Box, or a description of what is wrong with them."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 4:
        return f"expected 4 numbers [x1, y1, x2, y2], got {_describe(value)}"
    numbers = list(value)
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in numbers):
        return f"coordinates must be numbers, got {_describe(value)}"
    try:
        return tuple(float(v) for v in numbers)
    except OverflowError:
        return f"coordinates out of range, got {_describe(value)}"


def _describe(value: object) -> str:
    """A short, safe rendering of a client value for an error message."""
    text = json.dumps(value, default=repr) if not isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _match_names(boxes: Mapping[str, Box]) -> tuple[dict[str, Box], list[RegionProblem]]:
    """Well-formed boxes by catalogue name, and the naming and format problems found."""
    matched: dict[str, Box] = {}
    given_as: dict[str, str] = {}
    problems = []
    unknown = 0
    for key, value in boxes.items():
        name = key.strip().lower() if isinstance(key, str) else None
        if name not in REGION_INDEX:
            unknown += 1
            if unknown <= MAX_UNKNOWN_NAMES_REPORTED:
                problems.append(RegionProblem(str(key), _unknown_name_problem(key)))
            continue
        if name in given_as:
            problems.append(RegionProblem(str(key), f"given more than once (also as {given_as[name]!r})"))
            continue
        given_as[name] = key
        box = _as_box(value)
        if isinstance(box, str):
            problems.append(RegionProblem(name, box))
        else:
            matched[name] = box
    if unknown > MAX_UNKNOWN_NAMES_REPORTED:
        problems.append(RegionProblem(PAYLOAD_NAME, f"{unknown - MAX_UNKNOWN_NAMES_REPORTED} more unknown region "
                                                    "names, not listed; expected the 18 Chest ImaGenome names"))
    problems.extend(RegionProblem(name, "missing") for name in REGION_NAMES if name not in given_as)
    return matched, problems


def _unknown_name_problem(key: object) -> str:
    """'unknown region name', with the closest catalogue name when one is close."""
    close = difflib.get_close_matches(str(key).strip().lower(), REGION_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; expected one of the 18 Chest ImaGenome names"
    return "unknown region name" + hint


def box_problem(box: Box, width: int, height: int) -> str | None:
    """What is wrong with one box on a ``width`` x ``height`` image (non-finite, inverted, zero
    area, entirely outside), or None when it is usable."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return f"non-finite coordinate in [{x1}, {y1}, {x2}, {y2}]"
    if x2 < x1 or y2 < y1:
        return f"inverted box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]: needs x1 <= x2 and y1 <= y2"
    if x2 == x1 or y2 == y1:
        return f"zero area box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies entirely outside the {width}x{height} image"
    return None


def clip_box(box: Box, width: int, height: int) -> Box:
    """The part of a box inside a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def box_iou(first: Sequence[float] | None, second: Sequence[float] | None) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is missing."""
    if first is None or second is None:
        return 0.0
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return float(overlap / (area - overlap))
