"""Small clustered galleries of unit vectors for the index store tests."""

from __future__ import annotations

from index_store.gallery import GalleryData
from index_store.synthetic import cluster_centres, clustered_unit_vectors

DIMENSION = 32
REGIONS = 4
FINGERPRINT = "sha256:model-under-test"


def make_gallery(count: int = 600, *, seed: int = 0, prefix: str = "case", per_group: int = 3) -> GalleryData:
    """A gallery of clustered unit vectors with ids `{prefix}-{i}`, group keys, occlusion embeddings."""
    vectors = clustered_unit_vectors(cluster_centres(12, DIMENSION, seed), count, 0.8, seed + 1)
    occlusion = clustered_unit_vectors(
        cluster_centres(12, DIMENSION, seed + 2), count * REGIONS, 0.8, seed + 3
    )
    return GalleryData(
        embeddings=vectors,
        case_ids=tuple(f"{prefix}-{i}" for i in range(count)),
        group_keys=tuple(f"patient-{i // per_group}" for i in range(count)),
        occlusion_embeddings=occlusion.reshape(count, REGIONS, DIMENSION),
    )
