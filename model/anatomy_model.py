"""The anatomy model: a radiograph in, the right lung, left lung and heart found, the 18 regions derived.

The model is an ONNX file (trained and exported by `chextriev anatomy train`, see trainer.anatomy)
run by ONNX Runtime on the CPU. Its metadata says the input size, which structures it was trained to
find and on which images. The package ships one trained on openly licensed radiographs only
(model/anatomy_weights, with its model card); `AnatomyModel.load()` with no path loads it.

Prediction: the grey image is resized to the model's square input, each structure's probability
map is thresholded at 0.5 and its largest connected part kept; the parts' boxes, scaled back to the
image, give the 18 regions through `model.region_derivation.derive_regions`. An image in which the
model finds no plausible pair of lungs (a lateral view, another body part, a blank image) raises
`NoChestFoundError` naming what is missing, rather than giving regions that mean nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from model.anatomy import Box, validate_regions
from model.errors import ChextrievError, RegionError
from model.mask_components import largest_component
from model.region_derivation import box_from_mask, derive_regions

# The network's output channels, in order; the heart's box becomes the cardiac silhouette region.
STRUCTURES = ("right lung", "left lung", "heart")
LUNGS = STRUCTURES[:2]
SHIPPED_MODEL = Path(__file__).with_name("anatomy_weights") / "chextriev-anatomy-open.onnx"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Metadata keys of the ONNX file (written by trainer.anatomy.export).
META_INPUT_SIZE, META_TRAINED, META_TRAINING_IMAGES, META_DESCRIPTION = (
    "input_size", "trained_structures", "training_images", "description")

PROBABILITY_THRESHOLD = 0.5
# A lung covers 6-25 % of a frontal radiograph (median 13 % over the expert boxes' masks of the
# shared sets); a part under MIN_LUNG_AREA of the image is not a lung.
MIN_LUNG_AREA = 0.02
# The mean probability inside a found lung: 0.80 at least, median 0.88, on 103 held-out radiographs
# of cxr-lungbox and JSRT (shipped model). Parts found in photographs, turned, upside-down or cropped
# radiographs reach 0.51-0.80, so the confidence alone does not tell them apart: what refuses them is a
# lung missing, too small or misplaced. The floor only drops the vaguest parts.
MIN_LUNG_CONFIDENCE = 0.75
MIN_HEART_CONFIDENCE = 0.6
OUTLINE_POINTS = 64


class NoChestFoundError(ChextrievError):
    """The anatomy model found no plausible frontal chest in the image."""


class AnatomyModelError(ChextrievError):
    """An anatomy model file that cannot be used: unreadable, not ONNX, or without its metadata."""


@dataclass(frozen=True)
class FoundStructure:
    """One structure the model found: its box and outline in image pixels, its share of the image, the
    mean probability inside it, and its mask at the model's input size."""

    name: str
    box: Box
    outline: list[tuple[float, float]]
    area_fraction: float
    confidence: float
    mask: np.ndarray


@dataclass(frozen=True)
class AnatomyPrediction:
    """The structures found and the 18 region boxes derived from them ((18, 4) float32, catalogue order)."""

    structures: dict[str, FoundStructure]
    regions: np.ndarray


class AnatomyModel:
    """An exported anatomy model, ready to predict on CPU (thread-safe: ONNX Runtime sessions are)."""

    def __init__(self, path: str | os.PathLike):
        from model.onnx_backbone import cpu_session

        self.path = Path(path)
        try:
            model_bytes = self.path.read_bytes()
            self.session = cpu_session(model_bytes)
        except Exception as error:  # noqa: BLE001 - OSError, or ONNX Runtime's errors, which share no base
            raise AnatomyModelError(f"cannot load the anatomy model {self.path.name}: "
                                    f"{type(error).__name__}: {error}") from None
        self.fingerprint = hashlib.sha256(model_bytes).hexdigest()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [key for key in (META_INPUT_SIZE, META_TRAINED) if key not in self.metadata]
        if missing:
            raise AnatomyModelError(f"the anatomy model {self.path.name} lacks the metadata {', '.join(missing)}: "
                                    "export it with `chextriev anatomy train`")
        self.input_size = int(self.metadata[META_INPUT_SIZE])
        self.trained_structures = tuple(name for name in self.metadata[META_TRAINED].split(",") if name)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> AnatomyModel:
        """The model at `path`, or the shipped one."""
        return cls(SHIPPED_MODEL if path is None else path)

    @cached_property
    def training_images(self) -> frozenset[str]:
        """Identifiers (dataset/image stem) of the images the model was trained or validated on."""
        return frozenset(name for name in self.metadata.get(META_TRAINING_IMAGES, "").split(",") if name)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 (len(STRUCTURES), S, S) probability maps of a grey (H, W) image in [0, 1]."""
        batch = resize_grey(pixels, self.input_size)[None, None]
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0][0]
        return 1.0 / (1.0 + np.exp(-logits))

    def predict(self, pixels: np.ndarray) -> AnatomyPrediction:
        """The structures and the 18 regions of a grey (H, W) image; NoChestFoundError when no
        plausible lungs are found."""
        height, width = np.shape(pixels)
        maps = self.probabilities(pixels)
        found = {}
        for name, probabilities in zip(STRUCTURES, maps, strict=True):
            if name in self.trained_structures:
                structure = _largest_part(name, probabilities, width, height)
                if structure is not None:
                    found[name] = structure
        _check_lungs(found)
        heart = found.get("heart")
        if heart is not None and (heart.confidence < MIN_HEART_CONFIDENCE or not _between_lungs(heart, found)):
            del found["heart"]  # the derivation's own heart rule is then used
        try:
            regions = derive_regions(found["right lung"].box, found["left lung"].box, width, height,
                                     heart=found["heart"].box if "heart" in found else None)
        except RegionError as error:
            placement = "; ".join(f"{problem.region}: {problem.problem}" for problem in error.problems)
            raise NoChestFoundError("the lungs the anatomy model found are not placed as in a frontal chest "
                                    f"radiograph ({placement})") from None
        return AnatomyPrediction(found, validate_regions(regions, width, height))


def resize_grey(pixels: np.ndarray, size: int) -> np.ndarray:
    """A grey float image resized to the model's (size, size) input, antialiased (PIL's bilinear
    filter widens with the reduction); training resizes its images and masks with it too."""
    resized = Image.fromarray(np.asarray(pixels, dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _largest_part(name: str, probabilities: np.ndarray, width: int, height: int) -> FoundStructure | None:
    """The largest connected part above the threshold, in image pixels, or None when there is none."""
    part = largest_component(probabilities > PROBABILITY_THRESHOLD)
    if not part.any():
        return None
    size = probabilities.shape[0]
    scale_x, scale_y = width / size, height / size
    x1, y1, x2, y2 = box_from_mask(part)
    box = (x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y)
    return FoundStructure(name=name, box=box, outline=_outline(part, scale_x, scale_y),
                          area_fraction=float(part.mean()), confidence=float(probabilities[part].mean()),
                          mask=part)


def _outline(part: np.ndarray, scale_x: float, scale_y: float) -> list[tuple[float, float]]:
    """A closed polygon around a mask, in image pixels: the left edge of each row going down, then the
    right edge going up (exact for shapes that each row crosses once, as lungs and the heart do), at
    most OUTLINE_POINTS points."""
    rows = np.flatnonzero(part.any(axis=1))
    step = max(1, int(np.ceil(2 * len(rows) / OUTLINE_POINTS)))
    rows = np.unique(np.append(rows[::step], rows[-1]))
    left = [float(np.argmax(part[row])) for row in rows]
    right = [float(len(part[row]) - np.argmax(part[row][::-1])) for row in rows]
    ys = [float(row) for row in rows]
    points = list(zip(left, ys)) + [(right[-1], ys[-1] + 1)] + list(zip(right[::-1], ys[::-1]))
    return [(round(x * scale_x, 1), round(y * scale_y, 1)) for x, y in points]


def _between_lungs(heart: FoundStructure, found: dict[str, FoundStructure]) -> bool:
    """Whether the heart's centre lies between the lungs' centres, as the derivation requires: a heart
    found elsewhere is dropped, and the lungs alone place the cardiac silhouette."""
    centres = [(box[0] + box[2]) / 2 for box in (found["right lung"].box, heart.box, found["left lung"].box)]
    return centres[0] < centres[1] < centres[2]


def _check_lungs(found: dict[str, FoundStructure]) -> None:
    """NoChestFoundError naming each lung missing, too small or found with too little confidence."""
    problems = []
    for name in LUNGS:
        structure = found.get(name)
        if structure is None:
            problems.append(f"no {name} found")
        elif structure.area_fraction < MIN_LUNG_AREA:
            problems.append(f"the {name} found covers {structure.area_fraction:.1%} of the image "
                            f"(at least {MIN_LUNG_AREA:.0%} expected)")
        elif structure.confidence < MIN_LUNG_CONFIDENCE:
            problems.append(f"the {name} was found with a confidence of only {structure.confidence:.2f} "
                            f"(at least {MIN_LUNG_CONFIDENCE} expected)")
    if problems:
        raise NoChestFoundError("the image does not look like a frontal chest radiograph: "
                                + "; ".join(problems))
