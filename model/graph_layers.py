"""Blocks of the CheXtriev graph transformer: edge-aware attention, feed-forward, gated residual, and
one pre-LayerNorm layer made of them. Shapes: b batch, n regions, h heads, d per-head width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn


class EdgeAwareAttention(nn.Module):
    """Multi-head attention whose keys and values both receive the projected edge vector e_ij:
    score_ij = q_i . (k_j + e_ij) / sqrt(d);  out_i = sum_j a_ij (v_j + e_ij)."""

    def __init__(self, width: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.scale = head_dim ** -0.5
        self.to_q = nn.Linear(width, inner)
        self.to_kv = nn.Linear(width, 2 * inner)
        self.edges_to_kv = nn.Linear(width, inner)
        self.to_out = nn.Linear(inner, width)
        self.dropout = nn.Dropout(dropout)

    def project_edges(self, edges: Tensor) -> Tensor:
        """Raw edge vectors (n|1, n|1, width) -> per-head (h, n|1, n|1, d). Batch-independent, so it
        runs once per forward; a shared edge vector (1, 1, width) is projected once, not n*n times."""
        return rearrange(self.edges_to_kv(edges), "i j (h d) -> h i j d", h=self.num_heads)

    def attention_weights(self, nodes: Tensor, edges: Tensor) -> Tensor:
        """Softmax attention (b, h, n, n) of nodes (b, n, width) over each other, given projected
        edges (h, n|1, n|1, d); before dropout."""
        n = nodes.shape[1]
        q, k = self._heads(self.to_q(nodes)), self._keys_or_values(nodes, 0)
        scores = (einsum(q, k, "b h i d, b h j d -> b h i j")
                  + einsum(q, edges.expand(-1, n, n, -1), "b h i d, h i j d -> b h i j")) * self.scale
        return scores.softmax(dim=-1)

    def forward(self, nodes: Tensor, edges: Tensor) -> Tensor:
        """nodes (b, n, width), projected edges (h, n|1, n|1, d) -> (b, n, width)."""
        n = nodes.shape[1]
        attention = self.dropout(self.attention_weights(nodes, edges))
        out = (einsum(attention, self._keys_or_values(nodes, 1), "b h i j, b h j d -> b h i d")
               + einsum(attention, edges.expand(-1, n, n, -1), "b h i j, h i j d -> b h i d"))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def _keys_or_values(self, nodes: Tensor, which: int) -> Tensor:
        """Per-head keys (which=0) or values (which=1): one half of the fused key-value projection."""
        return self._heads(F.linear(nodes, self.to_kv.weight.chunk(2)[which], self.to_kv.bias.chunk(2)[which]))

    def _heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b n (h d) -> b h n d", h=self.num_heads)


class FeedForward(nn.Module):
    """width -> hidden -> GELU -> width, applied to every node alone."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GatedResidual(nn.Module):
    """Mix a block output x with an anchor through one scalar gate per node:
    g = sigmoid(w . [x; anchor; x - anchor]);  out = g * x + (1 - g) * anchor."""

    def __init__(self, width: int):
        super().__init__()
        self.gate = nn.Linear(3 * width, 1, bias=False)

    def forward(self, x: Tensor, anchor: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(torch.cat((x, anchor, x - anchor), dim=-1)))
        return g * x + (1 - g) * anchor


class GraphTransformerLayer(nn.Module):
    """Pre-LayerNorm attention then feed-forward, each followed by a gated residual whose anchor is
    the layer-0 input h0 ("global", V6) or the block's own input ("local", V4)."""

    def __init__(self, width: int, num_heads: int, head_dim: int, ff_dim: int, dropout: float, global_residual: bool):
        super().__init__()
        self.global_residual = global_residual
        self.attention_norm = nn.LayerNorm(width)
        self.attention = EdgeAwareAttention(width, num_heads, head_dim, dropout)
        self.attention_gate = GatedResidual(width)
        self.feed_forward_norm = nn.LayerNorm(width)
        self.feed_forward = FeedForward(width, ff_dim, dropout)
        self.feed_forward_gate = GatedResidual(width)

    def forward(self, h: Tensor, h0: Tensor, edges: Tensor, location: Tensor | None) -> Tensor:
        """h, h0 (b, n, width); raw edges (n|1, n|1, width); location (n, width) added to the
        normalised attention input, or None. Every node attends to every node."""
        x = self.attention_norm(h)
        if location is not None:
            x = x + location
        x = self.attention(x, self.attention.project_edges(edges))
        h = self.attention_gate(x, h0 if self.global_residual else h)
        x = self.feed_forward(self.feed_forward_norm(h))
        return self.feed_forward_gate(x, h0 if self.global_residual else h)
