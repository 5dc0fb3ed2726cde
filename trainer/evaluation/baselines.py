"""Parameter-free retrieval baselines of the paper: the global CNN, and the region mean (the mean of the
raw region features, which the paper calls V0; this project keeps "V0" for the trained zero-layer variant)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def global_cnn_embeddings(whole_image_features: torch.Tensor) -> torch.Tensor:
    """Global CNN baseline: the pooled feature of the whole image, L2-normalised. (B, F) -> (B, F)."""
    return F.normalize(whole_image_features.float(), dim=-1)


def region_mean_embeddings(region_features: torch.Tensor) -> torch.Tensor:
    """Region-mean baseline: mean over the 18 region features, L2-normalised. (B, 18, F) -> (B, F)."""
    return F.normalize(region_features.float().mean(dim=1), dim=-1)
