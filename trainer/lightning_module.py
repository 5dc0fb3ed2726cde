"""PyTorch Lightning pieces of the trainer: the cached-feature data module, the module that trains a
CheXtriev network on it, and the callback that records each epoch and keeps the best weights.

The frozen backbone is not here: its region features were computed once and cached (trainer.feature_cache),
so only the projection, the graph transformer and the classifier are trained.

Losses: binary cross-entropy per finding on the image logits. For node supervision (V4) the node
logits get binary cross-entropy too, against node labels (B, 18, C): the cache's region labels, or
the image labels broadcast to all 18 regions when it has none (trainer.training decides). The
validation loss is the same loss averaged over every validation image exactly once, also under DDP,
where each rank's predictions are gathered and the DistributedSampler's padding duplicates dropped;
every rank therefore sees the same validation loss and AUC and takes the same early-stopping and
scheduling decisions.

Training steps: the train loader may hand over all of an optimiser step's micro-batches as one batch
(trainer.training decides); `accumulated_loss` then gives it the gradient of accumulating them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model.network import CheXtriev, NetworkOutput
from trainer.evaluation.classification_metrics import macro_roc_auc

logger = logging.getLogger(__name__)

# fp16 region features (B, 18, F), float labels (B, C), float node labels (B, 18, C), cache rows (B,)
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


class CachedRegionFeatures(Dataset):
    """Rows of a feature cache held in memory, read a batch at a time: (fp16 region features (B, 18, F),
    float32 labels (B, C), float32 node labels (B, 18, C), cache rows (B,)).

    The rows are copied out of the cache once, so a batch is one tensor index, not B memmap reads and a
    collate; the DataLoader passes a batch's indices to __getitems__ and `batch_loader` collates nothing.
    Features stay fp16 as stored; the module casts each batch to float32.
    """

    def __init__(self, region_features: np.ndarray, labels: np.ndarray, node_labels: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        self.region_features = torch.from_numpy(np.ascontiguousarray(region_features[rows]))
        self.labels = torch.from_numpy(np.asarray(labels[rows], dtype=np.float32))
        self.node_labels = torch.from_numpy(np.asarray(node_labels[rows], dtype=np.float32))
        self.rows = torch.from_numpy(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, items: list[int]) -> Batch:
        index = torch.as_tensor(items, dtype=torch.int64)
        return self.region_features[index], self.labels[index], self.node_labels[index], self.rows[index]



def batch_loader(dataset: CachedRegionFeatures, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader of whole batches from the in-memory rows, in this process (no worker processes)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_whole_batch)


def _whole_batch(batch: Batch) -> Batch:
    return batch


class CachedFeatureDataModule(L.LightningDataModule):
    """Train and validation loaders over the given cache rows; the train loader reshuffles every epoch
    (from the global seed; under DDP Lightning swaps in a seeded DistributedSampler)."""

    def __init__(self, region_features: np.ndarray, labels: np.ndarray, node_labels: np.ndarray,
                 train_rows: np.ndarray, val_rows: np.ndarray, batch_size: int):
        super().__init__()
        self.train_set = CachedRegionFeatures(region_features, labels, node_labels, train_rows)
        self.val_set = CachedRegionFeatures(region_features, labels, node_labels, val_rows)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val_set, self.batch_size, shuffle=False)


@dataclass(frozen=True)
class ValidationSummary:
    """One validation pass over every validation image: mean loss, macro ROC-AUC (NaN when no class
    has both positives and negatives) and how many images it covered."""

    loss: float
    auc: float
    images: int


class CheXtrievModule(L.LightningModule):
    """Trains a CheXtriev network on cached region features with Adam and ReduceLROnPlateau."""

    def __init__(self, network: CheXtriev, *, lr: float, lr_factor: float, lr_patience: int,
                 micro_batch: int, micro_batches: int = 1):
        super().__init__()
        self.network = network
        self.lr, self.lr_factor, self.lr_patience = lr, lr_factor, lr_patience
        self.micro_batch, self.micro_batches = micro_batch, micro_batches
        self.last_validation: ValidationSummary | None = None
        self._validation_parts: list[tuple[Tensor, ...]] = []

    def forward(self, region_features: Tensor) -> NetworkOutput:
        return self.network(region_features.float())

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features, labels, node_labels, _ = batch
        losses = per_image_loss(self(features), labels, node_labels)
        self.log("train_loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(labels))
        return accumulated_loss(losses, self.micro_batch, self.micro_batches)

    def on_validation_epoch_start(self) -> None:
        self._validation_parts = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        features, labels, node_labels, rows = batch
        output = self(features)
        self._validation_parts.append((per_image_loss(output, labels, node_labels).float(), output.logits.float(),
                                       labels, rows))

    def on_validation_epoch_end(self) -> None:
        losses, logits, labels, rows = (self._gathered(torch.cat(part)) for part in zip(*self._validation_parts))
        self._validation_parts = []
        rows, first = np.unique(rows.cpu().numpy(), return_index=True)  # drop DistributedSampler padding
        auc = macro_roc_auc(logits.cpu().numpy()[first], labels.cpu().numpy()[first] > 0.5).value
        self.last_validation = ValidationSummary(float(losses[first].mean()), auc, len(rows))
        self.log("val_loss", self.last_validation.loss, prog_bar=True, sync_dist=True)
        if not math.isnan(auc):
            self.log("val_auc", auc, prog_bar=True, sync_dist=True)

    def _gathered(self, values: Tensor) -> Tensor:
        """Concatenate `values` over all ranks (each rank holds the same count: the sampler pads)."""
        if self.trainer.world_size == 1:
            return values
        return self.all_gather(values).flatten(0, 1)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=self.lr_factor,
                                                               patience=self.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}}


def per_image_loss(output: NetworkOutput, labels: Tensor, node_labels: Tensor) -> Tensor:
    """(B,) binary cross-entropy averaged over findings; plus, with node logits, the node-level
    cross-entropy against `node_labels` (B, 18, C), averaged over regions and findings."""
    loss = F.binary_cross_entropy_with_logits(output.logits, labels.to(output.logits.dtype),
                                              reduction="none").mean(dim=1)
    if output.node_logits is not None:
        loss = loss + F.binary_cross_entropy_with_logits(output.node_logits, node_labels.to(output.node_logits.dtype),
                                                         reduction="none").mean(dim=(1, 2))
    return loss


def accumulated_loss(losses: Tensor, micro_batch: int, micro_batches: int) -> Tensor:
    """The loss whose gradient is that of accumulating `micro_batches` micro-batches of `micro_batch`
    images over `losses` (B,): each micro-batch's mean, divided by `micro_batches` as Lightning's
    accumulation divides, summed. A last micro-batch with fewer images keeps its own mean, as it does
    when accumulated."""
    return sum(part.mean() for part in losses.split(micro_batch)) / micro_batches


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did (epochs count from 0, as Lightning's progress bar shows them)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auc: float | None
    lr: float
    seconds: float


class EpochRecorder(L.Callback):
    """Times and logs every epoch (one structured line on rank 0) and keeps a CPU copy of the
    weights of the best epoch: highest validation AUC, or lowest validation loss when `select_on`
    is "val_loss"."""

    def __init__(self, select_on: str):
        if select_on not in ("val_auc", "val_loss"):
            raise ValueError(f"select_on must be val_auc or val_loss, got {select_on!r}")
        self.select_on = select_on
        self.history: list[EpochRecord] = []
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self._best_score = -math.inf
        self._started = 0.0
        self._lr = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: CheXtrievModule) -> None:
        self._started = time.perf_counter()
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: CheXtrievModule) -> None:
        summary = pl_module.last_validation
        if trainer.sanity_checking or summary is None:
            return
        score = summary.auc if self.select_on == "val_auc" else -summary.loss
        if score > self._best_score:
            self._best_score, self.best_epoch = score, trainer.current_epoch
            if trainer.is_global_zero:
                self.best_state = {name: tensor.detach().to("cpu", copy=True)
                                   for name, tensor in pl_module.network.state_dict().items()}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: CheXtrievModule) -> None:
        summary = pl_module.last_validation
        record = EpochRecord(
            epoch=trainer.current_epoch,
            train_loss=float(trainer.callback_metrics["train_loss"]),
            val_loss=summary.loss,
            val_auc=None if math.isnan(summary.auc) else summary.auc,
            lr=self._lr,
            seconds=time.perf_counter() - self._started,
        )
        self.history.append(record)
        if trainer.is_global_zero:
            logger.info("epoch finished", extra=vars(record))

