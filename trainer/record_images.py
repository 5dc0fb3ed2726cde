"""Decoding dataset images and resolving their 18 crop boxes, in DataLoader worker processes.

A `RecordImages` dataset yields, per cache row, the decoded grey pixels and the (18, 4) boxes
(`AnatomySource.boxes_for(image)` after `model.imaging.decode_image`), or the reason the image
cannot be used (an undecodable image, invalid anatomy, no chest found by the anatomy model).
Problems are returned rather than raised so that the caller decides whether to stop or skip; they
name what is wrong, never the file path (paths can hold patient identifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.errors import ChextrievError
from model.imaging import decode_image
from trainer.datasets.records import ImageRecord


@dataclass(frozen=True)
class LoadedImage:
    """One row's decoded image and boxes, or, when it cannot be used, `problem` saying why."""

    row: int
    case_id: str
    pixels: torch.Tensor | None = None
    boxes: np.ndarray | None = None
    problem: str | None = None


class RecordImages(Dataset):
    """The images of `records` at the given cache `rows`, decoded with their boxes resolved."""

    def __init__(self, records: Sequence[ImageRecord], rows: Sequence[int]):
        self.records = records
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> LoadedImage:
        row = self.rows[position]
        record = self.records[row]
        try:
            image = decode_image(record.image_path)
            boxes = record.anatomy.boxes_for(image)
        except ChextrievError as error:
            return LoadedImage(row, record.case_id, problem=f"{type(error).__name__}: {error}")
        except OSError as error:
            return LoadedImage(row, record.case_id,
                               problem=f"cannot read the image file ({error.strerror or type(error).__name__})")
        return LoadedImage(row, record.case_id, torch.from_numpy(image.pixels), boxes)


def image_batches(records: Sequence[ImageRecord], rows: Sequence[int], *, batch_size: int, num_workers: int
                  ) -> DataLoader:
    """Batches (lists of LoadedImage, in the order of `rows`) decoded by `num_workers` processes
    (0: in this process) while the caller runs the backbone on the previous batch."""
    return DataLoader(RecordImages(records, rows), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=list)
