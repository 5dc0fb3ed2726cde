"""The one place that describes a CheXtriev network: its settings, the paper's variants V0-V6, and
the fixed anatomical adjacency used by V1.

Decisions worth knowing
- ``width`` and ``num_heads * head_dim`` may differ: attention works in ``num_heads * head_dim``
  channels and its output projection maps back to ``width``. The paper's own V6 is such a case
  (8 heads x 64 = 512 inside a 1024-wide model), and the reported 22.1M parameters only add up that way.
- ``variant`` is not just a label: the Table 1 settings (graph or not, edge mode, location embedding,
  residual, node supervision) must match it, so a checkpoint called "V6" is a V6. Sizes, the
  retrieval embedding, ``train_edges`` and dropout may be overridden freely.
- V0 is the network with zero graph-transformer layers: its node states are the projected region
  features h0, its embedding and classifier read their mean. Having no gates, it keeps
  residual="global" only as an inert value.
- ``edge_mode``: "none" (no graph, V0); "binary" (two learned edge vectors, one for adjacent and one
  for non-adjacent pairs, chosen per ordered pair by the co-occurrence adjacency
  ``anatomical_adjacency()``; attention is not masked, so the graph is fully connected, V1);
  "shared" (one learned edge vector for every ordered pair, fully connected, V2/V3); "per_pair"
  (one learned vector per ordered region pair, fully connected, V4-V6). Every graph variant adds its
  edge vectors to both keys and values of the attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from model.catalogue import NUM_FINDINGS, NUM_REGIONS, REGION_INDEX

EDGE_MODES: tuple[str, ...] = ("none", "binary", "shared", "per_pair")
RESIDUALS: tuple[str, ...] = ("global", "local")
RETRIEVALS: tuple[str, ...] = ("multilevel", "last")

# Paper Table 1: the settings that define each variant. V0 has no graph transformer at all.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "V0": {"edge_mode": "none", "location_embedding": False, "residual": "global", "node_supervision": False},
    "V1": {"edge_mode": "binary", "location_embedding": False, "residual": "global", "node_supervision": False},
    "V2": {"edge_mode": "shared", "location_embedding": False, "residual": "global", "node_supervision": False},
    "V3": {"edge_mode": "shared", "location_embedding": True, "residual": "global", "node_supervision": False},
    "V4": {"edge_mode": "per_pair", "location_embedding": True, "residual": "local", "node_supervision": True},
    "V5": {"edge_mode": "per_pair", "location_embedding": False, "residual": "global", "node_supervision": False},
    "V6": {"edge_mode": "per_pair", "location_embedding": True, "residual": "global", "node_supervision": False},
}
DEFAULT_NUM_LAYERS = 2

_LUNG_PARTS = ("lung", "apical zone", "upper lung zone", "mid lung zone", "lower lung zone",
               "hilar structures", "costophrenic angle")
_MEDIASTINAL = ("mediastinum", "upper mediastinum", "cardiac silhouette", "trachea")


def _anatomical_neighbours() -> tuple[tuple[str, str], ...]:
    """Undirected region pairs that touch or are read together, built from these rules:
    1. all regions of the same lung (the lung, its zones, hilum and costophrenic angle);
    2. each region with its mirror image in the other lung (side-to-side comparison);
    3. the mediastinal structures with each other;
    4. the mediastinal structures with both hila;
    5. structures sharing a border across the midline: the mediastinum with both lungs, the upper
       mediastinum and the trachea with both apical and upper lung zones, the cardiac silhouette with
       both mid and lower lung zones.
    """
    pairs: list[tuple[str, str]] = []
    for side in ("right", "left"):
        pairs += combinations([f"{side} {part}" for part in _LUNG_PARTS], 2)
    pairs += [(f"right {part}", f"left {part}") for part in _LUNG_PARTS]
    pairs += combinations(_MEDIASTINAL, 2)
    pairs += [(structure, f"{side} hilar structures") for structure in _MEDIASTINAL for side in ("right", "left")]
    borders = {
        "mediastinum": ("lung",),
        "upper mediastinum": ("apical zone", "upper lung zone"),
        "trachea": ("apical zone", "upper lung zone"),
        "cardiac silhouette": ("mid lung zone", "lower lung zone"),
    }
    pairs += [(structure, f"{side} {part}") for structure, parts in borders.items()
              for part in parts for side in ("right", "left")]
    return tuple(pairs)


ANATOMICAL_NEIGHBOURS: tuple[tuple[str, str], ...] = _anatomical_neighbours()


def anatomical_adjacency() -> tuple[tuple[bool, ...], ...]:
    """The V1 adjacency over the 18 regions in catalogue order: symmetric, with self-loops."""
    adjacent = [[i == j for j in range(NUM_REGIONS)] for i in range(NUM_REGIONS)]
    for a, b in ANATOMICAL_NEIGHBOURS:
        adjacent[REGION_INDEX[a]][REGION_INDEX[b]] = adjacent[REGION_INDEX[b]][REGION_INDEX[a]] = True
    return tuple(tuple(row) for row in adjacent)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Settings of a CheXtriev network; validated on construction (ValueError on any inconsistency)."""

    variant: str
    input_dim: int
    width: int = 1024
    num_layers: int = DEFAULT_NUM_LAYERS
    num_heads: int = 8
    head_dim: int = 64
    ff_dim: int = 4096
    num_classes: int = NUM_FINDINGS
    num_regions: int = NUM_REGIONS
    edge_mode: str
    location_embedding: bool
    residual: str
    node_supervision: bool
    train_edges: bool = True  # False: edges are a fixed random buffer, as in the research code (a bug)
    retrieval: str = "multilevel"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid model configuration: " + "; ".join(problems))
        object.__setattr__(self, "dropout", float(self.dropout))

    @classmethod
    def for_variant(cls, name: str, input_dim: int, **overrides: Any) -> ModelConfig:
        """The paper's Table 1 variant `name` ("V0".."V6") on backbone features of `input_dim`."""
        if name not in VARIANT_SETTINGS:
            raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANT_SETTINGS)}")
        if "variant" in overrides or "input_dim" in overrides:
            raise ValueError("give the variant and input_dim as arguments, not as overrides")
        settings = {**VARIANT_SETTINGS[name], "num_layers": 0 if name == "V0" else DEFAULT_NUM_LAYERS}
        return cls.from_dict({"variant": name, "input_dim": input_dim, **settings, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of every field; `from_dict` turns it back into an equal config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Config from `to_dict` output; unknown or missing keys raise ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a model configuration must be a mapping, not {type(data).__name__}")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown model configuration keys: {', '.join(map(str, unknown))}")
        missing = sorted(name for name, field in fields.items()
                         if name not in data and field.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing model configuration keys: {', '.join(missing)}")
        return cls(**data)

    def _problems(self) -> list[str]:
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}"
                    for name in ("input_dim", "width", "num_heads", "head_dim", "ff_dim", "num_classes", "num_regions")
                    if not _is_int(getattr(self, name)) or getattr(self, name) < 1]
        if not _is_int(self.num_layers) or self.num_layers < 0:
            problems.append(f"num_layers must be a non-negative integer, got {self.num_layers!r}")
        problems += [f"{name} must be true or false, got {getattr(self, name)!r}"
                     for name in ("location_embedding", "node_supervision", "train_edges")
                     if not isinstance(getattr(self, name), bool)]
        for name, allowed in (("edge_mode", EDGE_MODES), ("residual", RESIDUALS), ("retrieval", RETRIEVALS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.variant not in VARIANT_SETTINGS:
            problems.append(f"variant must be one of {', '.join(VARIANT_SETTINGS)}, got {self.variant!r}")
            return problems
        problems += [f"{name}={getattr(self, name)!r} contradicts {self.variant} (which has {name}={expected!r})"
                     for name, expected in VARIANT_SETTINGS[self.variant].items() if getattr(self, name) != expected]
        has_graph = self.variant != "V0"
        if _is_int(self.num_layers) and (self.num_layers >= 1) != has_graph:
            needed = "at least one graph-transformer layer" if has_graph else "no graph-transformer layers"
            problems.append(f"{self.variant} needs {needed}, got num_layers={self.num_layers}")
        if not has_graph and not self.train_edges:
            problems.append("train_edges=False has no edges to freeze in V0")
        if self.edge_mode == "binary" and self.num_regions != NUM_REGIONS:
            problems.append(f"the binary adjacency is defined over the {NUM_REGIONS} catalogue regions, "
                            f"got num_regions={self.num_regions}")
        return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
