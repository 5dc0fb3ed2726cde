"""Helpers writing small manifests that point at the bundled sample radiographs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainer.demo.samples import SampleCase


def write_csv(path: Path, rows: list[dict]) -> Path:
    """A CSV manifest with the union of the rows' keys as header (first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def lung_row(case: SampleCase, **extra) -> dict:
    """A manifest row for a sample case: absolute image path and its lung boxes as JSON text."""
    return {"image": str(case.image_path), "right_lung": json.dumps(case.right_lung),
            "left_lung": json.dumps(case.left_lung), **extra}
