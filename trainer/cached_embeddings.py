"""Retrieval embeddings computed from a feature cache: CheXtriev (a trained network) and the
paper's two parameter-free baselines, the global CNN and the region mean (REFERENCE_NOTES
"Baselines": the paper calls the region mean V0; here "V0" names only the trained zero-layer
variant, `chextriev train --variant V0`); and the patient group of each cache row, for same-patient
exclusion."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from model.checkpoint import CheckpointInfo, load_checkpoint
from model.devices import select_device
from model.errors import CheckpointError
from model.network import CheXtriev
from model.patient_keys import patient_group
from trainer.evaluation.baselines import global_cnn_embeddings, region_mean_embeddings
from trainer.feature_cache import FeatureCache

CHEXTRIEV = "CheXtriev"
GLOBAL_CNN = "global CNN"
REGION_MEAN = "region mean"
BASELINES: tuple[str, ...] = (GLOBAL_CNN, REGION_MEAN)
BATCH_SIZE = 256


def load_network_for(cache: FeatureCache, checkpoint_dir: str | os.PathLike) -> tuple[CheXtriev, CheckpointInfo]:
    """Load a verified checkpoint and check that it was trained on the cache's backbone features and crops."""
    network, info = load_checkpoint(checkpoint_dir)
    # Crop schemes first: their backbones pool differently, so their fingerprints differ too.
    if info.region_crops != cache.region_crops:
        raise CheckpointError(f"checkpoint {checkpoint_dir} was trained on {info.region_crops.name!r} region "
                              f"crops, the feature cache holds {cache.region_crops.name!r} ones")
    if info.backbone.fingerprint != cache.backbone.fingerprint:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} was trained on {info.backbone.name} features "
            f"({info.backbone.fingerprint[:12]}...), the feature cache holds {cache.backbone.name} "
            f"features ({cache.backbone.fingerprint[:12]}...)")
    return network, info


def patient_groups(cache: FeatureCache, rows: np.ndarray) -> list[str]:
    """Each row's group for same-patient exclusion: its patient, or the image alone when none is known."""
    return [patient_group(cache.patient_ids[row], str(cache.case_ids[row])) for row in rows]


def baseline_embeddings(cache: FeatureCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Global CNN and region-mean embeddings (float32, L2-normalised) of the cache rows `rows`."""
    return {
        GLOBAL_CNN: _in_batches(cache.whole_image_features, rows, global_cnn_embeddings, torch.device("cpu")),
        REGION_MEAN: _in_batches(cache.region_features, rows, region_mean_embeddings, torch.device("cpu")),
    }


@torch.inference_mode()
def network_embeddings(network: CheXtriev, cache: FeatureCache, rows: np.ndarray, *,
                       device: str = "auto") -> np.ndarray:
    """CheXtriev retrieval embeddings (float32, L2-normalised) of the cache rows `rows`."""
    target = select_device(device)
    network = network.to(target).eval()
    return _in_batches(cache.region_features, rows, lambda features: network(features).embedding, target)


@torch.inference_mode()
def network_node_embeddings(network: CheXtriev, cache: FeatureCache, rows: np.ndarray, *,
                            device: str = "auto") -> np.ndarray:
    """CheXtriev's per-region retrieval embeddings (float32 (N, 18, D), each region L2-normalised) of the
    cache rows `rows`: what region-level search ranks by."""
    target = select_device(device)
    network = network.to(target).eval()
    return _in_batches(cache.region_features, rows, lambda features: network(features).node_embeddings, target)


def _in_batches(features: np.ndarray, rows: np.ndarray, embed: Callable[[torch.Tensor], torch.Tensor],
                device: torch.device) -> np.ndarray:
    """embed() of the float32 features of `rows` (not empty), BATCH_SIZE rows at a time, as one array."""
    chunks = [embed(torch.from_numpy(np.asarray(features[rows[start:start + BATCH_SIZE]], dtype=np.float32))
                    .to(device)).float().cpu().numpy()
              for start in range(0, len(rows), BATCH_SIZE)]
    return np.concatenate(chunks)
