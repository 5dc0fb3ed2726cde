"""Reading tables, CSV or JSON Lines (optionally gzip-compressed), into rows with their line numbers."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trainer.datasets.errors import DatasetError, DatasetProblem

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Table:
    """The rows of one file: ``rows`` pairs each row's line number with its values by column
    (text from a CSV; any JSON value from JSON Lines, a key absent from a line reading as None)."""

    source: str
    columns: tuple[str, ...]
    rows: list[tuple[int, dict[str, object]]]


def read_table(path: Path) -> Table:
    """Read a ``.csv`` (header row first) or ``.jsonl`` (one JSON object per line) file, either
    possibly gzip-compressed (``.csv.gz``)."""
    kind = _kind(path)
    with _opened(path) as handle:
        if kind == "jsonl":
            return _read_jsonl(handle, str(path))
        header, rows = _csv_rows(handle, str(path))
        kept, problems = [], []
        for line, values in rows:
            if values is None:
                problems.append(_too_many_values(str(path), line, len(header)))
            else:
                kept.append((line, values))
    if problems:
        raise DatasetError(problems)
    return Table(str(path), header, kept)


def iter_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream the rows of a CSV that must have the ``required`` columns, with their line numbers."""
    with _opened(path) as handle:
        header, rows = _csv_rows(handle, str(path))
        absent = [column for column in required if column not in header]
        if absent:
            raise DatasetError([DatasetProblem(str(path), f"missing the column(s) {', '.join(absent)}; "
                                                          f"its columns are {', '.join(header)}")])
        for line, values in rows:
            if values is None:
                raise DatasetError([_too_many_values(str(path), line, len(header))])
            yield line, values


def _kind(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
    suffix = suffix.lower().removesuffix(".gz")
    if suffix.endswith(CSV_SUFFIXES):
        return "csv"
    if suffix.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise DatasetError([DatasetProblem(str(path), "expected a .csv or .jsonl file (optionally .gz)")])


class _opened:
    """The file as UTF-8 text (gunzipped when it ends in .gz); read errors become DatasetErrors."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> IO[str]:
        try:
            if self.path.suffix.lower() == ".gz":
                self.handle = gzip.open(self.path, "rt", newline="", encoding="utf-8-sig")
            else:
                self.handle = open(self.path, newline="", encoding="utf-8-sig")
        except OSError as error:
            raise DatasetError([DatasetProblem(str(self.path), f"cannot read the file: "
                                                               f"{error.strerror or error}")]) from None
        return self.handle

    def __exit__(self, kind, error, traceback) -> None:
        self.handle.close()
        if isinstance(error, (OSError, EOFError, UnicodeDecodeError)):
            raise DatasetError([DatasetProblem(str(self.path), f"cannot read the file: {error}")]) from None


def _csv_rows(handle: IO[str],
              source: str) -> tuple[tuple[str, ...], Iterator[tuple[int, dict[str, str] | None]]]:
    """The header and a lazy iterator over the non-blank rows (None for a row with more values
    than the header has columns)."""
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise DatasetError([DatasetProblem(source, f"malformed CSV: {error}", row=reader.line_num)]) from None
    if header is None:
        raise DatasetError([DatasetProblem(source, "the file is empty (no header row)")])
    columns = tuple(name.strip() for name in header)
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DatasetError([DatasetProblem(source, f"the header names columns more than once: {repeated}")])

    def rows() -> Iterator[tuple[int, dict[str, str] | None]]:
        try:
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    fits = len(cells) <= len(columns)
                    yield reader.line_num, dict(zip(columns, cells)) if fits else None
        except csv.Error as error:
            raise DatasetError([DatasetProblem(source, f"malformed CSV: {error}", row=reader.line_num)]) from None

    return columns, rows()


def _too_many_values(source: str, line: int, columns: int) -> DatasetProblem:
    return DatasetProblem(source, f"more values than the header's {columns} columns", row=line)


def _read_jsonl(handle: IO[str], source: str) -> Table:
    rows, problems, columns = [], [], {}
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except ValueError as error:
            problems.append(DatasetProblem(source, f"not valid JSON: {error}", row=line_number))
            continue
        if not isinstance(values, dict):
            problems.append(DatasetProblem(source, f"expected a JSON object, got {type(values).__name__}",
                                           row=line_number))
            continue
        columns.update(dict.fromkeys(values))
        rows.append((line_number, values))
    if problems:
        raise DatasetError(problems)
    return Table(source, tuple(columns), rows)
