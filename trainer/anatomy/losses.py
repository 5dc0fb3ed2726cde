"""The anatomy model's loss: full supervision where a structure has a mask, box supervision where it
has a box, nothing where it has neither.

A mask is learned with binary cross-entropy plus soft Dice (Dice only where the mask is not empty: a
negative image's empty masks are learned by the cross-entropy). A box does not say which pixels
inside it belong to the structure, only that none outside does and that the structure reaches each
of its four sides. So the box loss is the projection loss of BoxInst (Tian et al., CVPR 2021): the
Dice of the mask's maximum over each column and over each row with the box's extent on that axis,
plus cross-entropy towards 0 on the pixels outside the box. Mask and box supervision then ask the
same of a mask, and sets of either kind can be trained together.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from trainer.anatomy.data import BOX, MASK


def anatomy_loss(logits: Tensor, masks: Tensor, boxes: Tensor, kinds: Tensor) -> Tensor:
    """Mean loss over the supervised structures of a batch: logits and masks (N, C, S, S), boxes
    (N, C, 4) as fractions of the image, kinds (N, C)."""
    terms = []
    masked, boxed = kinds == MASK, kinds == BOX
    if masked.any():
        terms.append(_mask_loss(logits[masked], masks[masked]))
    if boxed.any():
        terms.append(_box_loss(logits[boxed], boxes[boxed]))
    return torch.stack(terms).sum() / len(terms)


def box_masks(boxes: Tensor, size: int) -> Tensor:
    """(M, S, S) float masks filling each box (M, 4) given as fractions of the image."""
    centres = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])
    inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).to(boxes.dtype)


def soft_dice_loss(probabilities: Tensor, targets: Tensor) -> Tensor:
    """1 - soft Dice per row of (M, ...) tensors, as (M,)."""
    dims = tuple(range(1, probabilities.dim()))
    overlap = (probabilities * targets).sum(dims)
    return 1 - (2 * overlap + 1) / (probabilities.sum(dims) + targets.sum(dims) + 1)


def _mask_loss(logits: Tensor, masks: Tensor) -> Tensor:
    cross_entropy = functional.binary_cross_entropy_with_logits(logits, masks)
    present = masks.flatten(1).amax(1) > 0
    if not present.any():
        return cross_entropy
    return cross_entropy + soft_dice_loss(torch.sigmoid(logits[present]), masks[present]).mean()


def _box_loss(logits: Tensor, boxes: Tensor) -> Tensor:
    probabilities = torch.sigmoid(logits)
    targets = box_masks(boxes, logits.shape[-1])
    projections = (soft_dice_loss(probabilities.amax(1), targets.amax(1))
                   + soft_dice_loss(probabilities.amax(2), targets.amax(2)))
    outside = 1 - targets
    outside_entropy = (functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                                                   reduction="none") * outside).sum()
    return projections.mean() + outside_entropy / outside.sum().clamp(min=1)
