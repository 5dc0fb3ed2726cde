"""Train the anatomy network (trainer.anatomy.network) on in-memory samples and export the best epoch.

Each batch is augmented on the fly: a random scale per axis and shift (no rotation, so that a box
stays the box of its structure) and a random gamma, contrast, brightness and noise. The epoch kept
is the one with the best median lung-box IoU on the validation samples (patients never trained on).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional
from tqdm import tqdm

from model.anatomy import box_iou
from model.anatomy_model import LUNGS, STRUCTURES
from model.region_derivation import box_from_mask
from trainer.anatomy.data import BOX, MASK, AnatomySample
from trainer.anatomy.losses import anatomy_loss
from trainer.anatomy.network import AnatomyNet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnatomyTrainingConfig:
    """Training settings; `size` is the model's square input in pixels (a multiple of 16)."""

    size: int = 192
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    negatives_fraction: float = 0.25
    seed: int = 0


@dataclass
class AnatomyTrainingResult:
    """The best network (eval mode, CPU), its epoch and validation IoU, and one row per epoch."""

    network: AnatomyNet
    best_epoch: int
    best_val_iou: float
    history: list[dict]


def train_anatomy(train: Sequence[AnatomySample], val: Sequence[AnatomySample],
                  config: AnatomyTrainingConfig = AnatomyTrainingConfig()) -> AnatomyTrainingResult:
    """Train on `train` (positives and negatives), keep the epoch best on `val`."""
    if not train or not val:
        raise ValueError(f"need training and validation images, got {len(train)} and {len(val)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    network = AnatomyNet(pretrained=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(
        config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch))
    tensors = _stack(train)
    best_state, best_epoch, best_iou, history = None, -1, -math.inf, []
    progress = tqdm(range(config.epochs), desc="anatomy training", unit="epoch")
    for epoch in progress:
        started = time.perf_counter()
        network.train()
        losses = []
        for rows in torch.randperm(len(train), generator=generator).split(config.batch_size):
            batch = augment(*(tensor[rows] for tensor in tensors), generator=generator)
            loss = anatomy_loss(network(batch[0]), *batch[1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        val_iou = validation_iou(network, val)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_median_lung_iou": val_iou,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(row)
        logger.info("anatomy epoch", extra=row)
        progress.set_postfix(loss=f"{row['train_loss']:.3f}", val_iou=f"{val_iou:.3f}")
        if val_iou > best_iou:
            best_state, best_epoch, best_iou = copy.deepcopy(network.state_dict()), epoch, val_iou
    network.load_state_dict(best_state)
    return AnatomyTrainingResult(network.eval(), best_epoch, best_iou, history)


def augment(images: Tensor, masks: Tensor, boxes: Tensor, kinds: Tensor, *,
            generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A random scale per axis and shift of each image with its masks and boxes, then a random
    intensity change of the image."""
    count = images.shape[0]
    scale = 1 + (torch.rand(count, 2, generator=generator) - 0.5) * 0.3  # 0.85 .. 1.15 per axis
    shift = (torch.rand(count, 2, generator=generator) - 0.5) * 0.16  # up to 8 % of the side
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / scale[:, 0], 1 / scale[:, 1]
    theta[:, :, 2] = shift
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = functional.grid_sample(images, grid, align_corners=False)
    masks = (functional.grid_sample(masks, grid, align_corners=False) >= 0.5).to(masks.dtype)
    # An output point u maps to the input point u / scale + shift (u in [-1, 1]), so a box edge e
    # moves to (e - shift) * scale.
    edges = (boxes * 2 - 1 - shift.repeat(1, 2)[:, None, :]) * scale.repeat(1, 2)[:, None, :]
    moved = ((edges + 1) / 2).clamp(0, 1)
    boxes = torch.where((kinds == BOX)[..., None], moved, boxes)
    return _intensity(images, generator), masks, boxes, kinds


def _intensity(images: Tensor, generator: torch.Generator) -> Tensor:
    count = images.shape[0]
    gamma = torch.exp((torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.7)
    contrast = 0.75 + torch.rand(count, 1, 1, 1, generator=generator) * 0.5
    brightness = (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.2
    noise = torch.randn(images.shape, generator=generator) * torch.rand(count, 1, 1, 1, generator=generator) * 0.03
    changed = (images.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness + noise
    return changed.clamp(0, 1)


@torch.no_grad()
def validation_iou(network: AnatomyNet, samples: Sequence[AnatomySample], batch_size: int = 32) -> float:
    """Median over samples of the mean IoU of the two lungs' boxes (all pixels above 0.5) with the
    expert boxes (or the expert masks' boxes)."""
    network.eval()
    ious = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = torch.from_numpy(np.stack([sample.pixels for sample in chunk]))[:, None]
        probabilities = torch.sigmoid(network(images)).numpy()
        for sample, maps in zip(chunk, probabilities, strict=True):
            lungs = [STRUCTURES.index(name) for name in LUNGS]
            ious.append(np.mean([box_iou(mask_box(maps[index] > 0.5), expert_box(sample, index))
                                 for index in lungs]))
    return float(np.median(ious))


def expert_box(sample: AnatomySample, index: int) -> tuple[float, float, float, float] | None:
    """A sample's box of one structure as fractions of the image (from its mask or its box)."""
    if sample.kinds[index] == MASK:
        return mask_box(sample.masks[index] > 0.5)
    if sample.kinds[index] == BOX:
        return tuple(float(v) for v in sample.boxes[index])
    return None


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box of a mask's pixels as fractions of its side, None when empty."""
    if not mask.any():
        return None
    x1, y1, x2, y2 = box_from_mask(mask)
    size_y, size_x = mask.shape
    return (x1 / size_x, y1 / size_y, x2 / size_x, y2 / size_y)


def _stack(samples: Sequence[AnatomySample]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.from_numpy(np.stack([sample.pixels for sample in samples]))[:, None],
            torch.from_numpy(np.stack([sample.masks for sample in samples])),
            torch.from_numpy(np.stack([sample.boxes for sample in samples])),
            torch.from_numpy(np.stack([sample.kinds for sample in samples])))


def _warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor
