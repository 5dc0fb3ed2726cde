"""The CheXtriev network: per-region projection, graph transformer over the 18 regions (variants
V1-V6, none for V0), image classifier and the L2-normalised retrieval embedding."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from model.config import ModelConfig, anatomical_adjacency
from model.graph_layers import GraphTransformerLayer


class NetworkOutput(NamedTuple):
    """What one forward pass returns."""

    logits: Tensor  # (b, num_classes) image-level finding logits
    node_logits: Tensor | None  # (b, n, num_classes): the image classifier on each region (node_supervision)
    node_states: Tensor  # (b, n, width) node states of the last layer (h0 for V0)
    embedding: Tensor  # (b, width) L2-normalised retrieval embedding
    node_embeddings: Tensor  # (b, n, width) each region's retrieval state, L2-normalised per region


class CheXtriev(nn.Module):
    """Region features (b, n, input_dim) from a frozen backbone -> NetworkOutput."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        width, n = config.width, config.num_regions
        self.projection = nn.Sequential(nn.Linear(config.input_dim, width), nn.ReLU(), nn.Linear(width, width))
        # Shared by all layers; N(0, 1) like the nn.Embedding of the research code.
        self.location = nn.Parameter(torch.randn(n, width)) if config.location_embedding else None
        edges = _initial_edges(config)
        if config.train_edges:
            self.edges = None if edges is None else nn.Parameter(edges)
        else:  # the research code's bug, kept for comparisons: a fixed random buffer, saved with the weights
            self.register_buffer("edges", edges)
        # V1: 1 where two regions are adjacent, 0 where not; picks each pair's edge vector. Derived from
        # the catalogue, so not saved with the weights.
        adjacency = torch.tensor(anatomical_adjacency(), dtype=torch.long) if config.edge_mode == "binary" else None
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.layers = nn.ModuleList(
            GraphTransformerLayer(width, config.num_heads, config.head_dim, config.ff_dim, config.dropout,
                                  global_residual=config.residual == "global")
            for _ in range(config.num_layers))
        self.classifier = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.num_classes))

    def forward(self, region_features: Tensor) -> NetworkOutput:
        """Run the network; the features are cast to the network's dtype (cached features may be fp16)."""
        self._check_input(region_features)
        h0 = self.projection(region_features.to(self.projection[0].weight.dtype))
        edges = self.edges if self.adjacency is None else self.edges[self.adjacency]
        h, level_sum = h0, h0
        for layer in self.layers:
            h = layer(h, h0, edges, self.location)
            level_sum = level_sum + h
        retrieved = level_sum if self.config.retrieval == "multilevel" else h
        embedding = F.normalize(reduce(retrieved, "b n d -> b d", "mean"), dim=-1)
        logits = self.classifier(reduce(h, "b n d -> b d", "mean"))
        node_logits = self.classifier(h) if self.config.node_supervision else None
        return NetworkOutput(logits, node_logits, h, embedding, F.normalize(retrieved, dim=-1))

    def _check_input(self, region_features: Tensor) -> None:
        expected = f"(batch, {self.config.num_regions}, {self.config.input_dim})"
        if not isinstance(region_features, Tensor) or not region_features.is_floating_point():
            got = getattr(region_features, "dtype", type(region_features).__name__)
            raise ValueError(f"region_features must be a floating-point tensor of shape {expected}, got {got}")
        if region_features.ndim != 3 or tuple(region_features.shape[1:]) != (self.config.num_regions,
                                                                             self.config.input_dim):
            raise ValueError(f"region_features must have shape {expected}, got {tuple(region_features.shape)}")


def _initial_edges(config: ModelConfig) -> Tensor | None:
    """Raw edge vectors: (n, n, width) per ordered pair, (2, width) for V1's non-adjacent and adjacent
    pairs, (1, 1, width) when one vector is shared, None without a graph. Initialised as the research
    code did: per-pair tensor Xavier-uniform, the others N(0, 1) (its nn.Embedding)."""
    if config.edge_mode == "none":
        return None
    if config.edge_mode == "per_pair":
        return nn.init.xavier_uniform_(torch.empty(config.num_regions, config.num_regions, config.width))
    if config.edge_mode == "binary":
        return torch.randn(2, config.width)
    return torch.randn(1, 1, config.width)
