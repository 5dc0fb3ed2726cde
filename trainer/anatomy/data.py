"""Training data of the anatomy model: radiographs with their lung (and heart) masks or boxes, read from
the manifests the project already reads, resized once and kept in memory.

Each structure of a sample is supervised by a mask (SCR masks), by a box (expert lung boxes, the
boxes of a Chest ImaGenome scene graph or of a manifest's 18 regions) or not at all (the heart of a
set that boxes only the lungs). Negatives, images with no chest in the model's sense (blank,
noise, smooth fields, gradients, and the training radiographs turned by 90, 180 or 270 degrees or
upside down), teach the model to find nothing there: their masks are empty.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.anatomy_model import STRUCTURES, resize_grey
from model.catalogue import REGION_INDEX
from model.imaging import decode_image
from trainer.datasets.anatomy_sources import LungBoxes, LungMasks, NamedBoxes
from trainer.datasets.manifest import MANIFEST_COLUMNS, read_manifest
from trainer.datasets.records import ImageRecord
from trainer.datasets.tables import read_table

logger = logging.getLogger(__name__)

# How a structure of a sample is supervised.
UNSUPERVISED, MASK, BOX = 0, 1, 2
# The licences under which images may be redistributed, and so may train the shipped weights.
OPEN_LICENCES = frozenset({"CC BY 3.0", "CC BY 4.0", "CC BY", "CC BY-SA", "Apache 2.0"})
# Which of the 18 regions stands for each structure when a sample gives the 18 boxes.
REGION_OF_STRUCTURE = {"right lung": "right lung", "left lung": "left lung", "heart": "cardiac silhouette"}


@dataclass(frozen=True, eq=False)
class AnatomySample:
    """One image at the training size: float32 (S, S) pixels in [0, 1]; per structure a float32
    (S, S) mask (zeros where not a mask), a box (x1, y1, x2, y2) as fractions of the image (zeros
    where not a box) and how it is supervised (UNSUPERVISED, MASK or BOX)."""

    key: str
    split: str
    patient: str
    pixels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    kinds: np.ndarray


@dataclass(frozen=True)
class ManifestSpec:
    """A manifest to read, with column mappings applied where the file has the column."""

    path: Path
    columns: Mapping[str, str]


def sample_key(dataset_name: str, record: ImageRecord) -> str:
    """The identifier of an image in the model's metadata: dataset name / image file stem."""
    return f"{dataset_name}/{record.image_path.stem}"


def read_records(spec: ManifestSpec, *, seed: int, split_fractions: Sequence[float],
                 open_licences_only: bool = False) -> tuple[str, list[ImageRecord]]:
    """The dataset name and the records of one manifest that carry lung anatomy (boxes or masks); with
    `open_licences_only`, only rows whose ``license`` column names an open licence."""
    table = read_table(spec.path)
    columns = {name: column for name, column in spec.columns.items() if column in table.columns}
    unknown = [name for name in columns if name not in MANIFEST_COLUMNS]
    if unknown:
        raise ValueError(f"unknown column mapping(s) {', '.join(unknown)}; expected names among "
                         f"{', '.join(MANIFEST_COLUMNS)}")
    if open_licences_only and "license" not in table.columns:
        raise ValueError(f"{spec.path} has no 'license' column to choose openly licensed images by")
    dataset = read_manifest(spec.path, columns=columns, seed=seed, split_fractions=split_fractions)
    records = [record for record in dataset.records if isinstance(record.anatomy, (LungBoxes, LungMasks, NamedBoxes))]
    if open_licences_only:
        image_column = columns.get("image", "image")
        open_images = {(spec.path.parent / str(values[image_column])).resolve()
                       for _, values in table.rows if str(values.get("license") or "").strip() in OPEN_LICENCES}
        records = [record for record in records if record.image_path.resolve() in open_images]
    return dataset.name, records


def load_samples(dataset_name: str, records: Sequence[ImageRecord], size: int) -> list[AnatomySample]:
    """Decode and resize each record's image and anatomy (with a progress bar)."""
    return [_sample(dataset_name, record, size)
            for record in tqdm(records, desc=f"reading {dataset_name}", unit="image", mininterval=2)]


def _sample(dataset_name: str, record: ImageRecord, size: int) -> AnatomySample:
    image = decode_image(record.image_path)
    width, height = image.width, image.height
    masks = np.zeros((len(STRUCTURES), size, size), dtype=np.float32)
    boxes = np.zeros((len(STRUCTURES), 4), dtype=np.float32)
    kinds = np.full(len(STRUCTURES), UNSUPERVISED, dtype=np.int64)
    scale = np.array([width, height, width, height], dtype=np.float64)
    for index, target in enumerate(structure_targets(record.anatomy).values()):
        if isinstance(target, Path):
            masks[index] = resized_mask(target, size)
            kinds[index] = MASK
        elif target is not None:
            boxes[index] = np.clip(np.asarray(target, dtype=np.float64) / scale, 0.0, 1.0)
            kinds[index] = BOX
    return AnatomySample(key=sample_key(dataset_name, record), split=record.split, patient=record.patient_key,
                         pixels=resize_grey(image.pixels, size), masks=masks, boxes=boxes, kinds=kinds)


def structure_targets(anatomy: LungBoxes | LungMasks | NamedBoxes) -> dict[str, object]:
    """Each structure's expert mask path, box (image pixels) or None, in STRUCTURES order."""
    if isinstance(anatomy, NamedBoxes):
        return {name: tuple(anatomy.regions[REGION_INDEX[region]]) for name, region in REGION_OF_STRUCTURE.items()}
    return {"right lung": anatomy.right_lung, "left lung": anatomy.left_lung, "heart": anatomy.heart}


def resized_mask(path: Path, size: int) -> np.ndarray:
    """A mask file (non-zero = inside) as a float32 0/1 (size, size) array."""
    with Image.open(path) as mask:
        binary = (np.asarray(mask.convert("L")) > 0).astype(np.float32)
    return (resize_grey(binary, size) >= 0.5).astype(np.float32)


def negative_samples(positives: Sequence[AnatomySample], count: int, seed: int) -> list[AnatomySample]:
    """`count` images without a chest: synthetic fields and turned or upside-down radiographs."""
    generator = np.random.default_rng(seed)
    size = positives[0].pixels.shape[0]
    makers = (_blank, _noise, _smooth_field, _gradient, _turned)
    negatives = []
    for index in range(count):
        maker = makers[index % len(makers)]
        pixels = maker(generator, size, positives)
        negatives.append(AnatomySample(
            key=f"negative/{index}", split="train", patient=f"negative/{index}",
            pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
            masks=np.zeros((len(STRUCTURES), size, size), dtype=np.float32),
            boxes=np.zeros((len(STRUCTURES), 4), dtype=np.float32),
            kinds=np.full(len(STRUCTURES), MASK, dtype=np.int64)))
    return negatives


def _blank(generator: np.random.Generator, size: int, _: Sequence[AnatomySample]) -> np.ndarray:
    return np.full((size, size), generator.uniform(0.0, 1.0))


def _noise(generator: np.random.Generator, size: int, _: Sequence[AnatomySample]) -> np.ndarray:
    return generator.uniform(0.0, 1.0) + generator.normal(0.0, generator.uniform(0.05, 0.3), (size, size))


def _smooth_field(generator: np.random.Generator, size: int, _: Sequence[AnatomySample]) -> np.ndarray:
    coarse = generator.uniform(0.0, 1.0, (int(generator.integers(2, 9)),) * 2).astype(np.float32)
    return resize_grey(coarse, size)


def _gradient(generator: np.random.Generator, size: int, _: Sequence[AnatomySample]) -> np.ndarray:
    angle = generator.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    return 0.5 + 0.5 * np.sin(np.cos(angle) * x * 3 + np.sin(angle) * y * 3)


def _turned(generator: np.random.Generator, size: int, positives: Sequence[AnatomySample]) -> np.ndarray:
    pixels = positives[int(generator.integers(len(positives)))].pixels
    turn = int(generator.integers(4))
    return np.flipud(pixels) if turn == 0 else np.rot90(pixels, turn)

