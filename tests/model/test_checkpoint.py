"""Checkpoints: round trip, fingerprints, and refusal of corrupt or inconsistent files."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BackboneRecord,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from model.config import ModelConfig
from model.errors import CheckpointError
from model.network import CheXtriev

BACKBONE = BackboneRecord(name="efficientnet_lite0", weights_id="IMAGENET", fingerprint="ab" * 32)


def small_network(seed: int = 0) -> CheXtriev:
    torch.manual_seed(seed)
    config = ModelConfig.for_variant("V6", input_dim=32, width=64, num_heads=4, head_dim=16, ff_dim=128)
    return CheXtriev(config).eval()


def test_round_trip_gives_identical_outputs_and_fingerprint(tmp_path):
    network = small_network()
    saved = save_checkpoint(tmp_path / "ckpt", network, BACKBONE, metadata={"epochs": 3})
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    features = torch.randn(2, 18, 32)
    with torch.no_grad():
        assert torch.equal(network(features).embedding, loaded(features).embedding)
    assert info.fingerprint == saved.fingerprint
    assert info.model_config == network.config
    assert info.metadata == {"epochs": 3}
    assert not loaded.training


def test_fingerprint_changes_with_weights_and_backbone(tmp_path):
    first = save_checkpoint(tmp_path / "a", small_network(0), BACKBONE)
    other_weights = save_checkpoint(tmp_path / "b", small_network(1), BACKBONE)
    other_backbone = save_checkpoint(tmp_path / "c", small_network(0),
                                     BackboneRecord("efficientnet_lite0", "IMAGENET", "cd" * 32))
    same_again = save_checkpoint(tmp_path / "d", small_network(0), BACKBONE)
    assert len({first.fingerprint, other_weights.fingerprint, other_backbone.fingerprint}) == 3
    assert same_again.fingerprint == first.fingerprint


def test_flipped_weight_byte_is_refused(tmp_path):
    save_checkpoint(tmp_path, small_network(), BACKBONE)
    weights = tmp_path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: SHA-256"):
        load_checkpoint(tmp_path)


def test_missing_file_is_named(tmp_path):
    save_checkpoint(tmp_path, small_network(), BACKBONE)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_checkpoint_info(tmp_path)


def test_edited_config_breaks_the_fingerprint(tmp_path):
    save_checkpoint(tmp_path, small_network(), BACKBONE)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["model"]["retrieval"] = "last"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="fingerprint does not match"):
        read_checkpoint_info(tmp_path)


def test_unreadable_config_is_refused(tmp_path):
    save_checkpoint(tmp_path, small_network(), BACKBONE)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint config"):
        read_checkpoint_info(tmp_path)


def test_changed_preprocessing_is_refused(tmp_path):
    save_checkpoint(tmp_path, small_network(), BACKBONE)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["preprocessing"]["crop_size"] = 256
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="trained with preprocessing"):
        read_checkpoint_info(tmp_path)


def test_a_saved_centre_is_subtracted_and_a_checkpoint_without_one_loads_uncentred(tmp_path):
    network = small_network()
    features = torch.randn(3, 18, 32)
    with torch.no_grad():
        uncentred = network(features)
        network.centre.copy_(network.uncentred_states(features).mean(dim=0))
        centred = network(features)
    assert not torch.allclose(centred.embedding, uncentred.embedding)
    # Centred on these three images, their embeddings point away from each other: their sum is about 0.
    assert float(centred.embedding.sum(dim=0).norm()) < float(uncentred.embedding.sum(dim=0).norm()) / 10
    save_checkpoint(tmp_path / "centred", network, BACKBONE)
    loaded, _ = load_checkpoint(tmp_path / "centred")
    with torch.no_grad():
        assert torch.equal(loaded(features).embedding, centred.embedding)
    # A checkpoint written before centring existed has no centre: it loads with zeros, as it was trained.
    class BeforeCentring:
        config = network.config

        def state_dict(self):
            return {name: value for name, value in small_network().state_dict().items() if name != "centre"}

    save_checkpoint(tmp_path / "old", BeforeCentring(), BACKBONE)
    old, _ = load_checkpoint(tmp_path / "old")
    assert torch.equal(old.centre, torch.zeros_like(old.centre))
    with torch.no_grad():
        assert torch.equal(old(features).embedding, uncentred.embedding)
