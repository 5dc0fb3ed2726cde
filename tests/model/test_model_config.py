"""ModelConfig: the paper's variants, validation, JSON round trip, and the V1 anatomical adjacency."""

from __future__ import annotations

import dataclasses
import json

import pytest

from model.catalogue import NUM_FINDINGS, NUM_REGIONS, REGION_INDEX
from model.config import ModelConfig, anatomical_adjacency

# Paper Table 1, written out independently of model.config:
# (num_layers, edge_mode, location_embedding, residual, node_supervision)
TABLE_1 = {
    "V0": (0, "none", False, "global", False),
    "V1": (2, "binary", False, "global", False),
    "V2": (2, "shared", False, "global", False),
    "V3": (2, "shared", True, "global", False),
    "V4": (2, "per_pair", True, "local", True),
    "V5": (2, "per_pair", False, "global", False),
    "V6": (2, "per_pair", True, "global", False),
}


@pytest.mark.parametrize("variant", sorted(TABLE_1))
def test_for_variant_follows_table_1(variant):
    config = ModelConfig.for_variant(variant, 2048)
    assert (config.num_layers, config.edge_mode, config.location_embedding, config.residual,
            config.node_supervision) == TABLE_1[variant]
    assert config.variant == variant and config.input_dim == 2048
    assert config.train_edges and config.retrieval == "multilevel" and config.dropout == 0.0


def test_v6_defaults_are_the_paper_sizes():
    config = ModelConfig.for_variant("V6", 1280)
    assert (config.width, config.num_heads, config.head_dim, config.ff_dim) == (1024, 8, 64, 4096)
    assert (config.num_classes, config.num_regions) == (NUM_FINDINGS, NUM_REGIONS)
    # Attention works in 8 x 64 = 512 channels inside the 1024-wide model: allowed on purpose.
    assert config.num_heads * config.head_dim != config.width


@pytest.mark.parametrize("variant", sorted(TABLE_1))
def test_json_round_trip_is_exact(variant):
    config = ModelConfig.for_variant(variant, 1280, width=96, num_heads=3, head_dim=16, ff_dim=128,
                                     retrieval="last", dropout=0.1)
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.to_dict() == config.to_dict()


def test_integer_dropout_is_stored_as_float():
    config = ModelConfig.for_variant("V6", 2048, dropout=0)
    assert isinstance(config.dropout, float)
    assert json.dumps(config.to_dict()) == json.dumps(ModelConfig.from_dict(config.to_dict()).to_dict())


def test_from_dict_refuses_unknown_and_missing_keys():
    data = ModelConfig.for_variant("V6", 2048).to_dict()
    with pytest.raises(ValueError, match="unknown model configuration keys: heads"):
        ModelConfig.from_dict({**data, "heads": 8})
    del data["edge_mode"], data["input_dim"]
    with pytest.raises(ValueError, match="missing model configuration keys: edge_mode, input_dim"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="must be a mapping"):
        ModelConfig.from_dict([("variant", "V6")])


def test_for_variant_refuses_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown variant 'V7'"):
        ModelConfig.for_variant("V7", 2048)
    with pytest.raises(ValueError, match="unknown model configuration keys: depth"):
        ModelConfig.for_variant("V6", 2048, depth=3)
    with pytest.raises(ValueError, match="as arguments"):
        ModelConfig.for_variant("V6", 2048, variant="V5")


@pytest.mark.parametrize(("variant", "overrides", "message"), [
    ("V6", {"edge_mode": "shared"}, "edge_mode='shared' contradicts V6"),
    ("V4", {"residual": "global"}, "residual='global' contradicts V4"),
    ("V3", {"location_embedding": False}, "location_embedding=False contradicts V3"),
    ("V6", {"num_layers": 0}, "V6 needs at least one graph-transformer layer, got num_layers=0"),
    ("V0", {"num_layers": 2}, "V0 needs no graph-transformer layers, got num_layers=2"),
    ("V0", {"train_edges": False}, "no edges to freeze"),
    ("V1", {"num_regions": 12}, "binary adjacency is defined over the 18"),
    ("V6", {"width": 0}, "width must be a positive integer"),
    ("V6", {"num_heads": "8"}, "num_heads must be a positive integer"),
    ("V6", {"head_dim": True}, "head_dim must be a positive integer"),
    ("V6", {"num_layers": -1}, "num_layers must be a non-negative integer"),
    ("V6", {"train_edges": 1}, "train_edges must be true or false"),
    ("V6", {"retrieval": "sum"}, "retrieval must be one of multilevel, last"),
    ("V6", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
])
def test_inconsistent_settings_raise(variant, overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.for_variant(variant, 2048, **overrides)


def test_variant_name_is_checked_when_built_directly():
    data = {**ModelConfig.for_variant("V6", 2048).to_dict(), "variant": "v6"}
    with pytest.raises(ValueError, match="variant must be one of V0, V1"):
        ModelConfig.from_dict(data)


def test_config_is_immutable():
    config = ModelConfig.for_variant("V6", 2048)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 8  # type: ignore[misc]


def _adjacent(a: str, b: str) -> bool:
    return anatomical_adjacency()[REGION_INDEX[a]][REGION_INDEX[b]]


def test_adjacency_is_symmetric_with_self_loops_and_not_complete():
    adjacency = anatomical_adjacency()
    assert len(adjacency) == NUM_REGIONS and all(len(row) == NUM_REGIONS for row in adjacency)
    assert all(adjacency[i][i] for i in range(NUM_REGIONS))
    assert all(adjacency[i][j] == adjacency[j][i] for i in range(NUM_REGIONS) for j in range(NUM_REGIONS))
    assert 0.3 < sum(map(sum, adjacency)) / NUM_REGIONS ** 2 < 0.7


@pytest.mark.parametrize(("a", "b"), [
    ("right lung", "right costophrenic angle"),          # a lung and its sub-zones
    ("left apical zone", "left lower lung zone"),        # sub-zones of the same lung
    ("left hilar structures", "left costophrenic angle"),
    ("right mid lung zone", "left mid lung zone"),       # mirror images
    ("trachea", "cardiac silhouette"),                   # mediastinal structures together
    ("upper mediastinum", "mediastinum"),
    ("cardiac silhouette", "right hilar structures"),    # mediastinum to the hila
    ("trachea", "left hilar structures"),
    ("cardiac silhouette", "left lower lung zone"),      # shared borders
    ("trachea", "right apical zone"),
])
def test_anatomically_related_regions_are_adjacent(a, b):
    assert _adjacent(a, b)


@pytest.mark.parametrize(("a", "b"), [
    ("right apical zone", "left costophrenic angle"),
    ("right lower lung zone", "left upper lung zone"),
    ("trachea", "right costophrenic angle"),
    ("cardiac silhouette", "left apical zone"),
])
def test_distant_regions_are_not_adjacent(a, b):
    assert not _adjacent(a, b)
