"""A manifest row's anatomy: the ``regions`` JSON, or right/left lung (and heart) boxes or masks.

Problems are returned as (canonical column, message) pairs so the reader can name the row and the
file's column. A lung or heart value is a box when it is JSON (a JSON list ``[x1, y1, x2, y2]``; in a
CSV cell, text starting with "[" or "{"), otherwise a path to a mask file, relative to the manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from model.anatomy import Box, box_problem, parse_regions
from model.errors import RegionError
from trainer.datasets.anatomy_sources import AnatomySource, LungBoxes, LungMasks, NamedBoxes
from trainer.datasets.labels import cell_text

Problems = list[tuple[str, str]]
LUNG_COLUMNS = ("right_lung", "left_lung", "heart")
# The column a derivation problem belongs to, by the region name in the RegionError.
COLUMN_OF_REGION = {"right lung": "right_lung", "left lung": "left_lung", "cardiac silhouette": "heart"}


def row_anatomy(values: Mapping[str, object], base_dir: Path) -> tuple[AnatomySource | None, Problems]:
    """The row's anatomy source (None when the row gives none) and the problems found, from its
    values keyed by canonical column name."""
    regions = values.get("regions")
    if isinstance(regions, Mapping) or cell_text(regions):
        return _named_boxes(regions)
    given = {column: values.get(column) for column in LUNG_COLUMNS if cell_text(values.get(column))}
    if not given:
        return None, []
    missing = [column for column in ("right_lung", "left_lung") if column not in given]
    if missing:
        return None, [(column, f"empty, while {'/'.join(sorted(set(given)))} is given: "
                               "both lungs are needed") for column in missing]
    parsed, problems = {}, []
    for column, value in given.items():
        item = _box_or_mask(value, base_dir)
        if isinstance(item, str):
            problems.append((column, item))
        else:
            parsed[column] = item
    if problems:
        return None, problems
    kinds = {column: isinstance(item, Path) for column, item in parsed.items()}
    if len(set(kinds.values())) > 1:
        masks = sorted(column for column, is_mask in kinds.items() if is_mask)
        boxes = sorted(column for column, is_mask in kinds.items() if not is_mask)
        return None, [(masks[0], f"mask paths ({', '.join(masks)}) and boxes ({', '.join(boxes)}) "
                                 "cannot be mixed in one row")]
    source = LungMasks if kinds["right_lung"] else LungBoxes
    return source(parsed["right_lung"], parsed["left_lung"], parsed.get("heart")), []


def placement_problems(anatomy: AnatomySource, width: int, height: int) -> Problems:
    """What stops the anatomy from giving 18 valid boxes on a ``width`` x ``height`` image."""
    try:
        anatomy.boxes(width, height)
    except RegionError as error:
        in_regions_column = isinstance(anatomy, NamedBoxes)
        return [("regions" if in_regions_column else COLUMN_OF_REGION.get(p.region, "right_lung"),
                 f"{p.region}: {p.problem}") for p in error.problems]
    return []


def _named_boxes(value: object) -> tuple[NamedBoxes | None, Problems]:
    try:
        payload = value if isinstance(value, Mapping) else cell_text(value)
        return NamedBoxes.from_mapping(parse_regions(payload)), []
    except RegionError as error:
        return None, [("regions", f"{p.region}: {p.problem}") for p in error.problems]


def _box_or_mask(value: object, base_dir: Path) -> Box | Path | str:
    """A box, an existing mask path, or the problem with the value."""
    if isinstance(value, str) and not value.strip().startswith(("[", "{")):
        path = base_dir / value.strip()
        return path if path.is_file() else f"mask file not found: {value.strip()}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            return f"not a JSON box [x1, y1, x2, y2]: {error}"
    try:
        box = parse_regions({"box": value})["box"]
    except RegionError as error:
        return error.problems[0].problem
    problem = box_problem(box, math.inf, math.inf)
    return problem if problem else box
