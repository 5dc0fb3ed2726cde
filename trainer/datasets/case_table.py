"""Per-case values from a side table, keyed by case id or image file: evaluation labels such as JSRT's
malignancy, and regional findings such as its nodule zones (`--labels-from`, `--region-findings`).

A table (CSV or JSON Lines, see trainer.datasets.tables) names each case by a `case_id` column or, without
one, by the stem of its `image` column (`images/JPCLN001.jpg` -> `JPCLN001`, the manifest reader's default
case id). A region value is one of the 18 Chest ImaGenome region names, or a lung zone written as
"<side> <upper|mid|lower>" (JSRT's `zone` column), which names "<side> <...> lung zone".
"""

from __future__ import annotations

from pathlib import Path, PurePath

from model.catalogue import REGION_INDEX
from trainer.datasets.errors import DatasetError, DatasetProblem
from trainer.datasets.tables import read_table


def read_case_values(path: str | Path, column: str) -> dict[str, str]:
    """The non-empty values of `column`, by case id; every row's problems reported together."""
    table = read_table(Path(path))
    key_column = "case_id" if "case_id" in table.columns else "image"
    absent = [name for name in (key_column, column) if name not in table.columns]
    if absent:
        raise DatasetError([DatasetProblem(table.source, f"missing the column(s) {', '.join(absent)}; its columns "
                                                         f"are {', '.join(table.columns)}")])
    values: dict[str, str] = {}
    problems: list[DatasetProblem] = []
    for line, row in table.rows:
        key, value = _text(row.get(key_column)), _text(row.get(column))
        if not key:
            problems.append(DatasetProblem(table.source, "no case id", line, key_column))
            continue
        case_id = key if key_column == "case_id" else PurePath(key).stem
        if case_id in values:
            problems.append(DatasetProblem(table.source, f"case {case_id} is listed twice", line, key_column))
        elif value:
            values[case_id] = value
    if problems:
        raise DatasetError(problems)
    return values


def read_case_regions(path: str | Path, column: str) -> dict[str, int]:
    """The region index (catalogue order) each case's `column` names, by case id."""
    named = read_case_values(path, column)
    unknown = sorted({value for value in named.values() if region_index(value) is None})
    if unknown:
        raise DatasetError([DatasetProblem(str(path), f"{', '.join(map(repr, unknown))} name no region: expected one "
                                                      "of the 18 region names or a lung zone such as 'right upper'",
                                           column=column)])
    return {case_id: region_index(value) for case_id, value in named.items()}


def region_index(value: str) -> int | None:
    """The catalogue index of a region name or lung zone ("left mid"), or None."""
    name = value.strip().lower()
    return REGION_INDEX.get(name, REGION_INDEX.get(f"{name} lung zone"))


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()
