"""Node labels from a regional-findings table (`chextriev train --region-findings`): which region of an
image shows a finding, such as JSRT's nodule zones, for the node losses of trainer.training."""

from __future__ import annotations

import logging
import os

import numpy as np

from model.catalogue import REGION_NAMES
from trainer.datasets.case_table import read_case_regions
from trainer.feature_cache import FeatureCache
from trainer.training import RegionTargets, TrainingError

logger = logging.getLogger(__name__)


def region_targets_from_table(cache: FeatureCache, path: str | os.PathLike, column: str,
                              label: str) -> RegionTargets:
    """Node labels for `label`: positive in the region the table's `column` names for an image positive for
    it, negative in its other regions and in every region of an image negative for it; unknown in every
    region of a positive image the table has no region for. Other labels are broadcast from the image."""
    if label not in cache.label_names:
        raise TrainingError(f"the feature cache has no label {label!r}; its labels are {', '.join(cache.label_names)}")
    column_of_label = cache.label_names.index(label)
    regions = read_case_regions(path, column)
    shape = (cache.count, len(REGION_NAMES), len(cache.label_names))
    labels = np.array(np.broadcast_to(cache.labels[:, None, :], shape), dtype=np.float32)
    labels[:, :, column_of_label] = 0.0
    known = np.ones(shape[:2], dtype=bool)
    placed = unplaced = 0
    for row, case_id in enumerate(cache.case_ids.tolist()):
        if not cache.labels[row, column_of_label]:
            continue
        region = regions.get(case_id)
        if region is None:
            known[row] = False
            unplaced += 1
        else:
            labels[row, region, column_of_label] = 1.0
            placed += 1
    strays = len(set(regions) - set(cache.case_ids.tolist()))
    logger.info("regional findings read", extra={"label": label, "placed": placed, "positive_without_region": unplaced,
                                                  "table_cases_not_in_cache": strays})
    if placed == 0:
        raise TrainingError(f"no image positive for {label!r} has a region in {path}: check the case ids")
    return RegionTargets(labels, known, f"{label} in the region named by {os.fspath(path)} ({column}); "
                                        f"unknown for {unplaced} positive images without one")
