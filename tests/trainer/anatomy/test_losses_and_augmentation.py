"""The anatomy model's box supervision and augmentation: a box asks only that the mask span it, and an
augmented box stays the box of its augmented mask."""

from __future__ import annotations

import torch

from trainer.anatomy.data import BOX, MASK, UNSUPERVISED
from trainer.anatomy.losses import anatomy_loss, box_masks
from trainer.anatomy.training import augment, mask_box

SIZE = 64
BOX_FRACTIONS = torch.tensor([0.2, 0.25, 0.6, 0.85])


def _logits(mask: torch.Tensor) -> torch.Tensor:
    """Confident logits of a 0/1 mask."""
    return (mask * 2 - 1) * 12.0


def _ellipse_in_box() -> torch.Tensor:
    """A filled ellipse touching the four sides of BOX_FRACTIONS: a lung-like shape with that box."""
    centres = (torch.arange(SIZE) + 0.5) / SIZE
    x1, y1, x2, y2 = BOX_FRACTIONS
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    inside = ((centres[None, :] - cx) / rx) ** 2 + ((centres[:, None] - cy) / ry) ** 2 <= 1.0
    return inside.float()


def _box_loss(prediction: torch.Tensor) -> float:
    boxes = BOX_FRACTIONS.view(1, 1, 4)
    kinds = torch.tensor([[BOX]])
    return anatomy_loss(_logits(prediction)[None, None], torch.zeros(1, 1, SIZE, SIZE), boxes, kinds).item()


def test_a_box_accepts_any_mask_that_spans_it_and_refuses_one_that_leaves_it():
    filled = box_masks(BOX_FRACTIONS[None], SIZE)[0]
    shifted = torch.roll(filled, shifts=12, dims=1)
    assert _box_loss(filled) < 0.05
    assert _box_loss(_ellipse_in_box()) < 0.1  # not box-shaped, but it spans the box: nearly as good
    assert _box_loss(shifted) > 1.0  # outside the box on one side, short of it on the other
    assert _box_loss(filled[:, : SIZE // 2].new_zeros(SIZE, SIZE)) > 1.0  # nothing found


def test_unsupervised_structures_cost_nothing_and_empty_masks_are_learned_by_cross_entropy():
    kinds = torch.tensor([[MASK, UNSUPERVISED]])
    masks = torch.zeros(1, 2, SIZE, SIZE)
    anything = torch.randn(SIZE, SIZE) * 5
    empty = anatomy_loss(torch.stack([_logits(torch.zeros(SIZE, SIZE)), anything])[None], masks,
                         torch.zeros(1, 2, 4), kinds)
    spurious = anatomy_loss(torch.stack([_logits(torch.ones(SIZE, SIZE)), anything])[None], masks,
                            torch.zeros(1, 2, 4), kinds)
    assert empty.item() < 1e-3 < 5 < spurious.item()


def test_an_augmented_box_is_the_box_of_the_same_augmented_mask():
    generator = torch.Generator().manual_seed(3)
    count = 16
    filled = box_masks(BOX_FRACTIONS[None], SIZE)[0]
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator)
    masks = torch.stack([torch.stack([filled, filled])] * count)
    boxes = torch.stack([torch.stack([torch.zeros(4), BOX_FRACTIONS])] * count)
    kinds = torch.tensor([[MASK, BOX]] * count)
    images, masks, boxes, kinds = augment(images, masks, boxes, kinds, generator=generator)
    assert images.shape == (count, 1, SIZE, SIZE) and 0 <= images.min() and images.max() <= 1
    moved = 0
    for mask, box in zip(masks[:, 0], boxes[:, 1], strict=True):
        from_mask = torch.tensor(mask_box(mask.numpy() > 0.5), dtype=torch.float32)
        assert torch.allclose(from_mask, box, atol=1.5 / SIZE), (from_mask, box)
        moved += not torch.allclose(box, BOX_FRACTIONS, atol=1 / SIZE)
    assert moved >= count // 2  # the augmentation does move most of them
    assert torch.equal(boxes[:, 0], torch.zeros(count, 4))  # a mask's box slot stays unused
