"""Offline training of a CheXtriev network on cached backbone features: the paper's defaults, and presets
(PRESETS: "paper", and "small-data" for hundreds to thousands of images, counted in optimiser steps).

The backbone is frozen and takes no part in training: its region features were computed once by
trainer.feature_cache, so training learns only the projection, the graph transformer and the classifier,
and the checkpoint records (by name and fingerprint) the backbone that the features came from.

Defaults (paper, REFERENCE_NOTES "Optimisation"): Adam lr 1e-4 without weight decay, ReduceLROnPlateau
(factor 0.1) on the validation loss, gradient clipping at norm 0.5, batches of 16 with gradients
accumulated over 16, at most 30 epochs, early stopping on the validation loss after 4 evaluations
without improvement; the weights saved are those of the epoch with the best validation macro ROC-AUC
(over the findings that have positives and negatives in the validation split; when none has, the
epoch with the lowest validation loss, and the result says so). No positive-class weighting: the paper
has none.

Decisions worth knowing
- Effective batch: 16 x 16 = 256 images per optimiser step on one device, the paper's 256
  (16 x accumulate 8 x 2 GPUs). Accumulating is exact, not an approximation: no layer of the network
  mixes the images of a batch (no BatchNorm), so the accumulated gradient is that of one batch of 256
  up to float rounding (an epoch's last step takes what is left). On N devices the effective batch
  is 16 x accumulate x N: pass 8 on two.
- For the same reason a step's 256 images go through the network as one batch (merge_micro_batches,
  on by default; a network with BatchNorm would still be fed micro-batches): the module takes each
  micro-batch's mean loss and divides by accumulate, as Lightning's accumulation does (also for a last
  step with fewer images), so the gradient is the accumulated one up to float rounding, without 16
  small forward passes. The cached features are held in memory (lightning_module.CachedRegionFeatures).
- The paper does not give the scheduler's patience. ReduceLROnPlateau lowers the rate at the
  (lr_patience + 1)-th evaluation in a row without improvement and early stopping ends the run at the
  patience-th, so the schedule can only act when lr_patience < patience - 1. The default lr_patience 2
  (early stopping's patience is 4) lowers the rate after 3 evaluations without improvement and gives
  the lower rate one more evaluation before stopping; `train` warns when a configuration leaves the
  schedule no chance.
- Node supervision (V4): the node logits are trained against the cache's region labels (Chest
  ImaGenome: which findings each region shows, as in the paper). A cache without them (a manifest
  dataset, or a cache made before they were kept; `chextriev features` run again adds them) has image
  labels only: each region is then trained against its image's labels broadcast to all 18 regions,
  a weaker target (it tells a region what its image shows, not what the region shows), and a warning
  says so. The targets used are in TrainingResult.node_supervision_targets and the checkpoint metadata.
- Seeded with lightning.seed_everything and deterministic algorithms where PyTorch has them
  (a warning, not an error, for those it lacks): two CPU runs with the same seed write identical weights.
- DDP (also several nodes) through Lightning, launched by Lightning itself or by torchrun without any
  change; each rank sees 1/world_size of the training batches per epoch (so the effective batch is
  batch_size x accumulate_grad_batches x world_size, as in the paper's 16 x 8 x 2 GPUs). Only rank 0
  writes the checkpoint. Everything Lightning writes stays under `out_dir`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.errors import ChextrievError
from model.fileio import fsync_directory
from model.library_logging import route_library_logs_to_root
from model.network import CheXtriev
from model.preprocessing import preprocessing_config
from trainer.feature_cache import FeatureCache

if TYPE_CHECKING:  # Lightning and scipy load when a run trains, not with TrainingConfig (the demo's warm start)
    import lightning as L

    from trainer.lightning_module import CachedFeatureDataModule, ValidationRecord, ValidationRecorder

logger = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoint"
SCHEDULES: tuple[str, ...] = ("plateau", "cosine")
# What the node logits of node supervision (V4) are trained against.
REGION_NODE_TARGETS = "region labels: the findings each region shows, from the feature cache"
IMAGE_NODE_TARGETS = "image labels broadcast to all 18 regions (the feature cache holds no region labels)"


class TrainingError(ChextrievError):
    """Training cannot start: the cache, the model configuration or the output directory does not fit."""


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings and the training objective; the defaults are the paper's (see the module
    docstring), PRESETS names them and the small-data setting."""

    lr: float = 1e-4
    batch_size: int = 16
    accumulate_grad_batches: int = 16
    max_epochs: int = 30
    patience: int = 4
    gradient_clip: float = 0.5
    lr_factor: float = 0.1
    lr_patience: int = 2
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    merge_micro_batches: bool = True
    # Counted in optimiser steps: validate every this many (None: once per epoch, the paper's).
    validation_interval: int | None = None
    # The effective batch is cut to at most this share of the training images (1: at most all of them).
    max_batch_fraction: float = 1.0
    schedule: str = "plateau"  # "plateau": ReduceLROnPlateau per validation; "cosine": warm-up + cosine in steps
    warmup_fraction: float = 0.0  # cosine: the share of the run's steps that warm the rate up
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; 0: Adam, the paper's
    node_loss_weight: float = 0.0  # node BCE against region labels for any variant (V4 always has weight 1)
    contrastive_weight: float = 0.0  # supervised contrastive loss on the node embeddings, per region
    contrastive_temperature: float = 0.1
    # Subtract the training images' mean retrieval state before normalising (model.network's centre).
    centre_embeddings: bool = False

    def __post_init__(self) -> None:
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}"
                    for name in ("batch_size", "accumulate_grad_batches", "max_epochs", "num_nodes")
                    if not _is_int(getattr(self, name)) or getattr(self, name) < 1]
        problems += [f"{name} must be a non-negative integer, got {getattr(self, name)!r}"
                     for name in ("patience", "lr_patience", "seed")
                     if not _is_int(getattr(self, name)) or getattr(self, name) < 0]
        problems += [f"{name} must be a positive number, got {getattr(self, name)!r}"
                     for name in ("lr", "gradient_clip", "contrastive_temperature")
                     if not _is_number(getattr(self, name)) or not getattr(self, name) > 0]
        problems += [f"{name} must be a number of 0 or more, got {getattr(self, name)!r}"
                     for name in ("weight_decay", "node_loss_weight", "contrastive_weight")
                     if not _is_number(getattr(self, name)) or getattr(self, name) < 0]
        if not _is_number(self.lr_factor) or not 0 < self.lr_factor < 1:
            problems.append(f"lr_factor must be a number in (0, 1), got {self.lr_factor!r}")
        if not _is_number(self.max_batch_fraction) or not 0 < self.max_batch_fraction <= 1:
            problems.append(f"max_batch_fraction must be a number in (0, 1], got {self.max_batch_fraction!r}")
        if not _is_number(self.warmup_fraction) or not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be a number in [0, 1), got {self.warmup_fraction!r}")
        if self.validation_interval is not None and (not _is_int(self.validation_interval)
                                                     or self.validation_interval < 1):
            problems.append(f"validation_interval must be a positive integer or None, got {self.validation_interval!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        elif self.schedule == "plateau" and self.validation_interval is not None:
            problems.append("the plateau schedule steps once per epoch: use it without validation_interval, "
                            "or use the cosine schedule")
        problems += [f"{name} must be True or False, got {getattr(self, name)!r}"
                     for name in ("merge_micro_batches", "centre_embeddings")
                     if not isinstance(getattr(self, name), bool)]
        if not (self.devices == "auto" or _is_int(self.devices) and self.devices >= 1):
            problems.append(f"devices must be 'auto' or a positive integer, got {self.devices!r}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainingConfig:
        """The named preset (PRESETS) with `overrides` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown training preset {name!r}; expected one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of every setting."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingRows:
    """The cache rows to train on and to validate on (default: the cache's train and val splits)."""

    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class RegionTargets:
    """Node labels from outside the cache (a regional-findings table): (N, 18, C) labels per cache row and
    (N, 18) whether each is known, and what they are, for the checkpoint."""

    labels: np.ndarray
    known: np.ndarray
    description: str


@dataclass(frozen=True)
class TrainingResult:
    """What a training run produced; `best_val_auc` is None when the model was selected on the
    validation loss (`selected_on`), because no finding had both positives and negatives in val;
    `node_supervision_targets` says what the node logits were trained against (REGION_NODE_TARGETS,
    IMAGE_NODE_TARGETS or a table's; None without node supervision). `history` has one record per
    validation; `best` is the one whose weights were kept."""

    checkpoint_dir: Path
    best_val_auc: float | None
    best: ValidationRecord
    selected_on: str
    epochs_run: int
    steps_run: int
    effective_batch: int
    seconds_per_epoch: float
    history: list[ValidationRecord]
    parameters: int
    world_size: int
    global_rank: int
    node_supervision_targets: str | None

    @property
    def best_epoch(self) -> int:
        """The epoch of the validation whose weights were kept."""
        return self.best.epoch


def train(cache: FeatureCache, model_config: ModelConfig, training: TrainingConfig,
          out_dir: str | os.PathLike, *, rows: TrainingRows | None = None,
          region_targets: RegionTargets | None = None) -> TrainingResult:
    """Train `model_config` on the cache's train split (or `rows.train`), validate on its val split (or
    `rows.val`), and write the selected weights with model.checkpoint.save_checkpoint into
    `out_dir`/checkpoint (rank 0 only). `region_targets` replace the cache's node labels.

    Raises TrainingError, before anything is written, when the configuration does not fit the cache,
    a split is empty, or `out_dir` already holds a checkpoint; and, without writing a checkpoint,
    when no epoch reaches a finite validation score.
    """
    import lightning as L

    from trainer.evaluation.classification_metrics import evaluable_classes
    from trainer.lightning_module import CachedFeatureDataModule

    if logging.getLogger().hasHandlers():  # the application configured logging before Lightning loaded
        route_library_logs_to_root()

    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIRNAME
    train_rows, val_rows = _split_rows(cache) if rows is None else _given_rows(rows)
    _check_fits(cache, model_config, checkpoint_dir)
    auc_classes = evaluable_classes(cache.labels[val_rows])
    select_on = "val_auc" if auc_classes else "val_loss"
    if not auc_classes:
        logger.warning("no finding has both positives and negatives in the validation split: "
                       "selecting the epoch with the lowest validation loss", extra={"val_images": len(val_rows)})
    if training.schedule == "plateau" and training.lr_patience >= training.patience - 1:
        logger.warning("the learning rate cannot drop before early stopping ends the run: lr_patience must be "
                       "below patience - 1", extra={"lr_patience": training.lr_patience, "patience": training.patience})
    node_labels, node_known, node_targets = _node_supervision(cache, model_config, training, region_targets)

    L.seed_everything(training.seed, workers=True, verbose=False)
    network = CheXtriev(model_config)
    merged = merges_micro_batches(network, training)
    batch_size, accumulate = effective_batch(training, len(train_rows))
    data = CachedFeatureDataModule(cache.region_features, cache.labels, node_labels, node_known, train_rows,
                                   val_rows, batch_size * (accumulate if merged else 1))
    trainer, recorder = _fit(network, data, model_config, training, out_dir, select_on, merged,
                             (batch_size, accumulate))
    if recorder.best is None:
        raise TrainingError("no epoch reached a finite validation score (training diverged); "
                            "try a lower learning rate")
    history, best = recorder.history, recorder.best
    epochs_run = history[-1].epoch + 1
    result = TrainingResult(
        checkpoint_dir=checkpoint_dir,
        best_val_auc=best.val_auc if select_on == "val_auc" else None,
        best=best,
        selected_on=select_on,
        epochs_run=epochs_run,
        steps_run=int(trainer.global_step),
        effective_batch=batch_size * accumulate * trainer.world_size,
        seconds_per_epoch=float(sum(record.seconds for record in history) / epochs_run),
        history=history,
        parameters=sum(parameter.numel() for parameter in network.parameters()),
        world_size=trainer.world_size,
        global_rank=trainer.global_rank,
        node_supervision_targets=node_targets,
    )
    if trainer.is_global_zero:
        network.load_state_dict(recorder.best_state)
        if training.centre_embeddings:
            centre_embeddings(network, cache, train_rows)
        metadata = {
            "dataset": cache.dataset_name,
            "label_names": list(cache.label_names),
            "training": training.to_dict(),
            "best_epoch": best.epoch,
            "best_step": best.step,
            "selected_on": select_on,
            "val_auc": result.best_val_auc,
            "val_auc_labels": [cache.label_names[c] for c in auc_classes],
            "epochs_run": result.epochs_run,
            "steps_run": result.steps_run,
            "effective_batch": result.effective_batch,
            "seconds_per_epoch": result.seconds_per_epoch,
            "seed": training.seed,
            "world_size": trainer.world_size,
            "train_batches_per_rank": int(trainer.num_training_batches),
            "micro_batches_merged": merged,
            "train_images": len(train_rows),
            "val_images": len(val_rows),
            "backbone_trained": False,
            "embedding_centre": (f"the mean retrieval state of the {len(train_rows)} training images"
                                 if training.centre_embeddings else None),
            "history": [vars(record) for record in history],
        }
        if node_targets is not None:
            metadata["node_supervision_targets"] = node_targets
        _write_checkpoint_dir(checkpoint_dir, network, cache, metadata)
        logger.info("checkpoint written", extra={"directory": str(checkpoint_dir), "global_rank": trainer.global_rank})
        logger.info("training finished", extra={
            "best_epoch": best.epoch, "best_step": best.step, "selected_on": select_on,
            "val_auc": result.best_val_auc, "epochs_run": result.epochs_run, "steps_run": result.steps_run,
            "effective_batch": result.effective_batch, "seconds_per_epoch": result.seconds_per_epoch,
            "parameters": result.parameters})
    trainer.strategy.barrier("checkpoint written")
    return result


@torch.no_grad()
def centre_embeddings(network: CheXtriev, cache: FeatureCache, rows: np.ndarray) -> None:
    """Set the network's centre to the mean uncentred retrieval state of the cache rows `rows` (on the CPU)."""
    network = network.to("cpu").eval()
    total = torch.zeros_like(network.centre)
    for start in range(0, len(rows), 256):
        features = torch.from_numpy(np.asarray(cache.region_features[rows[start:start + 256]], dtype=np.float32))
        total += network.uncentred_states(features).sum(dim=0)
    network.centre.copy_(total / len(rows))


def effective_batch(training: TrainingConfig, train_images: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches accumulated) of one optimiser step on one device: the configured
    ones, cut when their product exceeds max_batch_fraction of the training images (to at least one image),
    so that a small training set still gives several steps an epoch."""
    cap = max(1, int(training.max_batch_fraction * train_images))
    batch_size, accumulate = training.batch_size, training.accumulate_grad_batches
    if batch_size * accumulate <= cap:
        return batch_size, accumulate
    batch_size = min(batch_size, cap)
    return batch_size, max(1, cap // batch_size)


def _node_supervision(cache: FeatureCache, model_config: ModelConfig, training: TrainingConfig,
                      region_targets: RegionTargets | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The node labels (N, 18, C) and which are known (N, 18): `region_targets`, else the cache's region
    labels, else its image labels broadcast to every region; and, when a loss uses them (V4, a node or a
    contrastive weight), what they are (also logged, as a warning for the broadcast)."""
    shape = (cache.count, cache.region_features.shape[1], len(cache.label_names))
    if region_targets is not None:
        if region_targets.labels.shape != shape or region_targets.known.shape != shape[:2]:
            raise TrainingError(f"region targets of shape {region_targets.labels.shape} do not fit the cache {shape}")
        node_labels, known, targets = region_targets.labels, region_targets.known, region_targets.description
    elif cache.region_labels is not None:
        node_labels, known, targets = cache.region_labels, np.ones(shape[:2], dtype=bool), REGION_NODE_TARGETS
    else:
        node_labels, known = np.broadcast_to(cache.labels[:, None, :], shape), np.ones(shape[:2], dtype=bool)
        targets = IMAGE_NODE_TARGETS
    uses_nodes = model_config.node_supervision or training.node_loss_weight > 0 or training.contrastive_weight > 0
    if not uses_nodes:
        return node_labels, known, None
    logger.log(logging.WARNING if targets == IMAGE_NODE_TARGETS else logging.INFO,
               f"node supervision targets: {targets}")
    return node_labels, known, targets


def merges_micro_batches(network: CheXtriev, training: TrainingConfig) -> bool:
    """Whether each optimiser step's batch_size x accumulate_grad_batches images go through the network
    as one batch: when the configuration asks for it and no layer mixes the images of a batch (BatchNorm)."""
    return training.merge_micro_batches and not any(isinstance(module, nn.modules.batchnorm._BatchNorm)
                                                    for module in network.modules())


def _fit(network: CheXtriev, data: CachedFeatureDataModule, model_config: ModelConfig, training: TrainingConfig,
         out_dir: Path, select_on: str, merged: bool,
         batch: tuple[int, int]) -> tuple[L.Trainer, ValidationRecorder]:
    """Run Lightning's fit loop with `batch` = (micro-batch, accumulated) per optimiser step, accumulating
    in the module (`merged`) or in Lightning; the process-wide deterministic-algorithms flag it sets is
    restored after."""
    from trainer.lightning_module import CheXtrievModule, Objective, Optimisation, ValidationRecorder

    micro_batch, accumulate = batch
    steps_per_epoch = math.ceil(len(data.train_set) / (micro_batch * accumulate))
    total_steps = steps_per_epoch * training.max_epochs
    optimisation = Optimisation(lr=training.lr, weight_decay=training.weight_decay, schedule=training.schedule,
                                lr_factor=training.lr_factor, lr_patience=training.lr_patience,
                                warmup_steps=math.ceil(training.warmup_fraction * total_steps), total_steps=total_steps)
    objective = Objective(node_weight=training.node_loss_weight, contrastive_weight=training.contrastive_weight,
                          temperature=training.contrastive_temperature)
    module = CheXtrievModule(network, optimisation, objective, micro_batch=micro_batch,
                             micro_batches=accumulate if merged else 1)
    recorder = ValidationRecorder(select_on)
    logger.info("training started", extra={
        "train_images": len(data.train_set), "val_images": len(data.val_set),
        "effective_batch": micro_batch * accumulate, "steps_per_epoch": steps_per_epoch,
        "validation_interval": training.validation_interval,
        "schedule": training.schedule})
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        trainer = _trainer(training, out_dir, recorder, 1 if merged else accumulate, steps_per_epoch)
        trainer.logger.log_hyperparams({"model": model_config.to_dict(), "training": training.to_dict()})
        # Lightning's progress bars print to stdout; send them to stderr with the logs, keeping stdout for results.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, datamodule=data)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    logger.info("rank finished training", extra={"global_rank": trainer.global_rank, "world_size": trainer.world_size,
                                                 "train_batches": int(trainer.num_training_batches)})
    return trainer, recorder


def _trainer(training: TrainingConfig, out_dir: Path, recorder: ValidationRecorder, accumulate: int,
             steps_per_epoch: int) -> L.Trainer:
    """A Trainer with the configured optimisation settings whose every output lands under `out_dir`.
    With a validation interval, validation runs every that many optimiser steps across epochs, and early
    stopping counts those validations."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import CSVLogger

    interval = training.validation_interval
    every_steps = {} if interval is None else {
        "val_check_interval": min(interval, steps_per_epoch * training.max_epochs) * accumulate,
        "check_val_every_n_epoch": None}
    return L.Trainer(
        default_root_dir=out_dir,
        logger=CSVLogger(out_dir, name="lightning_logs"),
        accelerator=training.accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=training.strategy,
        precision=training.precision,
        max_epochs=training.max_epochs,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=training.gradient_clip,
        gradient_clip_algorithm="norm",
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=training.patience,
                                 check_on_train_epoch_end=False), recorder],
        enable_checkpointing=False,  # the selected weights are written in this project's format instead
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic="warn",
        **every_steps,
    )


def _given_rows(rows: TrainingRows) -> tuple[np.ndarray, np.ndarray]:
    """The caller's train and val rows; an empty one, or one row in both, is a TrainingError."""
    train_rows, val_rows = np.asarray(rows.train, dtype=np.int64), np.asarray(rows.val, dtype=np.int64)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise TrainingError("training needs training rows and validation rows; one of them is empty")
    if np.intersect1d(train_rows, val_rows).size:
        raise TrainingError("a cache row is both a training and a validation row")
    return train_rows, val_rows


def _split_rows(cache: FeatureCache) -> tuple[np.ndarray, np.ndarray]:
    """Usable cache rows of the train and val splits; an empty split is a TrainingError."""
    rows = {split: cache.indices(split) for split in ("train", "val")}
    for split, found in rows.items():
        if len(found) == 0:
            raise TrainingError(f"the feature cache has no usable {split} images; training needs a train split "
                                "to learn from and a val split for early stopping and model selection")
    return rows["train"], rows["val"]


def _check_fits(cache: FeatureCache, model_config: ModelConfig, checkpoint_dir: Path) -> None:
    feature_dim = cache.region_features.shape[-1]
    if model_config.input_dim != feature_dim:
        raise TrainingError(f"the model expects {model_config.input_dim}-d region features, "
                            f"the cache holds {feature_dim}-d ones")
    if model_config.num_classes != len(cache.label_names):
        raise TrainingError(f"the model has {model_config.num_classes} classes, the cache "
                            f"{len(cache.label_names)} labels ({', '.join(cache.label_names)})")
    if model_config.num_regions != cache.region_features.shape[1]:
        raise TrainingError(f"the model expects {model_config.num_regions} regions, "
                            f"the cache holds {cache.region_features.shape[1]}")
    if checkpoint_dir.exists():
        raise TrainingError(f"{checkpoint_dir} already exists; train into a new output directory")


def _write_checkpoint_dir(checkpoint_dir: Path, network: CheXtriev, cache: FeatureCache, metadata: dict) -> None:
    """Write the checkpoint into a temporary sibling directory, then rename it into place."""
    checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{checkpoint_dir.name}.", dir=checkpoint_dir.parent))
    try:
        save_checkpoint(temporary, network, cache.backbone, metadata, preprocessing_config(cache.region_crops))
        os.replace(temporary, checkpoint_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_directory(checkpoint_dir.parent)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PRESETS: dict[str, TrainingConfig] = {
    # The paper's, for Chest ImaGenome's 226k images: 256 images a step, validation once per epoch.
    "paper": TrainingConfig(),
    # For hundreds to thousands of images: small steps, many of them, validated often.
    "small-data": TrainingConfig(
        lr=1e-3, batch_size=32, accumulate_grad_batches=1, max_epochs=60, patience=15, validation_interval=5,
        max_batch_fraction=0.25, schedule="cosine", warmup_fraction=0.05, weight_decay=0.01),
}
