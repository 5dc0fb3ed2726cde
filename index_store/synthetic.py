"""Synthetic clustered unit vectors (a mixture of Gaussians projected on the sphere) for tests and benchmarks."""

from __future__ import annotations

import numpy as np

_CHUNK_ROWS = 65536


def cluster_centres(count: int, dimension: int, seed: int) -> np.ndarray:
    """`count` random unit vectors (float32 (count, dimension)): the centres of the mixture."""
    centres = np.random.default_rng(seed).standard_normal((count, dimension), dtype=np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def clustered_unit_vectors(centres: np.ndarray, count: int, spread: float, seed: int) -> np.ndarray:
    """`count` unit vectors, each a random centre plus isotropic noise of norm ~`spread`, renormalised.

    Same-cluster vectors then have cosine similarity about 1 / (1 + spread**2); different clusters about 0.
    Generated in chunks so that a million 1024-d vectors never need more than their own 4 GB.
    """
    rng = np.random.default_rng(seed)
    dimension = centres.shape[1]
    vectors = np.empty((count, dimension), dtype=np.float32)
    scale = np.float32(spread / np.sqrt(dimension))
    for start in range(0, count, _CHUNK_ROWS):
        chunk = vectors[start : start + _CHUNK_ROWS]
        rng.standard_normal(chunk.shape, dtype=np.float32, out=chunk)
        chunk *= scale
        chunk += centres[rng.integers(0, len(centres), len(chunk))]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors
