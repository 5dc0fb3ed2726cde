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


def region_centres(regions: int, clusters: int, dimension: int, seed: int) -> np.ndarray:
    """Each region's own mixture centres: float32 (regions, clusters, dimension) unit vectors."""
    return np.stack([cluster_centres(clusters, dimension, seed + region) for region in range(regions)])


def region_gallery(centres: np.ndarray, count: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` synthetic cases with per-region vectors tied to their image vector as in the network.

    Each case draws, for every region independently, a vector of that region's mixture (`centres`
    (R, C, D), see clustered_unit_vectors): nodes float32 (count, R, D), unit rows. Its image vector is
    the normalised mean of its region vectors (the network normalises the mean of its unnormalised
    region states), float32 (count, D).
    """
    regions, _, dimension = centres.shape
    nodes = np.empty((count, regions, dimension), dtype=np.float32)
    for region in range(regions):
        nodes[:, region] = clustered_unit_vectors(centres[region], count, spread, seed + region)
    image = np.empty((count, dimension), dtype=np.float32)
    for start in range(0, count, _CHUNK_ROWS):
        mean = nodes[start : start + _CHUNK_ROWS].mean(axis=1)
        image[start : start + _CHUNK_ROWS] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return image, nodes
