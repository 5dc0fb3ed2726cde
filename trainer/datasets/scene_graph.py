"""One Chest ImaGenome scene graph (``{dicom_id}_SceneGraph.json``): its view, the 18 boxes, the findings.

Boxes are the ``original_x1..original_y2`` of the ``objects`` whose ``bbox_name`` is one of the 18
catalogue regions (other objects, such as the clavicles, are ignored; the 224-scale ``x1..y2`` are
not used). Findings come from ``attributes``: each entry names a region (``bbox_name``) and holds
``attributes``, one list per report phrase of ``category|relation|name`` strings. A region is
positive for one of the 9 catalogue findings when any string says ``yes`` for it; a ``no`` never
clears an earlier ``yes`` (the research code let it). An image is positive for a finding when any
of its 18 regions is; relations on other objects do not count. The per-region findings are kept
(`SceneGraph.region_labels`) for node-level supervision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real

from model.anatomy import Box
from model.catalogue import FINDING_NAMES, REGION_INDEX, REGION_NAMES
from trainer.datasets.errors import DatasetError, DatasetProblem

COORDINATE_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")
POSITIVE_RELATION = "yes"


@dataclass(frozen=True)
class SceneGraph:
    """What the reader needs from one scene graph."""

    viewpoint: str | None
    boxes: dict[str, Box]  # the catalogue regions present, by name
    region_findings: dict[str, tuple[str, ...]]  # positive findings per region, catalogue order

    @property
    def findings(self) -> tuple[str, ...]:
        """The image's positive findings, in catalogue order."""
        positive = {finding for findings in self.region_findings.values() for finding in findings}
        return tuple(name for name in FINDING_NAMES if name in positive)

    @property
    def region_labels(self) -> tuple[tuple[str, ...], ...]:
        """The positive findings of each of the 18 regions, regions in catalogue order."""
        return tuple(self.region_findings.get(name, ()) for name in REGION_NAMES)


def parse_scene_graph(document: object, source: str) -> SceneGraph:
    """The view, boxes and findings of a decoded scene-graph JSON; DatasetError naming ``source``
    and each malformed field otherwise."""
    problems: list[DatasetProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(DatasetProblem(source, message, field=field))

    if not isinstance(document, Mapping):
        raise DatasetError([DatasetProblem(source, f"expected a JSON object, got {type(document).__name__}")])
    viewpoint = document.get("viewpoint")
    if viewpoint is not None and not isinstance(viewpoint, str):
        problem("viewpoint", f"expected text, got {viewpoint!r}")
    boxes = _boxes(document.get("objects"), problem)
    region_findings = _region_findings(document.get("attributes", []), problem)
    if problems:
        raise DatasetError(problems)
    return SceneGraph(viewpoint, boxes, region_findings)


def _boxes(objects: object, problem) -> dict[str, Box]:
    if not isinstance(objects, list):
        problem("objects", f"expected a list of objects, got {type(objects).__name__}")
        return {}
    boxes: dict[str, Box] = {}
    for index, item in enumerate(objects):
        field = f"objects[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("bbox_name"), str):
            problem(field, "expected an object with a text 'bbox_name'")
            continue
        name = item["bbox_name"]
        if name not in REGION_INDEX:
            continue
        if name in boxes:
            problem(field, f"region {name!r} appears more than once")
            continue
        values = [item.get(key) for key in COORDINATE_KEYS]
        if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            problem(field, f"region {name!r} needs finite numbers original_x1..original_y2, got {values}")
            continue
        boxes[name] = tuple(float(v) for v in values)
    return boxes


def _region_findings(attributes: object, problem) -> dict[str, tuple[str, ...]]:
    if not isinstance(attributes, list):
        problem("attributes", f"expected a list, got {type(attributes).__name__}")
        return {}
    positive: dict[str, set[str]] = {}
    for index, entry in enumerate(attributes):
        field = f"attributes[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("bbox_name"), str):
            problem(field, "expected an object with a text 'bbox_name'")
            continue
        phrases = entry.get("attributes", [])
        if not isinstance(phrases, list) or not all(
                isinstance(phrase, list) and all(isinstance(s, str) for s in phrase) for phrase in phrases):
            problem(f"{field}.attributes", "expected a list of lists of 'category|relation|name' strings")
            continue
        for text in (text for phrase in phrases for text in phrase):
            parts = text.split("|")
            if len(parts) != 3:
                problem(f"{field}.attributes", f"{text!r} is not 'category|relation|name'")
                continue
            _, relation, name = (part.strip() for part in parts)
            if relation == POSITIVE_RELATION and name in FINDING_NAMES and entry["bbox_name"] in REGION_INDEX:
                positive.setdefault(entry["bbox_name"], set()).add(name)
    return {region: tuple(name for name in FINDING_NAMES if name in found)
            for region, found in positive.items()}
