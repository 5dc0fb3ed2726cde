"""Retrieval tasks: what counts as a relevant case, which images ask and which are searched.

- The cache's own labels (the default): every usable image asks and is searched; a case is relevant
  for each label it shares with the query (the paper's per-finding AP/HR/RR).
- A label table (`--labels-from TABLE --label-column COL`): the images with a value in the column ask
  and are searched; a case is relevant when its value equals the query's. JSRT's nodules.csv gives the
  malignancy task (malignant/benign) and the same-zone task (the nodule's lung zone). `gallery_label`
  adds the images positive for a cache label to those searched (JSRT: every nodule image, 154, of which
  92 have a zone), as cases that are never relevant unless the table gives them the query's value.
- With `region_level`, each value names a region (trainer.datasets.case_table.region_index), and
  region-level search ranks by that region's node embedding: "cases like this one in its nodule's zone".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from model.catalogue import REGION_NAMES
from trainer.datasets.case_table import read_case_values, region_index
from trainer.evaluation.report import EvaluationInputError
from trainer.feature_cache import FeatureCache


@dataclass(frozen=True)
class RetrievalTask:
    """Labels (N, C) bool over the cache rows, which rows ask (N,) and are searched (N,), and, for
    region-level search, the region each row's label names ((N,) catalogue index, -1 for none)."""

    name: str
    label_names: tuple[str, ...]
    labels: np.ndarray
    asks: np.ndarray
    searched: np.ndarray
    query_regions: np.ndarray | None = None

    @property
    def region_level(self) -> bool:
        """Whether the task names a region of interest for each query."""
        return self.query_regions is not None


def cache_label_task(cache: FeatureCache) -> RetrievalTask:
    """The cache's labels over its usable rows."""
    usable = cache.usable.copy()
    return RetrievalTask("cache labels", tuple(cache.label_names), cache.labels.astype(bool), usable, usable)


def table_task(cache: FeatureCache, path: str | os.PathLike, column: str, *, gallery_label: str | None = None,
               region_level: bool = False) -> RetrievalTask:
    """The task of a label table's `column` (see the module docstring)."""
    values = read_case_values(path, column)
    row_values = [values.get(case_id) for case_id in cache.case_ids.tolist()]
    has_value = np.array([value is not None for value in row_values]) & cache.usable
    if not has_value.any():
        raise EvaluationInputError(f"no usable image of the feature cache has a value in {path} ({column}): "
                                   "check that the table's case ids or images match the cache's")
    names = tuple(sorted({value for value, present in zip(row_values, has_value) if present}))
    labels = np.array([[present and value == name for name in names]
                       for value, present in zip(row_values, has_value)], dtype=bool)
    searched = has_value.copy()
    if gallery_label is not None:
        if gallery_label not in cache.label_names:
            raise EvaluationInputError(f"the feature cache has no label {gallery_label!r}; its labels are "
                                       f"{', '.join(cache.label_names)}")
        searched |= cache.labels[:, cache.label_names.index(gallery_label)].astype(bool) & cache.usable
    regions = None
    if region_level:
        unnamed = [name for name in names if region_index(name) is None]
        if unnamed:
            raise EvaluationInputError(f"region-level search needs values naming regions; {', '.join(unnamed)} name "
                                       f"none of {', '.join(REGION_NAMES)} nor a lung zone such as 'right upper'")
        regions = np.array([region_index(value) if present else -1
                            for value, present in zip(row_values, has_value)], dtype=np.int64)
    return RetrievalTask(f"{column} from {os.path.basename(path)}", names, labels, has_value, searched, regions)
