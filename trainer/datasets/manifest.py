"""The generic manifest reader: one row per image, in CSV or JSON Lines.

Columns (canonical names; a file's own names are mapped with ``columns={"patient_id": "patientid"}``):
- ``image`` (required): the image path, relative to the manifest (absolute paths are kept).
- ``case_id``: default the image file's stem; ids must be unique.
- ``patient_id``: rows without one are each their own patient.
- ``split``: train/val/test, also written training, valid, validate, validation, dev, testing.
  Without the column, patients are split with ``seed`` and ``split_fractions`` (`trainer.datasets.splits`).
  When the column puts one patient in several splits, ``split_conflicts="error"`` refuses the file
  and ``"majority"`` moves each such patient wholly to the split holding most of their images.
- ``labels``, plus any ``label_columns`` and ``yes_no_label_columns``: see `trainer.datasets.labels`.
- anatomy: ``regions`` (JSON object of the 18 named boxes), or ``right_lung`` and ``left_lung``
  (optionally ``heart``), each a JSON box ``[x1, y1, x2, y2]`` in image pixels or a path to a binary
  mask (relative to the manifest); the 18 regions are derived from them.
- ``width`` and ``height``: the image size, optional. When given, each row's anatomy is checked
  against it at once (problems then name the row), and the atlas needs no image headers.
- ``view``: kept in the record's metadata.
With ``regions="atlas"`` every image gets the 18 regions of a mean template (`trainer.datasets.atlas`)
learned from, in order of preference: the manifest ``atlas_from``; this manifest's rows that have
anatomy; the lung boxes of the radiographs bundled with the package (`trainer/demo/cxr_lungbox`).
With ``regions="model"`` every image's 18 regions are predicted from its pixels by the anatomy model
(`model.anatomy_model`) in the file ``anatomy_model`` (default: the shipped one). In both modes rows
need no anatomy of their own.
Every problem with a row is reported at once, naming the file, line and column; nothing is read
half-way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.anatomy_model import SHIPPED_MODEL
from trainer.datasets.anatomy_sources import AnatomySource, AtlasRegions, LungMasks, PredictedRegions
from trainer.datasets.atlas import learn_atlas
from trainer.datasets.errors import DatasetError, DatasetProblem, option_error
from trainer.datasets.labels import DEFAULT_NO_LABEL_VALUES, DEFAULT_SEPARATORS, LabelRules, cell_text
from trainer.datasets.manifest_anatomy import placement_problems, row_anatomy
from trainer.datasets.records import Dataset, ImageRecord, patient_key
from trainer.datasets.splits import (
    DEFAULT_FRACTIONS,
    checked_fractions,
    majority_splits,
    patient_splits,
    patients_in_several_splits,
    split_name,
)
from trainer.datasets.tables import Table, read_table
from trainer.demo.samples import SAMPLE_DIR

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "case_id", "patient_id", "split", "labels", "regions",
                                     "right_lung", "left_lung", "heart", "width", "height", "view")
REGION_MODES = ("auto", "atlas", "model")
MISSING_IMAGE_POLICIES = ("error", "skip")
SPLIT_CONFLICT_POLICIES = ("error", "majority")
ANATOMY_COLUMNS = ("regions", "right_lung", "left_lung", "heart")
LINES_SHOWN = 5


@dataclass
class _Row:
    """One parsed manifest row, before splitting."""

    line: int
    case_id: str
    image_path: Path
    patient_id: str | None
    split: str | None
    labels: set[str]
    anatomy: AnatomySource | None
    metadata: dict = field(default_factory=dict)


def read_manifest(path: str | os.PathLike, *, columns: Mapping[str, str] | None = None,
                  label_columns: Sequence[str] = (), yes_no_label_columns: Sequence[str] = (),
                  regions: str = "auto", seed: int = 0,
                  split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  label_separators: str = DEFAULT_SEPARATORS,
                  no_label_values: Collection[str] = DEFAULT_NO_LABEL_VALUES,
                  missing_images: str = "error", split_conflicts: str = "error",
                  atlas_from: str | os.PathLike | None = None, anatomy_model: str | os.PathLike | None = None,
                  name: str | None = None) -> Dataset:
    """Read a manifest into a Dataset (see the module docstring); DatasetError lists every problem."""
    path = Path(path)
    _check_choice("regions", regions, REGION_MODES)
    _check_choice("missing_images", missing_images, MISSING_IMAGE_POLICIES)
    _check_choice("split_conflicts", split_conflicts, SPLIT_CONFLICT_POLICIES)
    fractions = checked_fractions(split_fractions)
    table = read_table(path)
    column_of = _resolve_columns(table, columns or {})
    rules = _label_rules(table, column_of, label_columns, yes_no_label_columns,
                         label_separators, no_label_values)
    rows = _parse_rows(table, column_of, rules, path.parent, regions)
    rows, missing = _rows_with_images(rows, table.source, column_of["image"], missing_images)
    if not rows:
        raise DatasetError([DatasetProblem(table.source, "no rows with an image to read")])
    splits = _splits(rows, table.source, column_of, split_conflicts, fractions, seed)
    label_names = _label_names(rows, rules)
    records = [ImageRecord(row.case_id, row.image_path, row.patient_id, split,
                           tuple(name for name in label_names if name in row.labels), row.anatomy, row.metadata)
               for row, split in zip(rows, splits)]
    shared, atlas_origin = None, None
    if regions == "atlas":
        shared, atlas_origin = _atlas(records, table.source, atlas_from)
    elif regions == "model":
        shared = _predicted_regions(anatomy_model)
    if shared is not None:
        records = [dataclasses.replace(record, anatomy=shared) for record in records]
    stem = path.name.split(".")[0]
    dataset = Dataset(
        name=name or (path.parent.name if stem == "manifest" else stem),
        label_names=label_names, records=records,
        regions_source=_regions_source(records), atlas_origin=atlas_origin,
        excluded={"image file missing": missing} if missing else {})
    logger.info("manifest read", extra=dataset.summary())
    return dataset


def _check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise option_error(option, f"expected one of {', '.join(choices)}, got {value!r}")


def _resolve_columns(table: Table, columns: Mapping[str, str]) -> dict[str, str]:
    """Canonical column name -> the file's column name, for the columns the file has."""
    problems = []
    for canonical, actual in columns.items():
        if canonical not in MANIFEST_COLUMNS:
            problems.append(DatasetProblem(
                "option columns", f"unknown column mapping {canonical}={actual}: the names that can be "
                                  f"mapped are {', '.join(MANIFEST_COLUMNS)}"))
        elif actual not in table.columns:
            problems.append(_no_such_column(table, actual, f"mapped to {canonical}"))
    resolved = {name: name for name in MANIFEST_COLUMNS if name in table.columns}
    resolved.update({c: a for c, a in columns.items() if c in MANIFEST_COLUMNS and a in table.columns})
    if "image" not in resolved and "image" not in columns:
        problems.append(DatasetProblem(table.source, "no image column: name the column holding the image "
                                                     "paths with columns={'image': NAME} (--column image=NAME)",
                                       column="image"))
    if problems:
        raise DatasetError(problems)
    return resolved


def _no_such_column(table: Table, column: str, role: str) -> DatasetProblem:
    return DatasetProblem(table.source, f"no such column ({role}); the file's columns are "
                                        f"{', '.join(table.columns)}", column=column)


def _label_rules(table: Table, column_of: Mapping[str, str], label_columns: Sequence[str],
                 yes_no_columns: Sequence[str], separators: str,
                 no_label_values: Collection[str]) -> LabelRules:
    problems = [_no_such_column(table, column, role)
                for role, names in (("a label column", label_columns), ("a yes/no label column", yes_no_columns))
                for column in names if column not in table.columns]
    problems += [DatasetProblem("option yes_no_label_columns", f"{column!r} is also given as a label column")
                 for column in yes_no_columns if column in label_columns]
    if problems:
        raise DatasetError(problems)
    named = ([column_of["labels"]] if "labels" in column_of else []) + list(label_columns)
    return LabelRules(tuple(dict.fromkeys(named)), tuple(dict.fromkeys(yes_no_columns)),
                      separators, no_label_values)


def _parse_rows(table: Table, column_of: Mapping[str, str], rules: LabelRules, base_dir: Path,
                regions: str) -> list[_Row]:
    """Every row parsed, or one DatasetError with the problems of all rows."""
    rows, problems, unclear = [], [], Counter()
    first_line_of: dict[str, int] = {}
    for line, values in table.rows:
        row, row_problems, row_unclear = _parse_row(table.source, line, values, column_of, rules,
                                                    base_dir, regions)
        problems += row_problems
        unclear.update(row_unclear)
        if row is None:
            continue
        if row.case_id in first_line_of:
            id_column = column_of.get("case_id", column_of["image"])
            problems.append(DatasetProblem(table.source, f"case id {row.case_id!r} is also on line "
                                           f"{first_line_of[row.case_id]}: case ids must be unique",
                                           row=line, column=id_column))
            continue
        first_line_of[row.case_id] = line
        rows.append(row)
    if problems:
        raise DatasetError(problems)
    if unclear:
        logger.warning("yes/no label values that are neither yes nor no were read as no",
                       extra={"source": table.source, "rows_by_column": dict(unclear)})
    return rows


def _parse_row(source: str, line: int, values: Mapping[str, object], column_of: Mapping[str, str],
               rules: LabelRules, base_dir: Path,
               regions: str) -> tuple[_Row | None, list[DatasetProblem], list[str]]:
    def value(canonical: str) -> object:
        return values.get(column_of[canonical]) if canonical in column_of else None

    problems: list[DatasetProblem] = []

    def problem(canonical: str | None, message: str) -> None:
        column = None if canonical is None else column_of.get(canonical, canonical)
        problems.append(DatasetProblem(source, message, row=line, column=column))

    image = cell_text(value("image"))
    if not image:
        problem("image", "no image path")
    split = None
    if "split" in column_of:
        split = split_name(cell_text(value("split")))
        if split is None:
            problem("split", f"unknown split {cell_text(value('split'))!r}: expected train, val or test "
                             "(or training, valid, validate, validation, dev, testing)")
    labels, unclear = rules.labels(values)
    anatomy, anatomy_problems = row_anatomy({c: value(c) for c in ANATOMY_COLUMNS}, base_dir)
    for canonical, message in anatomy_problems:
        problem(canonical, message)
    size = None
    if "width" in column_of and "height" in column_of:
        size = _size(value("width"), value("height"), problem)
    if anatomy is not None and size is not None and not isinstance(anatomy, LungMasks):
        for canonical, message in placement_problems(anatomy, *size):
            problem(canonical, message)
    if anatomy is None and not anatomy_problems and regions == "auto":
        problem(None, "no anatomy: give regions, or right_lung and left_lung (boxes or masks), "
                      "or read the manifest with regions='atlas' or 'model' (--regions atlas|model)")
    if problems:
        return None, problems, unclear
    metadata = {"width": size[0], "height": size[1]} if size else {}
    if cell_text(value("view")):
        metadata["view"] = cell_text(value("view"))
    row = _Row(line, cell_text(value("case_id")) or Path(image).stem, base_dir / image,
               cell_text(value("patient_id")) or None, split, labels, anatomy, metadata)
    return row, [], unclear


def _size(width: object, height: object, problem) -> tuple[int, int] | None:
    """The row's (width, height) when both are positive whole numbers; reports a bad one."""
    size = []
    for canonical, raw in (("width", width), ("height", height)):
        text = cell_text(raw)
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if not (number.is_integer() and number > 0):
            problem(canonical, f"expected a positive whole number of pixels, got {text!r}")
            return None
        size.append(int(number))
    return size[0], size[1]


def _rows_with_images(rows: list[_Row], source: str, image_column: str,
                      policy: str) -> tuple[list[_Row], int]:
    """The rows whose image file exists, and how many were skipped (policy "skip"), or an error."""
    present = [row.image_path.is_file() for row in rows]
    missing = [row for row, found in zip(rows, present) if not found]
    if missing and policy == "error":
        raise DatasetError([DatasetProblem(source, f"image file not found: {row.image_path}", row=row.line,
                                           column=image_column) for row in missing])
    if missing:
        logger.warning("rows skipped: image file missing", extra={"source": source, "skipped": len(missing)})
    return [row for row, found in zip(rows, present) if found], len(missing)


def _splits(rows: list[_Row], source: str, column_of: Mapping[str, str], conflicts: str,
            fractions: Sequence[float], seed: int) -> list[str]:
    keys = [patient_key(row.patient_id, row.case_id) for row in rows]
    if "split" not in column_of:
        return patient_splits(keys, fractions, seed)
    given = [row.split for row in rows]
    several = patients_in_several_splits(keys, given)
    if not several:
        return given
    if conflicts == "error":
        lines = {key: [row.line for row, k in zip(rows, keys) if k == key] for key in several}
        raise DatasetError([DatasetProblem(
            source, f"one patient's images are in several splits ({_counts_text(several[key])}), on lines "
                    f"{_lines_text(lines[key])}: fix the split column, or read with split_conflicts="
                    "'majority' (--split-conflicts majority)", row=lines[key][0], column=column_of["split"])
            for key in several])
    resolved = majority_splits(keys, given)
    logger.warning("patients found in several splits moved to their majority split",
                   extra={"source": source, "patients": len(several),
                          "images_moved": sum(a != b for a, b in zip(given, resolved))})
    return resolved


def _counts_text(counts: Counter) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))


def _lines_text(lines: list[int]) -> str:
    shown = ", ".join(str(line) for line in lines[:LINES_SHOWN])
    return shown + (f" and {len(lines) - LINES_SHOWN} more" if len(lines) > LINES_SHOWN else "")


def _atlas(records: list[ImageRecord], source: str,
           atlas_from: str | os.PathLike | None) -> tuple[AtlasRegions, str]:
    """The atlas template and a sentence saying where it was learned."""
    if atlas_from is not None:
        other = read_manifest(atlas_from)
        atlas, used = learn_atlas(other.records, str(atlas_from))
        return atlas, f"learned from {used} images of {atlas_from}"
    own = [record for record in records if record.anatomy is not None]
    if own:
        atlas, used = learn_atlas(own, source)
        return atlas, f"learned from {used} images of {source} that have anatomy"
    atlas, used = bundled_atlas()
    return atlas, f"learned from the lung boxes of {used} radiographs bundled with the package"


def _predicted_regions(model_file: str | os.PathLike | None) -> PredictedRegions:
    """The anatomy model's regions source (None: the shipped model); an option error when its file cannot be read."""
    try:
        return PredictedRegions.from_file(model_file)
    except OSError as error:
        shown = SHIPPED_MODEL if model_file is None else model_file
        raise option_error("anatomy_model", f"cannot read the anatomy model {shown}: "
                                            f"{error.strerror or type(error).__name__}") from None


@functools.cache
def bundled_atlas() -> tuple[AtlasRegions, int]:
    """The atlas of the radiographs bundled in trainer/demo/cxr_lungbox (their expert lung boxes), and their count."""
    samples = read_manifest(SAMPLE_DIR / "manifest.csv", columns={"patient_id": "patientid"})
    return learn_atlas(samples.records, str(SAMPLE_DIR / "manifest.csv"))


def _label_names(rows: list[_Row], rules: LabelRules) -> tuple[str, ...]:
    """Names seen in label columns, sorted, then the yes/no columns in the order given."""
    seen = {label for row in rows for label in row.labels}
    return tuple(sorted(seen - set(rules.yes_no_columns))) + rules.yes_no_columns


def _regions_source(records: list[ImageRecord]) -> str:
    kinds = {record.anatomy.kind for record in records}
    return kinds.pop() if len(kinds) == 1 else "mixed"
