"""The training objectives beside the paper's BCE (node BCE over known regions, the region contrastive loss),
the warm-up cosine schedule, node labels from a regional-findings table, and the training figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.catalogue import REGION_INDEX
from model.network import NetworkOutput
from trainer.lightning_module import per_image_loss, region_contrastive_loss, warmup_cosine
from trainer.plots import plot_score_distributions, plot_training_curves
from trainer.region_targets import region_targets_from_table
from trainer.training import TrainingError


def _reference_contrastive(embeddings: torch.Tensor, positive: torch.Tensor, known: torch.Tensor, tau: float) -> float:
    """Supervised contrastive loss written out anchor by anchor (one finding)."""
    terms = []
    for region in range(embeddings.shape[1]):
        members = [b for b in range(embeddings.shape[0]) if known[b, region]]
        for anchor in members:
            if not positive[anchor, region]:
                continue
            others = [b for b in members if b != anchor]
            pulls = [b for b in others if positive[b, region]]
            if not pulls:
                continue
            logits = torch.stack([embeddings[anchor, region] @ embeddings[b, region] / tau for b in others])
            log_probability = logits - torch.logsumexp(logits, dim=0)
            terms.append(-torch.stack([log_probability[others.index(b)] for b in pulls]).mean())
    return float(torch.stack(terms).mean())


def test_region_contrastive_loss_matches_its_definition_and_pulls_positives_together():
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(6, 3, 8), dim=-1)
    positive = torch.zeros(6, 3, dtype=torch.bool)
    positive[[0, 2, 5], 1] = True
    positive[[1, 4], 2] = True
    known = torch.ones(6, 3, dtype=torch.bool)
    known[3, 1] = False
    labels = positive[..., None].float()
    loss = region_contrastive_loss(embeddings, labels, known, 0.1)
    assert float(loss) == pytest.approx(_reference_contrastive(embeddings, positive, known, 0.1), rel=1e-5)
    # Moving the positives of region 1 towards each other lowers the loss.
    closer = embeddings.clone()
    closer[[0, 2, 5], 1] = F.normalize(closer[[0, 2, 5], 1] + 2 * closer[0, 1], dim=-1)
    assert float(region_contrastive_loss(closer, labels, known, 0.1)) < float(loss)
    # No region with two positives: nothing to pull, a zero that still has a gradient.
    single = torch.zeros_like(labels)
    single[0, 0, 0] = 1
    assert float(region_contrastive_loss(embeddings.requires_grad_(), single, known, 0.1).detach()) == 0.0


def test_node_loss_counts_only_the_known_regions():
    logits, node_logits = torch.zeros(2, 1), torch.zeros(2, 18, 1)
    node_logits[0, 0, 0] = 5.0  # wrong and confident, but unknown below
    output = NetworkOutput(logits, node_logits, torch.zeros(2, 18, 4), torch.zeros(2, 4), torch.zeros(2, 18, 4))
    labels, node_labels = torch.zeros(2, 1), torch.zeros(2, 18, 1)
    known = torch.ones(2, 18, dtype=torch.bool)
    known[0, 0] = False
    known[1] = False  # nothing known: the image loss alone
    losses = per_image_loss(output, labels, node_labels, known, node_weight=2.0)
    assert losses.tolist() == pytest.approx([math.log(2) * 3, math.log(2)])
    assert per_image_loss(output, labels, node_labels).tolist() == pytest.approx([math.log(2)] * 2)


def test_warmup_then_cosine_decay():
    values = [warmup_cosine(step, warmup_steps=4, total_steps=20) for step in range(21)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0) and values[12] == pytest.approx(0.5) and values[20] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


class _Cache:
    """The few attributes of a feature cache that region targets read."""

    case_ids = np.array(["a", "b", "c", "d"])
    label_names = ("nodule", "other")
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    count = 4


def test_region_targets_place_the_finding_and_leave_unplaced_positives_unknown(tmp_path):
    table = tmp_path / "nodules.csv"
    table.write_text("image,zone\nimages/a.jpg,left mid\nimages/c.jpg,right upper\n")
    targets = region_targets_from_table(_Cache(), table, "zone", "nodule")
    nodule = targets.labels[:, :, 0]
    assert nodule[0].nonzero()[0].tolist() == [REGION_INDEX["left mid lung zone"]]
    assert not nodule[2].any()  # c has no nodule: its zone entry does not make one
    assert targets.known[0].all() and not targets.known[1].any() and targets.known[2:].all()
    assert targets.labels[1, :, 1].all() and not targets.labels[3].any()  # other labels broadcast from the image
    with pytest.raises(TrainingError, match="no label 'mass'"):
        region_targets_from_table(_Cache(), table, "zone", "mass")
    table.write_text("image,zone\nimages/x.jpg,left mid\n")
    with pytest.raises(TrainingError, match="no image positive"):
        region_targets_from_table(_Cache(), table, "zone", "nodule")


def test_training_curves_and_score_distributions_are_drawn(tmp_path):
    history = [{"step": step, "train_loss": 1 / step, "val_loss": 1.2 / step, "val_auc": 0.5 + step / 100}
               for step in (5, 10, 15)]
    plot_training_curves([("paper", history[:1], 5), ("small-data", history, 15)], tmp_path / "curves.png")
    width, height = Image.open(tmp_path / "curves.png").size
    assert width > height > 300  # two runs side by side
    plot_score_distributions({"before": np.full(50, 0.99), "after": np.linspace(-0.2, 0.9, 50)},
                             tmp_path / "scores.png", "demo")
    assert Image.open(tmp_path / "scores.png").size[0] > 600
