"""Model checkpoints: safetensors weights plus a JSON config whose fingerprint index snapshots record.

A checkpoint is a directory with two files:
- `model.safetensors`: the trainable network's state dict (the frozen backbone is not stored; it is
  named and fingerprinted instead, so a checkpoint stays a few MB to a hundred MB);
- `config.json`: format, the `ModelConfig`, the backbone (name, weights id, fingerprint), the
  preprocessing settings, the SHA-256 of the weights file, free-form training metadata, and the
  model fingerprint = SHA-256 over the weights hash, model config, backbone fingerprint and
  preprocessing. Two checkpoints with the same fingerprint produce the same embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from model.backbones import Backbone
from model.config import ModelConfig
from model.errors import CheckpointError, ChextrievError
from model.fileio import atomic_write_bytes, sha256_file
from model.network import CENTRE_KEY, CheXtriev
from model.preprocessing import preprocessing_config
from model.region_crops import RegionCrops, region_crops_recorded

CHECKPOINT_FORMAT = "chextriev-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class BackboneRecord:
    """Which frozen backbone produced the region features the network was trained on."""

    name: str
    weights_id: str
    fingerprint: str

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneRecord:
        """The record of a built backbone."""
        return cls(backbone.name, backbone.weights_id, backbone.fingerprint)


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything `config.json` says about a checkpoint."""

    model_config: ModelConfig
    backbone: BackboneRecord
    preprocessing: dict
    weights_sha256: str
    fingerprint: str
    metadata: dict = field(default_factory=dict)

    @property
    def region_crops(self) -> RegionCrops:
        """The crop scheme the network's region features were computed with."""
        return region_crops_recorded(self.preprocessing)


def model_fingerprint(weights_sha256: str, model_config: ModelConfig, backbone: BackboneRecord,
                      preprocessing: dict) -> str:
    """SHA-256 over everything that determines an embedding."""
    canonical = json.dumps(
        {"weights": weights_sha256, "model": model_config.to_dict(),
         "backbone": backbone.fingerprint, "preprocessing": preprocessing},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_checkpoint(directory: str | os.PathLike, network: CheXtriev, backbone: BackboneRecord,
                    metadata: dict | None = None, preprocessing: dict | None = None) -> CheckpointInfo:
    """Write `network` as a checkpoint into `directory` (weights first, then the config, each atomically);
    `preprocessing` is that of its training features (default: preprocessing_config())."""
    directory = Path(directory)
    state = {name: tensor.detach().to("cpu", torch.float32).contiguous()
             for name, tensor in network.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, save(state))
    weights_sha256 = sha256_file(directory / WEIGHTS_FILE)
    preprocessing = preprocessing_config() if preprocessing is None else preprocessing
    info = CheckpointInfo(
        model_config=network.config,
        backbone=backbone,
        preprocessing=preprocessing,
        weights_sha256=weights_sha256,
        fingerprint=model_fingerprint(weights_sha256, network.config, backbone, preprocessing),
        metadata=dict(metadata or {}),
    )
    document = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": info.fingerprint,
        "weights_sha256": weights_sha256,
        "model": info.model_config.to_dict(),
        "backbone": vars(backbone),
        "preprocessing": preprocessing,
        "metadata": info.metadata,
    }
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(document, indent=2).encode())
    return info


def read_checkpoint_info(directory: str | os.PathLike) -> CheckpointInfo:
    """Parse and check `config.json` and the weights hash, without building the network."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"checkpoint {directory}: {required.name} is missing")
    try:
        document = json.loads(config_path.read_text())
        if document.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{config_path}: format {document.get('format')!r}, "
                                  f"expected {CHECKPOINT_FORMAT!r}")
        info = CheckpointInfo(
            model_config=ModelConfig.from_dict(document["model"]),
            backbone=BackboneRecord(**document["backbone"]),
            preprocessing=document["preprocessing"],
            weights_sha256=document["weights_sha256"],
            fingerprint=document["fingerprint"],
            metadata=document.get("metadata", {}),
        )
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{config_path}: unreadable checkpoint config ({error})") from error
    actual = sha256_file(weights_path)
    if actual != info.weights_sha256:
        raise CheckpointError(f"{weights_path}: SHA-256 {actual[:12]}... does not match the "
                              f"config's {info.weights_sha256[:12]}... (corrupt or replaced weights)")
    try:
        supported = preprocessing_config(info.region_crops)
    except ChextrievError as error:
        raise CheckpointError(f"{config_path}: {error}") from None
    if info.preprocessing != supported:
        raise CheckpointError(f"{config_path}: trained with preprocessing {info.preprocessing}, "
                              f"this version uses {supported}")
    expected = model_fingerprint(info.weights_sha256, info.model_config, info.backbone, info.preprocessing)
    if expected != info.fingerprint:
        raise CheckpointError(f"{config_path}: fingerprint does not match its contents")
    return info


def load_checkpoint(directory: str | os.PathLike) -> tuple[CheXtriev, CheckpointInfo]:
    """Build the network from a verified checkpoint, on the CPU in eval mode."""
    info = read_checkpoint_info(directory)
    weights_path = Path(directory) / WEIGHTS_FILE
    network = CheXtriev(info.model_config)
    try:
        state = load_file(weights_path)
        state.setdefault(CENTRE_KEY, network.centre.clone())  # saved before centring existed: no centre
        network.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise CheckpointError(f"{weights_path}: weights do not fit the configured network ({error})") from error
    return network.eval(), info
