"""The largest 4-connected part of a binary mask, in numpy and plain Python (the service never imports
scipy).

The mask is cut into runs (maximal horizontal stretches of foreground in one row); runs of adjacent
rows whose columns overlap are joined with a union-find. A lung or heart mask of the anatomy model
(192 x 192) has a few hundred runs, so this takes well under a millisecond, where labelling pixel by
pixel in Python would take tens.
"""

from __future__ import annotations

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """A boolean mask of the largest 4-connected part of `mask` (all False when `mask` is empty)."""
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends = _runs(mask)
    part = np.zeros_like(mask)
    if rows.size == 0:
        return part
    roots = _run_roots(rows, starts, ends)
    kept = roots == np.argmax(np.bincount(roots, weights=ends - starts))
    for row, start, end in zip(rows[kept], starts[kept], ends[kept], strict=True):
        part[row, start:end] = True
    return part


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first column and one-past-last column of every run, in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return rows, starts, ends


def _run_roots(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each run, the smallest run index of its part."""
    parent = list(range(len(rows)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    row_of, start_of, end_of = rows.tolist(), starts.tolist(), ends.tolist()
    above = range(0)  # the runs of the row above the current run's row
    row_first = 0  # the first run of the current run's row
    for index, row in enumerate(row_of):
        if index and row != row_of[index - 1]:
            above = range(row_first, index) if row == row_of[index - 1] + 1 else range(0)
            row_first = index
        for other in above:
            if start_of[other] < end_of[index] and start_of[index] < end_of[other]:
                first, second = root(other), root(index)
                if first != second:
                    parent[max(first, second)] = min(first, second)
    return np.array([root(index) for index in range(len(rows))])
