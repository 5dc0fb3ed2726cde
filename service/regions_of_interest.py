"""The `regions_of_interest` form field of `POST /search`: a JSON list of 1-18 distinct Chest ImaGenome
region names, whose node embeddings then rank the gallery instead of the whole-image embedding."""

from __future__ import annotations

import json
from dataclasses import dataclass

from model.catalogue import NUM_REGIONS, REGION_INDEX, REGION_NAMES
from service.problems import Problem, field_problem

FIELD = "regions_of_interest"


@dataclass(frozen=True)
class RegionsOfInterest:
    """The chosen regions: their names as sent and their catalogue numbers, in the same order."""

    names: tuple[str, ...]
    indices: tuple[int, ...]


def parse_regions_of_interest(text: str) -> RegionsOfInterest:
    """The regions named in `text`; a 422 problem naming each bad value otherwise."""
    try:
        names = json.loads(text)
    except json.JSONDecodeError as error:
        raise _invalid(f"not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(names, list) or not 1 <= len(names) <= NUM_REGIONS:
        raise _invalid(f"must be a JSON list of 1 to {NUM_REGIONS} region names, e.g. [\"{REGION_NAMES[4]}\"]")
    problems = []
    for position, name in enumerate(names):
        if not isinstance(name, str) or name not in REGION_INDEX:
            problems.append(field_problem(FIELD, f"entry {position} ({json.dumps(name)}) is not a region name; "
                                                 f"use one of: {', '.join(REGION_NAMES)}", region=_text(name)))
        elif name in names[:position]:
            problems.append(field_problem(FIELD, f"entry {position} repeats the region {json.dumps(name)}",
                                          region=name))
    if problems:
        raise Problem(422, "invalid-regions-of-interest",
                      "regions_of_interest names unknown or repeated regions", problems)
    return RegionsOfInterest(tuple(names), tuple(REGION_INDEX[name] for name in names))


def _invalid(problem: str) -> Problem:
    return Problem(422, "invalid-regions-of-interest", f"regions_of_interest {problem}",
                   [field_problem(FIELD, problem)])


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
