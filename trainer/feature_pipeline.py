"""How batches of dataset images reach the frozen backbone in `chextriev features`: two pipelines.

- `ExactCropPipeline` (the CPU's, and any device's with `--crops exact`): worker processes decode each
  image and cut its 18 region crops and the whole image with model.crops, the exact reference, while
  the backbone runs on the previous images; the crops are the ones the batched reference path cuts.
- `DeviceCropPipeline` (a GPU's by default): worker processes decode images to uint8 and stack a
  batch on one canvas, which travels through pinned memory; the crops are cut on the device, with
  roi_align (`device`, model.gpu_crops) or model.crops (`device-exact`), and the backbone runs there
  in channels_last, in the compute dtype, compiled (model.batch_features). roi_align's features
  differ slightly from the exact crops' (see model.gpu_crops): the cache records which crops it holds.
  Images travel as uint8, so `device-exact` crops are exact for 8-bit images (MIMIC-CXR-JPG) only.

Both yield `PreparedBatch`es of the requested rows in order, unusable images listed with their reason.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from model.batch_features import BatchFeatures
from model.errors import ChextrievError
from model.feature_extractor import FeatureExtractor, image_crops
from model.preprocessing import PAD_VALUE
from model.region_crops import RegionCrops
from trainer.datasets.records import ImageRecord
from trainer.record_images import LoadedImage, RecordImages

CROP_METHODS = ("auto", "exact", "device", "device-exact")
PREFETCH_PER_WORKER = 2


def default_workers(device: torch.device) -> int:
    """Decoding processes for `device`: on a GPU every core but two (one feeds the GPU), on the CPU
    none: the backbone's runtime already uses every core, and two workers on two cores measured half
    as fast as none (`chextriev bench features --workers`)."""
    if device.type != "cuda":
        return 0
    return max(1, len(os.sched_getaffinity(0)) - 2)


@dataclass(frozen=True)
class PreparedBatch:
    """One batch of cache rows: the backbone inputs of its usable images and the unusable images."""

    rows: list[int]  # every row of the batch, in order
    usable_rows: list[int]  # the rows `inputs` holds, in order
    bad: list[LoadedImage]  # the images that cannot be used, each with its problem
    inputs: tuple[Tensor, ...]  # what the pipeline's `features` takes; empty when no image is usable

    @classmethod
    def of(cls, items: list[LoadedImage], stack: Callable[[list[LoadedImage]], tuple[Tensor, ...]]) -> PreparedBatch:
        """The batch of `items`, its usable ones' inputs made by `stack` (not called when none is usable)."""
        good = [item for item in items if item.problem is None]
        return cls(rows=[item.row for item in items], usable_rows=[item.row for item in good],
                   bad=[item for item in items if item.problem is not None], inputs=stack(good) if good else ())

    def pin_memory(self) -> PreparedBatch:
        """This batch with its inputs in pinned memory (DataLoader(pin_memory=True) calls it)."""
        return dataclasses.replace(self, inputs=tuple(tensor.pin_memory() for tensor in self.inputs))


class RecordCrops(RecordImages):
    """Each row's exact crops under a crop scheme (`model.feature_extractor.image_crops`), or the image's problem."""

    def __init__(self, records: Sequence[ImageRecord], rows: Sequence[int], region_crops: RegionCrops):
        super().__init__(records, rows)
        self.region_crops = region_crops

    def __getitem__(self, position: int) -> LoadedImage:
        loaded = super().__getitem__(position)
        if loaded.problem is not None:
            return loaded
        return dataclasses.replace(loaded, pixels=image_crops(loaded.pixels, loaded.boxes, self.region_crops))


class RecordBytes(RecordImages):
    """Each row's grey image as uint8 (H, W) (0-255, rounded), or the image's problem."""

    def __getitem__(self, position: int) -> LoadedImage:
        loaded = super().__getitem__(position)
        if loaded.problem is not None:
            return loaded
        return dataclasses.replace(loaded, pixels=(loaded.pixels * 255).round_().to(torch.uint8))


class ExactCropPipeline:
    """Exact crops cut in worker processes, features on the extractor's device and runtime."""

    crops = "exact"

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor

    def batches(self, records: Sequence[ImageRecord], rows: Sequence[int], *, batch_size: int,
                num_workers: int) -> Iterator[PreparedBatch]:
        """Batches of `batch_size` rows. The workers prepare single images and run up to a batch ahead,
        so they cut the next batch's crops while the backbone runs (two batches of crops in memory)."""
        ahead = max(PREFETCH_PER_WORKER, math.ceil(batch_size / num_workers)) if num_workers else None
        images = DataLoader(RecordCrops(records, rows, self.extractor.region_crops), batch_size=None,
                            num_workers=num_workers, prefetch_factor=ahead)
        for group in _groups(images, batch_size):
            yield PreparedBatch.of(group, lambda good: (torch.stack([item.pixels for item in good]),))

    def features(self, batch: PreparedBatch) -> tuple[Tensor, Tensor]:
        """(B, 18, F) region and (B, F) whole-image features of the batch's usable images."""
        return self.extractor.image_features(batch.inputs[0])


class DeviceCropPipeline:
    """uint8 canvases decoded by workers, crops cut and the backbone run on the device."""

    def __init__(self, extractor: FeatureExtractor, *, compile_backbone: bool, crops: str = "roi_align"):
        self.device = extractor.device
        self.crops = crops
        self.runner = BatchFeatures(extractor.backbone, device=extractor.device, dtype=extractor.dtype,
                                    compile_backbone=compile_backbone, crops=crops,
                                    region_crops=extractor.region_crops)

    def batches(self, records: Sequence[ImageRecord], rows: Sequence[int], *, batch_size: int,
                num_workers: int) -> Iterator[PreparedBatch]:
        """Batches of `batch_size` rows, each stacked on one canvas by a worker process."""
        return iter(DataLoader(RecordBytes(records, rows), batch_size=batch_size, num_workers=num_workers,
                               collate_fn=stack_on_canvas, pin_memory=self.device.type == "cuda",
                               prefetch_factor=PREFETCH_PER_WORKER if num_workers else None))

    def features(self, batch: PreparedBatch) -> tuple[Tensor, Tensor]:
        """(B, 18, F) region and (B, F) whole-image features of the batch's usable images."""
        return self.runner(*batch.inputs)


def stack_on_canvas(items: list[LoadedImage]) -> PreparedBatch:
    """The usable uint8 images on one (B, Hmax, Wmax) canvas filled with PAD_VALUE, with their (B, 2)
    sizes (H, W) and (B, 18, 4) boxes."""
    return PreparedBatch.of(items, _canvas_inputs)


def _canvas_inputs(good: list[LoadedImage]) -> tuple[Tensor, Tensor, Tensor]:
    sizes = torch.tensor([tuple(item.pixels.shape) for item in good])
    canvas = torch.full((len(good), *sizes.amax(0).tolist()), round(PAD_VALUE * 255), dtype=torch.uint8)
    for index, item in enumerate(good):
        canvas[index, : item.pixels.shape[0], : item.pixels.shape[1]] = item.pixels
    return canvas, sizes, torch.from_numpy(np.stack([item.boxes for item in good]).astype(np.float32))


def feature_pipeline(extractor: FeatureExtractor, crops: str = "auto",
                     compile_backbone: bool | None = None) -> ExactCropPipeline | DeviceCropPipeline:
    """The pipeline for `crops`: "exact" (model.crops, in workers), "device" (roi_align on the
    extractor's device), "device-exact" (model.crops on the device) or "auto" (device on a GPU, exact
    elsewhere). compile_backbone (device crops only) defaults to True on a GPU."""
    if crops not in CROP_METHODS:
        raise ChextrievError(f"unknown crop method {crops!r}; expected one of {', '.join(CROP_METHODS)}")
    on_gpu = extractor.device.type == "cuda"
    if crops == "exact" or (crops == "auto" and not on_gpu):
        return ExactCropPipeline(extractor)
    return DeviceCropPipeline(extractor, compile_backbone=on_gpu if compile_backbone is None else compile_backbone,
                              crops="exact" if crops == "device-exact" else "roi_align")


def _groups(items: Iterable[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    group: list[LoadedImage] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
