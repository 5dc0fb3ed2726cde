"""Small untrained CheXtriev networks for tests that need an embedding, not a trained one."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.network import CheXtriev


def small_v6(input_dim: int, seed: int = 0) -> CheXtriev:
    """A seeded V6 network of width 64 (4 heads of 16, feed-forward 128) over `input_dim`-d region features."""
    torch.manual_seed(seed)
    return CheXtriev(ModelConfig.for_variant("V6", input_dim=input_dim, width=64, num_heads=4, head_dim=16,
                                             ff_dim=128))
