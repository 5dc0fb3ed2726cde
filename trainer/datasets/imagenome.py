"""Chest ImaGenome v1.0.0 silver scene graphs on MIMIC-CXR-JPG v2.0.0 images, with the official split.

Inputs (every path given by the caller):
- ``scene_graph_dir``: the folder of ``{dicom_id}_SceneGraph.json`` files
  (``silver_dataset/scene_graph`` of Chest ImaGenome);
- ``mimic_jpg_dir``: the MIMIC-CXR-JPG root, holding
  ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg``;
- ``split_csv``: ``mimic-cxr-2.0.0-split.csv`` (columns dicom_id, study_id, subject_id, split with
  train/validate/test; ``.csv.gz`` as downloaded also works);
- ``metadata_csv`` (optional): ``mimic-cxr-2.0.0-metadata.csv``; when given, its ``ViewPosition``
  decides the view, otherwise the scene graph's ``viewpoint`` does.
Kept: images of the split file that have a scene graph, a PA or AP view and all 18 region boxes
(non-degenerate). Labels: the 9 catalogue findings, per image and per region (see
`trainer.datasets.scene_graph`). Images left out are counted by reason in ``Dataset.excluded``.
Malformed scene graphs raise one DatasetError naming every file and field; images missing on disk
are refused (``missing_images="error"``, listing each) or left out and counted (``"skip"``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from model.anatomy import box_problem
from model.catalogue import FINDING_NAMES, NUM_REGIONS
from trainer.datasets.anatomy_sources import NamedBoxes
from trainer.datasets.errors import DatasetError, DatasetProblem, option_error
from trainer.datasets.records import Dataset, ImageRecord
from trainer.datasets.scene_graph import parse_scene_graph
from trainer.datasets.splits import split_name
from trainer.datasets.tables import iter_csv

logger = logging.getLogger(__name__)

SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS = ("dicom_id", "ViewPosition")
FRONTAL_VIEWS = ("PA", "AP")
MISSING_IMAGE_POLICIES = ("error", "skip")


def mimic_jpg_path(mimic_jpg_dir: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Where MIMIC-CXR-JPG keeps an image."""
    return (Path(mimic_jpg_dir) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"
            / f"{dicom_id}.jpg")


def read_imagenome(scene_graph_dir: str | os.PathLike, mimic_jpg_dir: str | os.PathLike,
                   split_csv: str | os.PathLike, *, metadata_csv: str | os.PathLike | None = None,
                   missing_images: str = "error", name: str = "chest-imagenome") -> Dataset:
    """Read the frontal images with 18 boxes into a Dataset labelled with the 9 findings."""
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise option_error("missing_images", f"expected error or skip, got {missing_images!r}")
    graphs = _scene_graph_files(Path(scene_graph_dir))
    views = _view_positions(Path(metadata_csv)) if metadata_csv is not None else None
    records, problems, missing = [], [], []
    excluded: Counter = Counter()
    used: set[str] = set()
    for line, row in tqdm(_split_rows(Path(split_csv)), desc="scene graphs", unit="row", disable=None):
        dicom_id = row["dicom_id"]
        if dicom_id not in graphs:
            excluded["no scene graph"] += 1
            continue
        if dicom_id in used:
            problems.append(DatasetProblem(str(split_csv), f"image {dicom_id} is listed twice", row=line,
                                           column="dicom_id"))
            continue
        used.add(dicom_id)
        try:
            graph = parse_scene_graph(_load_json(graphs[dicom_id]), graphs[dicom_id].name)
        except DatasetError as error:
            problems += error.problems
            continue
        view = views.get(dicom_id, "") if views is not None else (graph.viewpoint or "")
        reason = _exclusion(view, graph.boxes)
        if reason:
            excluded[reason] += 1
            continue
        image_path = mimic_jpg_path(Path(mimic_jpg_dir), row["subject_id"], row["study_id"], dicom_id)
        if not image_path.is_file():
            missing.append(DatasetProblem(str(split_csv), f"image file not found: {image_path} (read with "
                                          "missing_images='skip' to leave such images out)", row=line,
                                          column="dicom_id"))
            continue
        records.append(ImageRecord(dicom_id, image_path, row["subject_id"], row["split"], graph.findings,
                                   NamedBoxes.from_mapping(graph.boxes), {"view": view.strip().upper()},
                                   region_labels=graph.region_labels))
    if missing and missing_images == "error":
        problems += missing
    if problems:
        raise DatasetError(problems)
    if missing:
        excluded["image file missing"] = len(missing)
    if len(graphs) > len(used):
        excluded["scene graph not in the split file"] = len(graphs) - len(used)
    if not records:
        raise DatasetError([DatasetProblem(str(split_csv), f"no usable image; left out: {dict(excluded)}")])
    dataset = Dataset(name, FINDING_NAMES, records, "imagenome", excluded=dict(excluded))
    logger.info("Chest ImaGenome read", extra=dataset.summary())
    return dataset


def _scene_graph_files(directory: Path) -> dict[str, Path]:
    """Scene-graph files by DICOM id."""
    if not directory.is_dir():
        raise DatasetError([DatasetProblem(str(directory), "no such scene-graph folder")])
    with os.scandir(directory) as entries:
        return {entry.name[:-len(SCENE_GRAPH_SUFFIX)]: Path(entry.path) for entry in entries
                if entry.name.endswith(SCENE_GRAPH_SUFFIX)}


def _split_rows(path: Path):
    """(line, row) of the split file with the split name made canonical; DatasetError for a bad row."""
    for line, row in iter_csv(path, SPLIT_COLUMNS):
        problems = [DatasetProblem(str(path), f"expected digits, got {row[column]!r}", row=line, column=column)
                    for column in ("subject_id", "study_id") if not row[column].strip().isdigit()]
        split = split_name(row["split"])
        if split is None:
            problems.append(DatasetProblem(str(path), f"unknown split {row['split']!r} (expected train, "
                                                      "validate or test)", row=line, column="split"))
        if problems:
            raise DatasetError(problems)
        yield line, {"dicom_id": row["dicom_id"].strip(), "subject_id": row["subject_id"].strip(),
                     "study_id": row["study_id"].strip(), "split": split}


def _view_positions(path: Path) -> dict[str, str]:
    """ViewPosition by DICOM id, from the MIMIC-CXR metadata file."""
    return {row["dicom_id"].strip(): row["ViewPosition"] for _, row in iter_csv(path, METADATA_COLUMNS)}


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:  # ValueError: bad JSON or UTF-8
        raise DatasetError([DatasetProblem(path.name, f"not a readable JSON file: {error}")]) from None


def _exclusion(view: str, boxes: dict) -> str | None:
    """Why an image is left out, or None to keep it."""
    if view.strip().upper() not in FRONTAL_VIEWS:
        return "not a frontal (PA or AP) view"
    if len(boxes) < NUM_REGIONS:
        return "fewer than 18 region boxes"
    if any(box_problem(box, math.inf, math.inf) for box in boxes.values()):
        return "degenerate region box"
    return None
