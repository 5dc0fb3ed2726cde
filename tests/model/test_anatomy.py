"""Region boxes as a client sends them: both request forms, every problem reported by region, boxes\nthat cross the image edge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.anatomy import MAX_UNKNOWN_NAMES_REPORTED, boxes_by_name, order_boxes, parse_regions, validate_regions
from model.catalogue import REGION_NAMES
from model.errors import RegionError

WIDTH, HEIGHT = 512, 512
# The 18 boxes of the bundled AP supine radiograph cxrlb-0330 (512 x 512), rounded.
BOXES: dict[str, tuple[float, float, float, float]] = {
    "right lung": (15, 54, 274, 374),
    "right apical zone": (15, 54, 274, 111),
    "right upper lung zone": (15, 54, 274, 159),
    "right mid lung zone": (15, 159, 274, 239),
    "right lower lung zone": (15, 239, 274, 374),
    "right hilar structures": (171, 150, 274, 239),
    "right costophrenic angle": (7, 296, 93, 382),
    "left lung": (295, 55, 503, 380),
    "left apical zone": (295, 55, 503, 113),
    "left upper lung zone": (295, 55, 503, 162),
    "left mid lung zone": (295, 162, 503, 243),
    "left lower lung zone": (295, 243, 503, 380),
    "left hilar structures": (295, 152, 378, 243),
    "left costophrenic angle": (441, 318, 509, 386),
    "mediastinum": (212, 54, 441, 380),
    "upper mediastinum": (236, 54, 334, 200),
    "cardiac silhouette": (212, 207, 441, 341),
    "trachea": (268, 21, 302, 161),
}


def scene_graph(boxes: dict) -> dict:
    """A Chest ImaGenome scene graph whose original_* hold ``boxes`` and whose x1..y2 are 224-scale."""
    objects = []
    for name, (x1, y1, x2, y2) in boxes.items():
        objects.append({
            "object_id": f"3e953c67_{name}", "bbox_name": name, "name": name.capitalize(),
            "x1": round(x1 * 224 / WIDTH), "y1": round(y1 * 224 / HEIGHT),
            "x2": round(x2 * 224 / WIDTH), "y2": round(y2 * 224 / HEIGHT),
            "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
            "original_width": x2 - x1, "original_height": y2 - y1,
        })
    return {"image_id": "3e953c67", "viewpoint": "AP", "objects": objects, "attributes": [],
            "relationships": []}


def problems_of(error: pytest.ExceptionInfo[RegionError]) -> dict[str, str]:
    """The error's problems by region name."""
    return {problem.region: problem.problem for problem in error.value.problems}


def test_plain_and_scene_graph_requests_give_identical_boxes_in_catalogue_order():
    plain = parse_regions(json.dumps(BOXES))
    graph = parse_regions(json.dumps(scene_graph(BOXES)).encode("utf-8"))

    assert plain == graph == BOXES
    ordered = validate_regions(graph, WIDTH, HEIGHT)
    assert ordered.dtype == np.float32 and ordered.shape == (18, 4)
    assert [tuple(row) for row in ordered] == [BOXES[name] for name in REGION_NAMES]


def test_scene_graph_boxes_come_from_the_original_coordinates():
    graph = scene_graph(BOXES)
    parsed = parse_regions(graph)

    heart = next(item for item in graph["objects"] if item["bbox_name"] == "cardiac silhouette")
    assert parsed["cardiac silhouette"] == (212, 207, 441, 341)
    assert parsed["cardiac silhouette"] != (heart["x1"], heart["y1"], heart["x2"], heart["y2"])


def test_parse_lists_every_malformed_entry_by_name():
    text = ('{"right lung": [1, 2, 3], "left lung": ["a", 2, 3, 4], "trachea": 5,'
            ' "mediastinum": [1, 2, 3, 4], "mediastinum": [1, 2, 3, 5], "upper mediastinum": true,'
            ' "cardiac silhouette": [1, 2, 3, 1' + "0" * 400 + ']}')
    with pytest.raises(RegionError) as error:
        parse_regions(text)

    problems = problems_of(error)
    assert set(problems) == {"right lung", "left lung", "trachea", "mediastinum", "upper mediastinum",
                             "cardiac silhouette"}
    assert "4 numbers" in problems["right lung"] and "4 numbers" in problems["trachea"]
    assert "numbers" in problems["left lung"]
    assert "more than once" in problems["mediastinum"]
    assert "out of range" in problems["cardiac silhouette"]


def test_parse_rejects_payloads_that_are_not_a_region_object():
    payloads = (b"{not json", b"\xff\xfe", "[1, 2, 3, 4]", '{"objects": {"bbox_name": "trachea"}}',
                "[" * 100_000, '{"trachea": [1, 2, 3, ' + "9" * 5000 + "]}")
    for payload in payloads:
        with pytest.raises(RegionError) as error:
            parse_regions(payload)
        assert [problem.region for problem in error.value.problems] == ["regions"], payload[:40]


def test_scene_graph_object_problems_name_the_object():
    graph = scene_graph(BOXES)
    del graph["objects"][0]["bbox_name"]
    del graph["objects"][16]["original_y2"]
    graph["objects"].append(dict(graph["objects"][17]))

    with pytest.raises(RegionError) as error:
        parse_regions(graph)

    problems = problems_of(error)
    assert set(problems) == {"objects[0]", "cardiac silhouette", "trachea"}
    assert "original_y2" in problems["cardiac silhouette"]
    assert "more than once" in problems["trachea"]


def test_scene_graph_objects_outside_the_catalogue_are_left_out():
    graph = scene_graph(BOXES)
    for extra in ("left clavicle", "right hemidiaphragm", "spine"):  # as real ImaGenome scene graphs hold
        graph["objects"].append({**graph["objects"][0], "bbox_name": extra})
    graph["objects"].append({"bbox_name": "abdomen"})  # not a region: its missing coordinates do not matter

    assert validate_regions(parse_regions(graph), WIDTH, HEIGHT).tolist() == order_boxes(BOXES).tolist()


def test_thousands_of_unknown_names_are_summarised_after_the_first_few():
    invented = {f"k{i}": (1, 1, 2, 2) for i in range(30_000)}  # about 600 kB of JSON, under the field limit

    with pytest.raises(RegionError) as error:
        validate_regions(dict(BOXES, **invented), WIDTH, HEIGHT)

    problems = error.value.problems
    assert len(problems) == MAX_UNKNOWN_NAMES_REPORTED + 1
    assert problems[-1].region == "regions" and problems[-1].problem.startswith(
        f"{30_000 - MAX_UNKNOWN_NAMES_REPORTED} more unknown region names")


def test_validation_reports_every_problem_at_once_by_region():
    boxes = dict(BOXES)
    boxes["right lung zone"] = boxes.pop("right upper lung zone")
    del boxes["trachea"]
    boxes["cardiac silhouette"] = (212, math.nan, 441, 341)
    boxes["left hilar structures"] = (378, 152, 295, 243)
    boxes["right apical zone"] = (15, 54, 274, 54)
    boxes["left costophrenic angle"] = (600, 318, 700, 386)

    with pytest.raises(RegionError) as error:
        validate_regions(boxes, WIDTH, HEIGHT)

    problems = problems_of(error)
    assert set(problems) == {"right lung zone", "right upper lung zone", "trachea", "cardiac silhouette",
                             "left hilar structures", "right apical zone", "left costophrenic angle"}
    assert "unknown region name" in problems["right lung zone"]
    assert problems["right upper lung zone"] == problems["trachea"] == "missing"
    assert "non-finite" in problems["cardiac silhouette"]
    assert "inverted" in problems["left hilar structures"]
    assert "zero area" in problems["right apical zone"]
    assert "outside" in problems["left costophrenic angle"]
    assert "left costophrenic angle" in str(error.value)


def test_names_match_ignoring_only_case_and_surrounding_whitespace():
    renamed = {f"  {name.title()} ": box for name, box in BOXES.items()}
    np.testing.assert_array_equal(validate_regions(renamed, WIDTH, HEIGHT),
                                  validate_regions(BOXES, WIDTH, HEIGHT))

    hyphenated = dict(BOXES)
    hyphenated["right-lung"] = hyphenated.pop("right lung")
    with pytest.raises(RegionError) as error:
        validate_regions(hyphenated, WIDTH, HEIGHT)
    assert set(problems_of(error)) == {"right-lung", "right lung"}

    twice = dict(BOXES, **{"Trachea": BOXES["trachea"]})
    with pytest.raises(RegionError) as error:
        validate_regions(twice, WIDTH, HEIGHT)
    assert "more than once" in problems_of(error)["Trachea"]


def test_boxes_partly_outside_the_image_are_kept_unclipped_and_the_input_is_left_alone():
    boxes = dict(BOXES, **{"trachea": (250, -40, 290.5, 161), "right costophrenic angle": (-9, 296, 93, 530)})
    sent = dict(boxes)

    ordered = validate_regions(boxes, WIDTH, HEIGHT)

    assert tuple(ordered[REGION_NAMES.index("trachea")]) == (250, -40, 290.5, 161)
    assert tuple(ordered[REGION_NAMES.index("right costophrenic angle")]) == (-9, 296, 93, 530)
    assert tuple(ordered[REGION_NAMES.index("right lung")]) == BOXES["right lung"]
    assert boxes == sent


def test_order_boxes_and_boxes_by_name_are_inverse():
    reversed_order = dict(reversed(list(BOXES.items())))
    ordered = order_boxes(reversed_order)

    assert list(boxes_by_name(ordered)) == list(REGION_NAMES)
    assert boxes_by_name(ordered) == BOXES
    with pytest.raises(RegionError) as error:
        order_boxes({name: box for name, box in BOXES.items() if name != "mediastinum"})
    assert problems_of(error) == {"mediastinum": "missing"}
