"""How a region box becomes backbone crops, and their features one region feature: the crop scheme.

- "single" (the paper's): one crop of the whole box, resized to CROP_SIZE, its backbone feature
  mean-pooled over positions.
- "tiles": four overlapping tiles, each 3/4 of the box's width and height, centred on the cells of a
  2 x 2 grid over the box (so they reach 1/8 of its side beyond it, over the region's border), each
  seen at 4/3 the resolution of the single crop; the backbone feature is max-pooled over positions,
  then over the four tiles. A small finding, such as a nodule, is averaged away in one mean over a
  whole lung zone; in a maximum over finer views it stands out (README, "Same-zone retrieval", has
  the measurements, and those of tiles kept inside the box, which found less).

A scheme is part of the preprocessing (model.preprocessing.preprocessing_config), so feature caches
and checkpoints record it, and a checkpoint's service cuts the crops its network was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from model.errors import ChextrievError

if TYPE_CHECKING:
    from torch import Tensor

POOLINGS = ("mean", "max")


@dataclass(frozen=True)
class RegionCrops:
    """A crop scheme: `grid` x `grid` tiles per box, each `tile_fraction` of its side, and the
    `pooling` of the backbone's feature map over positions and of the tiles' features."""

    name: str
    grid: int
    tile_fraction: float
    pooling: str

    @property
    def tiles(self) -> int:
        """Crops per region box."""
        return self.grid * self.grid

    def tile_boxes(self, boxes: Tensor) -> Tensor:
        """The (..., R * tiles, 4) tile boxes of (..., R, 4) boxes [x1, y1, x2, y2]; region r's tiles
        are rows r * tiles to (r + 1) * tiles - 1, row-major over the grid."""
        if self.grid == 1:
            return boxes
        import torch  # here, not above: the command line's help and the settings import this module torch-free

        start, size = boxes[..., :2], boxes[..., 2:] - boxes[..., :2]
        # The cells' centres as fractions of the box, (tiles, 2) as (x, y), row-major.
        steps = (torch.arange(self.grid, dtype=boxes.dtype, device=boxes.device) + 0.5) / self.grid
        rows, cols = torch.meshgrid(steps, steps, indexing="ij")
        centres = start[..., None, :] + torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1) * size[..., None, :]
        half = (size * self.tile_fraction / 2)[..., None, :]
        return torch.cat([centres - half, centres + half], dim=-1).flatten(-3, -2)  # (..., R * tiles, 4)

    def pool(self, features: Tensor) -> Tensor:
        """(..., R, F) region features of the (..., R * tiles, F) features of `tile_boxes`' crops."""
        if self.grid == 1:
            return features
        tiled = features.unflatten(-2, (-1, self.tiles))
        return tiled.amax(-2) if self.pooling == "max" else tiled.mean(-2)

    def config(self) -> dict:
        """The scheme as recorded in preprocessing settings."""
        return {"name": self.name, "grid": self.grid, "tile_fraction": self.tile_fraction, "pooling": self.pooling}


SINGLE = RegionCrops("single", grid=1, tile_fraction=1.0, pooling="mean")
TILES = RegionCrops("tiles", grid=2, tile_fraction=0.75, pooling="max")
REGION_CROPS: dict[str, RegionCrops] = {scheme.name: scheme for scheme in (SINGLE, TILES)}


def region_crops_named(name: str) -> RegionCrops:
    """The crop scheme `name` ("single" or "tiles"), or ChextrievError."""
    if name not in REGION_CROPS:
        raise ChextrievError(f"unknown region crops {name!r}; expected one of {', '.join(REGION_CROPS)}")
    return REGION_CROPS[name]


def region_crops_recorded(preprocessing: dict) -> RegionCrops:
    """The crop scheme that preprocessing settings record; settings written before schemes existed
    record none and mean the single crop. ChextrievError for a scheme this version does not know."""
    recorded = preprocessing.get("region_crops") if isinstance(preprocessing, dict) else preprocessing
    if recorded is None:
        return SINGLE
    scheme = REGION_CROPS.get(recorded.get("name")) if isinstance(recorded, dict) else None
    if scheme is None or scheme.config() != recorded:
        raise ChextrievError(f"region crops {recorded} are not a scheme of this version "
                             f"({', '.join(REGION_CROPS)})")
    return scheme
