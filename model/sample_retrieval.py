"""Embed the bundled sample gallery: decode, derive the 18 regions from the lung boxes, run the backbone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model.anatomy import validate_regions
from model.feature_extractor import FeatureExtractor
from model.imaging import decode_image
from model.region_derivation import derive_regions
from model.sample_gallery import SampleCase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryFeatures:
    """Backbone features of a gallery: per image the 18 region features and the whole-image feature."""

    case_ids: list[str]
    region_features: torch.Tensor
    whole_image_features: torch.Tensor


def sample_case_input(case: SampleCase) -> tuple[np.ndarray, np.ndarray]:
    """Decoded grey pixels and validated (18, 4) boxes derived from the case's expert lung boxes."""
    image = decode_image(case.image_path)
    boxes = derive_regions(case.right_lung, case.left_lung, image.width, image.height)
    return image.pixels, validate_regions(boxes, image.width, image.height)


def extract_gallery_features(extractor: FeatureExtractor, cases: Sequence[SampleCase],
                             batch_size: int = 8) -> GalleryFeatures:
    """Region and whole-image features of every case, in batches, with a progress bar."""
    regions, whole = [], []
    with tqdm(total=len(cases), desc="features", unit="image") as progress:
        for start in range(0, len(cases), batch_size):
            inputs = [sample_case_input(case) for case in cases[start:start + batch_size]]
            pixels = [image for image, _ in inputs]
            boxes = np.stack([box for _, box in inputs])
            regions.append(extractor.region_features(pixels, boxes).cpu())
            whole.append(extractor.whole_image_features(pixels).cpu())
            progress.update(len(inputs))
    logger.info("gallery features extracted", extra={"images": len(cases),
                                                     "feature_dim": extractor.feature_dim})
    return GalleryFeatures([case.case_id for case in cases], torch.cat(regions), torch.cat(whole))
