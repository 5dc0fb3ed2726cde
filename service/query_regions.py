"""Where a query's 18 region boxes come from: the client's boxes when it sends them, else the anatomy model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.anatomy import Box, validate_regions
from model.anatomy_model import AnatomyModel, AnatomyPrediction
from model.imaging import DecodedImage

RegionsSource = Literal["client", "model"]


@dataclass(frozen=True)
class QueryRegions:
    """The validated float32 (18, 4) boxes of a query, who placed them, and the model's prediction
    when the model did."""

    boxes: np.ndarray
    source: RegionsSource
    prediction: AnatomyPrediction | None = None


def client_regions(boxes: Mapping[str, Box], image: DecodedImage) -> QueryRegions:
    """The client's parsed boxes, checked against the image (RegionError naming each bad region)."""
    return QueryRegions(validate_regions(boxes, image.width, image.height), "client")


def model_regions(model: AnatomyModel, image: DecodedImage) -> QueryRegions:
    """The regions the anatomy model derives from the image (NoChestFoundError when it finds no chest)."""
    prediction = model.predict(image.pixels)
    return QueryRegions(prediction.regions, "model", prediction)
