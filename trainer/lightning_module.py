"""PyTorch Lightning pieces of the trainer: the cached-feature data module, the module that trains a
CheXtriev network on it, and the callback that records each epoch and keeps the best weights.

The frozen backbone is not here: its region features were computed once and cached (trainer.feature_cache),
so only the projection, the graph transformer and the classifier are trained.

Losses (`Objective`): binary cross-entropy per finding on the image logits, the paper's. For node
supervision (V4, or any variant with a node weight) the image classifier is applied to each node and
its logits get binary cross-entropy against node labels (B, 18, C), over the regions whose labels are
known (B, 18): the cache's region labels, a regional-findings table's, or the image labels broadcast
to all 18 regions (trainer.training decides). A contrastive weight adds a supervised contrastive loss
on the node embeddings: within one region, the nodes positive for the same finding are pulled together
and pushed from that region's other known nodes, which puts the regional finding where region-level
search looks. The validation loss is the same loss averaged over every validation image exactly once
(the contrastive term, a loss of the whole batch, is left out of it), also under DDP,
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
from functools import partial

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model.network import CheXtriev, NetworkOutput
from trainer.evaluation.classification_metrics import macro_roc_auc

logger = logging.getLogger(__name__)

# fp16 region features (B, 18, F), float labels (B, C), float node labels (B, 18, C), bool node labels
# known (B, 18), cache rows (B,)
Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Objective:
    """The weights of the losses beside the image BCE: node BCE (1 for V4, as in the paper) and the
    supervised contrastive loss on node embeddings, with its temperature."""

    node_weight: float = 0.0
    contrastive_weight: float = 0.0
    temperature: float = 0.1


class CachedRegionFeatures(Dataset):
    """Rows of a feature cache held in memory, read a batch at a time: (fp16 region features (B, 18, F),
    float32 labels (B, C), float32 node labels (B, 18, C), node labels known (B, 18), cache rows (B,)).

    The rows are copied out of the cache once, so a batch is one tensor index, not B memmap reads and a
    collate; the DataLoader passes a batch's indices to __getitems__ and `batch_loader` collates nothing.
    Features stay fp16 as stored; the module casts each batch to float32.
    """

    def __init__(self, region_features: np.ndarray, labels: np.ndarray, node_labels: np.ndarray,
                 node_known: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        self.region_features = torch.from_numpy(np.ascontiguousarray(region_features[rows]))
        self.labels = torch.from_numpy(np.asarray(labels[rows], dtype=np.float32))
        self.node_labels = torch.from_numpy(np.asarray(node_labels[rows], dtype=np.float32))
        self.node_known = torch.from_numpy(np.asarray(node_known[rows], dtype=bool))
        self.rows = torch.from_numpy(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, items: list[int]) -> Batch:
        index = torch.as_tensor(items, dtype=torch.int64)
        return (self.region_features[index], self.labels[index], self.node_labels[index], self.node_known[index],
                self.rows[index])



def batch_loader(dataset: CachedRegionFeatures, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader of whole batches from the in-memory rows, in this process (no worker processes)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_whole_batch)


def _whole_batch(batch: Batch) -> Batch:
    return batch


class CachedFeatureDataModule(L.LightningDataModule):
    """Train and validation loaders over the given cache rows; the train loader reshuffles every epoch
    (from the global seed; under DDP Lightning swaps in a seeded DistributedSampler)."""

    def __init__(self, region_features: np.ndarray, labels: np.ndarray, node_labels: np.ndarray,
                 node_known: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray, batch_size: int):
        super().__init__()
        self.train_set = CachedRegionFeatures(region_features, labels, node_labels, node_known, train_rows)
        self.val_set = CachedRegionFeatures(region_features, labels, node_labels, node_known, val_rows)
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


@dataclass(frozen=True)
class Optimisation:
    """What the module's optimiser and schedule need: Adam(W)'s rate and weight decay, and either
    ReduceLROnPlateau on the validation loss ("plateau", with its factor and patience, stepped at each
    validation) or a linear warm-up then a cosine decay to zero over `total_steps` optimiser steps ("cosine")."""

    lr: float
    weight_decay: float
    schedule: str
    lr_factor: float
    lr_patience: int
    warmup_steps: int
    total_steps: int


class CheXtrievModule(L.LightningModule):
    """Trains a CheXtriev network on cached region features with Adam(W) and the configured schedule."""

    def __init__(self, network: CheXtriev, optimisation: Optimisation, objective: Objective, *,
                 micro_batch: int, micro_batches: int = 1):
        super().__init__()
        self.network = network
        self.optimisation, self.objective = optimisation, objective
        self.micro_batch, self.micro_batches = micro_batch, micro_batches
        self.last_validation: ValidationSummary | None = None
        self._validation_parts: list[tuple[Tensor, ...]] = []
        self._train_loss_sum, self._train_images = 0.0, 0

    def forward(self, region_features: Tensor) -> NetworkOutput:
        """The network's output; with a node weight and no node logits of its own (a variant without V4's
        node supervision), the image classifier applied to each node as V4 applies it."""
        output = self.network(region_features.float())
        if output.node_logits is None and self._node_weight() > 0:
            output = output._replace(node_logits=self.network.classifier(output.node_states))
        return output

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features, labels, node_labels, node_known, _ = batch
        output = self(features)
        losses = per_image_loss(output, labels, node_labels, node_known, self._node_weight())
        self._train_loss_sum += float(losses.detach().sum())
        self._train_images += len(labels)
        loss = accumulated_loss(losses, self.micro_batch, self.micro_batches)
        if self.objective.contrastive_weight > 0:
            loss = loss + self.objective.contrastive_weight * region_contrastive_loss(
                output.node_embeddings, node_labels, node_known, self.objective.temperature)
        return loss

    def take_train_loss(self) -> float:
        """The mean training loss per image since the last call (NaN when no step ran), over all ranks."""
        totals = torch.tensor([self._train_loss_sum, float(self._train_images)], device=self.device)
        if self.trainer.world_size > 1:
            totals = self.all_gather(totals).sum(dim=0)
        self._train_loss_sum, self._train_images = 0.0, 0
        return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan

    def _node_weight(self) -> float:
        return 1.0 if self.network.config.node_supervision else self.objective.node_weight

    def on_validation_epoch_start(self) -> None:
        self._validation_parts = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        features, labels, node_labels, node_known, rows = batch
        output = self(features)
        losses = per_image_loss(output, labels, node_labels, node_known, self._node_weight())
        self._validation_parts.append((losses.float(), output.logits.float(), labels, rows))

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
        settings = self.optimisation
        if settings.weight_decay > 0:
            optimizer = torch.optim.AdamW(self.network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.network.parameters(), lr=settings.lr, weight_decay=0.0)
        if settings.schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.lr_factor,
                                                                   patience=settings.lr_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}}
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
            warmup_cosine, warmup_steps=settings.warmup_steps, total_steps=settings.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimiser step `step`: linear from 1/warmup_steps to 1 over the
    warm-up steps, then a cosine from 1 down to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def per_image_loss(output: NetworkOutput, labels: Tensor, node_labels: Tensor, node_known: Tensor | None = None,
                   node_weight: float = 0.0) -> Tensor:
    """(B,) binary cross-entropy averaged over findings; plus, with a node weight, `node_weight` times the
    node-level cross-entropy of the image classifier applied to each node (V4's node logits) against
    `node_labels` (B, 18, C), averaged over findings and the regions whose labels are known (`node_known`
    (B, 18), all when None; an image with none known adds nothing)."""
    loss = F.binary_cross_entropy_with_logits(output.logits, labels.to(output.logits.dtype),
                                              reduction="none").mean(dim=1)
    if node_weight > 0:
        node_logits = output.node_logits
        if node_logits is None:
            raise ValueError("a node weight needs the network's node logits (ModelConfig.node_supervision)")
        per_node = F.binary_cross_entropy_with_logits(node_logits, node_labels.to(node_logits.dtype),
                                                      reduction="none").mean(dim=2)
        known = torch.ones_like(per_node) if node_known is None else node_known.to(per_node.dtype)
        loss = loss + node_weight * (per_node * known).sum(dim=1) / known.sum(dim=1).clamp(min=1)
    return loss


def region_contrastive_loss(node_embeddings: Tensor, node_labels: Tensor, node_known: Tensor,
                            temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) per region and finding, averaged over the anchors:
    each known node positive for a finding in a region is an anchor; the batch's other nodes of the same
    region positive for it are its positives, every other known node of that region its candidates.
    Node embeddings (B, 18, D) are L2-normalised; 0 when no region has two positives for a finding."""
    batch, regions, _ = node_embeddings.shape
    similarity = torch.einsum("bri,cri->rbc", node_embeddings, node_embeddings) / temperature  # (18, B, B)
    others = ~torch.eye(batch, dtype=torch.bool, device=node_embeddings.device)
    known = node_known.transpose(0, 1)  # (18, B)
    candidates = others[None] & known[:, None, :] & known[:, :, None]  # (18, B, B)
    log_probability = similarity.masked_fill(~candidates, -math.inf).log_softmax(dim=2)
    positive = (node_labels > 0.5).permute(2, 1, 0) & known[None]  # (C, 18, B)
    pairs = positive[..., :, None] & positive[..., None, :] & others  # (C, 18, B, B)
    counts = pairs.sum(dim=3)  # (C, 18, B): positives of each anchor
    anchors = counts > 0
    if not anchors.any():
        return node_embeddings.sum() * 0.0
    pulled = torch.where(pairs, log_probability[None], torch.zeros_like(log_probability[None])).sum(dim=3)
    return -(pulled[anchors] / counts[anchors]).mean()


def accumulated_loss(losses: Tensor, micro_batch: int, micro_batches: int) -> Tensor:
    """The loss whose gradient is that of accumulating `micro_batches` micro-batches of `micro_batch`
    images over `losses` (B,): each micro-batch's mean, divided by `micro_batches` as Lightning's
    accumulation divides, summed. A last micro-batch with fewer images keeps its own mean, as it does
    when accumulated."""
    return sum(part.mean() for part in losses.split(micro_batch)) / micro_batches


@dataclass(frozen=True)
class ValidationRecord:
    """One validation: after `step` optimiser steps, in `epoch` (both count from 0 as Lightning's progress
    bar shows them; a run validating once per epoch has one record per epoch), the mean training loss
    per image since the previous validation, the validation loss and AUC, the learning rate and the
    seconds since the previous validation."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_auc: float | None
    lr: float
    seconds: float


class ValidationRecorder(L.Callback):
    """Records and logs every validation (one structured line on rank 0) and keeps a CPU copy of the
    weights of the best one: highest validation AUC, or lowest validation loss when `select_on` is
    "val_loss"."""

    def __init__(self, select_on: str):
        if select_on not in ("val_auc", "val_loss"):
            raise ValueError(f"select_on must be val_auc or val_loss, got {select_on!r}")
        self.select_on = select_on
        self.history: list[ValidationRecord] = []
        self.best: ValidationRecord | None = None
        self.best_state: dict[str, Tensor] | None = None
        self._best_score = -math.inf
        self._since = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: CheXtrievModule) -> None:
        self._since = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: CheXtrievModule) -> None:
        summary = pl_module.last_validation
        if trainer.sanity_checking or summary is None:
            return
        now = time.perf_counter()
        record = ValidationRecord(
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            train_loss=pl_module.take_train_loss(),
            val_loss=summary.loss,
            val_auc=None if math.isnan(summary.auc) else summary.auc,
            lr=float(trainer.optimizers[0].param_groups[0]["lr"]),
            seconds=now - self._since,
        )
        self._since = now
        self.history.append(record)
        score = summary.auc if self.select_on == "val_auc" else -summary.loss
        if score > self._best_score:
            self._best_score, self.best = score, record
            if trainer.is_global_zero:
                self.best_state = {name: tensor.detach().to("cpu", copy=True)
                                   for name, tensor in pl_module.network.state_dict().items()}
        if trainer.is_global_zero:
            logger.info("validation finished", extra=vars(record))
