"""The Chest ImaGenome fixture tree (real scene-graph files, small MIMIC-CXR-JPG images) and its reader."""

from __future__ import annotations

from pathlib import Path

from trainer.datasets import Dataset, read_imagenome

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "imagenome"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
# The fixture images (see the split file): A and C share a patient; B is a lateral view with no
# scene graph; D lacks the trachea box; F is a left-lateral view; A and G say "no" after "yes".
A = "ae14a734-e0499fa8-e3e29150-e55f1889-fba3c2fe"
C = "16fd2b36-ee95c51d-e2af8fd4-5fad92d1-97ca6f97"
D = "d670a37a-ebf3d71f-32d8cde8-9d1c9222-2faa1090"
E = "37ce3299-abe6d49c-4c6b9a25-56fecb2c-9e56670f"
F = "ca71758a-919daa20-0aa6b9a1-bb4f8268-b7d2c35d"
G = "71fc219f-cfa24a08-1269321c-f256484e-17da1df5"


def read(root: Path = FIXTURES, **options) -> Dataset:
    """The fixture tree (or a copy of it at `root`) read as Chest ImaGenome: A, C (train), E (val), G (test)."""
    return read_imagenome(root / "scene_graph", root, root / SPLIT_CSV, **options)
