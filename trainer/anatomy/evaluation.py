"""Held-out accuracy of an anatomy model against expert annotations.

Per image: the IoU of each predicted lung box with the expert box (or the expert mask's box), the
heart's where an expert heart is given, the Dice of each predicted mask with the expert mask (at the
model's input size) where masks are given, and the mean IoU of the 18 regions derived from the
prediction with the 18 derived from the expert annotation. An image the model refuses
(NoChestFoundError) counts as IoU 0 and Dice 0 and is counted apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.anatomy import box_iou
from model.anatomy_model import AnatomyModel, NoChestFoundError
from model.imaging import decode_image
from model.region_derivation import box_from_mask
from trainer.anatomy.data import resized_mask, structure_targets
from trainer.datasets.records import ImageRecord

GOAL_LUNG_IOU = 0.85


def evaluate_anatomy(model: AnatomyModel, records: Sequence[ImageRecord]) -> dict:
    """The figures over `records` (see the module docstring): medians, quartiles and counts."""
    rows = [_image_figures(model, record) for record in tqdm(records, desc="anatomy evaluation", unit="image")]
    report = {"images": len(rows), "refused": sum(row["refused"] for row in rows),
              "predict_ms_median": float(np.median([row["ms"] for row in rows]))}
    for name in ("lung_box_iou", "right lung_box_iou", "left lung_box_iou", "heart_box_iou",
                 "right lung_dice", "left lung_dice", "heart_dice", "regions_iou"):
        values = [row[name] for row in rows if name in row]
        if values:
            report[name] = _summary(values)
    if "lung_box_iou" in report:
        report["lung_box_iou"]["at_least_goal"] = float(np.mean([row["lung_box_iou"] >= GOAL_LUNG_IOU for row in rows]))
    return report


def markdown_summary(reports: dict[str, dict]) -> str:
    """A table of the main figures, one row per dataset."""
    lines = ["| set | images | refused | lung-box IoU median (IQR) | 18-region IoU median | lung Dice | heart Dice "
             "| ms/image |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, report in reports.items():
        lung = report["lung_box_iou"]
        dice = [report[key]["median"] for key in ("right lung_dice", "left lung_dice") if key in report]
        heart = f"{report['heart_dice']['median']:.3f}" if "heart_dice" in report else "-"
        lines.append(f"| {name} | {report['images']} | {report['refused']} | {lung['median']:.3f} "
                     f"({lung['q1']:.3f}-{lung['q3']:.3f}) | {report['regions_iou']['median']:.3f} | "
                     f"{f'{np.mean(dice):.3f}' if dice else '-'} | {heart} | "
                     f"{report['predict_ms_median']:.0f} |")
    return "\n".join(lines)


def _image_figures(model: AnatomyModel, record: ImageRecord) -> dict:
    image = decode_image(record.image_path)
    targets = structure_targets(record.anatomy)
    expert_boxes = {name: _expert_box(target) for name, target in targets.items() if target is not None}
    expert_regions = record.anatomy.boxes(image.width, image.height)
    started = time.perf_counter()
    try:
        prediction = model.predict(image.pixels)
    except NoChestFoundError:
        prediction = None
    row = {"ms": (time.perf_counter() - started) * 1000, "refused": prediction is None}
    found = prediction.structures if prediction is not None else {}
    for name, box in expert_boxes.items():
        if name in model.trained_structures:
            predicted = found.get(name)
            row[f"{name}_box_iou"] = box_iou(predicted.box if predicted else None, box)
    row["lung_box_iou"] = float(np.mean([row["right lung_box_iou"], row["left lung_box_iou"]]))
    for name, target in targets.items():
        if isinstance(target, Path) and name in model.trained_structures:
            predicted = found.get(name)
            row[f"{name}_dice"] = _dice(predicted.mask if predicted else None, target, model.input_size)
    row["regions_iou"] = 0.0 if prediction is None else float(np.mean(
        [box_iou(mine, theirs) for mine, theirs in zip(prediction.regions, expert_regions, strict=True)]))
    return row


def _expert_box(target: object) -> tuple[float, float, float, float]:
    if isinstance(target, Path):
        from PIL import Image

        with Image.open(target) as mask:
            return box_from_mask(np.asarray(mask.convert("L")) > 0)
    return tuple(float(value) for value in target)


def _dice(predicted: np.ndarray | None, expert_path: Path, size: int) -> float:
    if predicted is None:
        return 0.0
    expert = resized_mask(expert_path, size) > 0
    overlap = np.logical_and(predicted, expert).sum()
    return float(2 * overlap / max(1, predicted.sum() + expert.sum()))


def _summary(values: Sequence[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "q1": float(np.percentile(array, 25)),
            "q3": float(np.percentile(array, 75)), "mean": float(array.mean()), "n": int(array.size)}

