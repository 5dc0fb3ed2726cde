"""Training on a feature cache of bundled radiographs: selection, early stopping, scheduling,
determinism, every variant, checkpoints the embedder loads, the command line and DDP on two CPU processes;
and node supervision (V4) on the region labels of a Chest ImaGenome cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.backbones import build_backbone
from model.checkpoint import load_checkpoint, read_checkpoint_info
from model.config import VARIANT_SETTINGS, ModelConfig
from model.embedder import Embedder
from model.errors import CheckpointError
from model.feature_extractor import FeatureExtractor
from model.region_crops import TILES
from service.cli import main
from tests.trainer.datasets import imagenome_fixtures
from trainer.cached_embeddings import load_network_for
from trainer.datasets.anatomy_sources import LungBoxes
from trainer.datasets.records import Dataset, ImageRecord
from trainer.demo.samples import sample_case_input
from trainer.evaluation.classification_metrics import macro_roc_auc
from trainer.feature_cache import FeatureCache, extract_features
from trainer.training import (
    IMAGE_NODE_TARGETS,
    REGION_NODE_TARGETS,
    TrainingConfig,
    TrainingError,
    effective_batch,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = {"width": 32, "num_heads": 2, "head_dim": 8, "ff_dim": 64}
TINY_OPTIONS = ["--width", "32", "--num-heads", "2", "--head-dim", "8", "--ff-dim", "64"]
LABELS = ("COVID-19", "AP supine")
# Bundled sample indices: train mixes findings and views; val has both values of both labels.
TRAIN_CASES, VAL_CASES = (0, 2, 4, 8, 10, 12, 43), (1, 17, 18, 47)


def _labels(case) -> tuple[str, ...]:
    return tuple(label for label, present in zip(LABELS, (case.finding == "COVID-19",
                                                          case.metadata["view"] == "AP Supine")) if present)


def _bundled_dataset(sample_cases, directory: Path) -> Dataset:
    """11 bundled radiographs; one more train row is a truncated JPEG (written into `directory`)."""
    records = [ImageRecord(sample_cases[i].case_id, sample_cases[i].image_path, sample_cases[i].patient_id,
                           split, _labels(sample_cases[i]),
                           LungBoxes(sample_cases[i].right_lung, sample_cases[i].left_lung))
               for split, chosen in (("train", TRAIN_CASES), ("val", VAL_CASES)) for i in chosen]
    truncated = directory / "truncated.jpg"
    truncated.write_bytes(sample_cases[3].image_path.read_bytes()[:300])
    records.append(ImageRecord("truncated", truncated, "p-truncated", "train", ("COVID-19",),
                               LungBoxes(sample_cases[3].right_lung, sample_cases[3].left_lung)))
    return Dataset("bundled-sample", LABELS, records, "lung_boxes")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, sample_cases) -> Path:
    """A feature cache of `_bundled_dataset` with EfficientNet-Lite0 features; the truncated JPEG is
    marked skipped by the cache."""
    directory = tmp_path_factory.mktemp("features")
    cache = directory / "cache"
    extract_features(_bundled_dataset(sample_cases, directory), FeatureExtractor(build_backbone("efficientnet_lite0")),
                     cache, batch_size=12, num_workers=0, skip_bad_images=True)
    return cache


@pytest.fixture(scope="session")
def cache(cache_dir) -> FeatureCache:
    return FeatureCache.open(cache_dir)


@pytest.fixture(scope="session")
def imagenome_cache(tmp_path_factory) -> FeatureCache:
    """A feature cache of the Chest ImaGenome fixtures (train A and C, val E, test G), with region labels."""
    return extract_features(imagenome_fixtures.read(), FeatureExtractor(build_backbone("efficientnet_lite0")),
                            tmp_path_factory.mktemp("imagenome") / "cache", num_workers=0)


def _config(cache: FeatureCache, variant: str = "V6") -> ModelConfig:
    return ModelConfig.for_variant(variant, input_dim=cache.feature_dim, num_classes=len(cache.label_names), **TINY)


def _training(**overrides) -> TrainingConfig:
    return TrainingConfig(**{"batch_size": 4, "accumulate_grad_batches": 1, "max_epochs": 2,
                             "accelerator": "cpu", "devices": 1, **overrides})


def _val_auc_of(checkpoint_dir: Path, cache: FeatureCache) -> float:
    network, _ = load_checkpoint(checkpoint_dir)
    rows = cache.indices("val")
    with torch.inference_mode():
        logits = network(torch.from_numpy(np.asarray(cache.region_features[rows], dtype=np.float32))).logits
    return macro_roc_auc(logits.numpy(), cache.labels[rows]).value


def _val_loss_of(checkpoint_dir: Path, cache: FeatureCache, node_labels: np.ndarray) -> float:
    """The validation loss of a V4 checkpoint, its node logits scored against `node_labels` (N, 18, C)."""
    network, _ = load_checkpoint(checkpoint_dir)
    rows = cache.indices("val")
    with torch.inference_mode():
        output = network(torch.from_numpy(np.asarray(cache.region_features[rows], dtype=np.float32)))
    labels = torch.from_numpy(cache.labels[rows].astype(np.float32))
    node_targets = torch.from_numpy(np.asarray(node_labels[rows], dtype=np.float32))
    image_loss = F.binary_cross_entropy_with_logits(output.logits, labels)
    node_loss = F.binary_cross_entropy_with_logits(output.node_logits, node_targets)
    return float(image_loss + node_loss)  # one val image: the means over images are these


def _json_logs(stderr: str) -> list[dict]:
    """The JSON log records in a command's stderr (progress bars may share their lines)."""
    return [json.loads(line[line.index('{"time"'):]) for line in stderr.splitlines() if '{"time"' in line]


def test_saved_weights_are_those_of_the_best_validation_auc(cache, tmp_path):
    result = train(cache, _config(cache), _training(lr=3e-3, max_epochs=6, patience=10), tmp_path)
    aucs = [record.val_auc for record in result.history]
    assert result.selected_on == "val_auc" and result.epochs_run == 6
    assert result.best_epoch == int(np.argmax(aucs)) != len(aucs) - 1  # not simply the last epoch
    assert result.best_val_auc == pytest.approx(max(aucs))
    assert _val_auc_of(result.checkpoint_dir, cache) == pytest.approx(result.best_val_auc, abs=1e-6)


def test_checkpoint_embeds_a_radiograph_with_the_real_backbone(cache, tmp_path, sample_cases):
    result = train(cache, _config(cache), _training(), tmp_path)
    info = read_checkpoint_info(result.checkpoint_dir)
    metadata = info.metadata
    assert metadata["dataset"] == "bundled-sample" and metadata["label_names"] == list(LABELS)
    assert metadata["training"] == _training().to_dict() and metadata["seed"] == 0
    assert metadata["best_epoch"] == result.best_epoch and metadata["val_auc"] == result.best_val_auc
    assert metadata["seconds_per_epoch"] > 0 and metadata["backbone_trained"] is False
    assert int(cache.skipped.sum()) == 1  # the truncated JPEG, which training must leave out
    assert (metadata["train_images"], metadata["val_images"]) == (len(TRAIN_CASES), len(VAL_CASES))
    assert info.backbone == cache.backbone and info.model_config.num_classes == len(LABELS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint", "lightning_logs"]

    embedder = Embedder.from_checkpoint(result.checkpoint_dir)
    case = VAL_CASES[0]
    embedding = embedder.embed(*sample_case_input(sample_cases[case])).image[0]
    assert embedding.shape == (32,) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    row = int(np.flatnonzero(cache.case_ids == sample_cases[case].case_id)[0])
    from_cache = embedder.embed_features(torch.from_numpy(np.asarray(cache.region_features[row:row + 1],
                                                                     dtype=np.float32))).image[0]
    assert float(embedding @ from_cache) > 0.999  # the cache holds this backbone's features of the image


def test_a_tiles_cache_trains_a_checkpoint_whose_embedder_cuts_tiles(cache, tmp_path, sample_cases):
    extractor = FeatureExtractor(build_backbone("efficientnet_lite0", pooling="max"), region_crops=TILES)
    tiles_cache = extract_features(_bundled_dataset(sample_cases, tmp_path), extractor, tmp_path / "tiles",
                                   batch_size=12, num_workers=0, skip_bad_images=True)
    result = train(tiles_cache, _config(tiles_cache), _training(max_epochs=1), tmp_path / "run")
    assert read_checkpoint_info(result.checkpoint_dir).region_crops is TILES
    embedder = Embedder.from_checkpoint(result.checkpoint_dir)
    assert embedder.features.region_crops is TILES
    case = VAL_CASES[1]
    row = int(np.flatnonzero(tiles_cache.case_ids == sample_cases[case].case_id)[0])
    from_cache = embedder.embed_features(torch.from_numpy(np.asarray(tiles_cache.region_features[row:row + 1],
                                                                     dtype=np.float32))).image[0]
    assert float(embedder.embed(*sample_case_input(sample_cases[case])).image[0] @ from_cache) > 0.999
    with pytest.raises(CheckpointError, match="trained on 'tiles' region crops, the feature cache holds 'single'"):
        load_network_for(cache, result.checkpoint_dir)


def test_same_seed_gives_identical_checkpoints(cache, tmp_path):
    first, second = (read_checkpoint_info(train(cache, _config(cache), _training(seed=7), tmp_path / name)
                                          .checkpoint_dir) for name in ("first", "second"))
    assert first.weights_sha256 == second.weights_sha256
    assert [epoch["val_loss"] for epoch in first.metadata["history"]] == \
        [epoch["val_loss"] for epoch in second.metadata["history"]]


def test_early_stopping_after_patience_evaluations_without_improvement(cache, tmp_path):
    result = train(cache, _config(cache), _training(lr=0.05, max_epochs=12, patience=2), tmp_path)
    losses = [record.val_loss for record in result.history]
    waits, wait = [], 0
    for i, loss in enumerate(losses):
        wait = 0 if i == 0 or loss < min(losses[:i]) else wait + 1
        waits.append(wait)
    assert result.epochs_run < 12
    assert waits.index(2) == len(losses) - 1  # stopped at the first second evaluation in a row without improvement


def test_the_paper_preset_gives_its_effective_batch_on_one_device_and_a_schedule_that_can_act(capsys):
    paper = TrainingConfig.preset("paper")
    assert paper == TrainingConfig() and paper.batch_size * paper.accumulate_grad_batches == 256
    # ReduceLROnPlateau lowers the rate at the (lr_patience + 1)-th evaluation without improvement,
    # early stopping ends the run at the patience-th: the first must come first.
    assert paper.lr_patience + 1 < paper.patience
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 16 (paper), 1 (small-data): the paper's 16 x 16 = 256 images per optimiser step" in help_text
    assert "no BatchNorm" in help_text
    assert "default small-data" in help_text


def test_the_effective_batch_is_cut_to_a_share_of_a_small_training_set():
    small = TrainingConfig.preset("small-data")
    assert effective_batch(small, 10_000) == (32, 1)
    assert effective_batch(small, 60) == (15, 1)  # a quarter of 60
    assert effective_batch(TrainingConfig.preset("paper"), 170) == (16, 10)  # at most the 170 images: 160
    assert effective_batch(TrainingConfig.preset("paper", max_batch_fraction=0.25), 170) == (16, 2)


def test_a_plateau_schedule_cannot_be_stepped_between_epochs():
    with pytest.raises(ValueError, match="plateau schedule steps once per epoch"):
        TrainingConfig(validation_interval=3)
    with pytest.raises(ValueError, match="unknown training preset"):
        TrainingConfig.preset("huge")


def test_small_data_validates_every_few_steps_with_a_cosine_schedule(cache, tmp_path):
    training = TrainingConfig.preset("small-data", batch_size=2, max_epochs=3, patience=50, accelerator="cpu",
                                     devices=1)
    result = train(cache, _config(cache), training, tmp_path)
    # 7 training images, at most a quarter a step: steps of 1 image, 7 an epoch, 21 in all, validated every 5
    assert result.effective_batch == 1 and result.steps_run == 21
    assert [record.step for record in result.history] == [5, 10, 15, 20]
    lrs = [record.lr for record in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 * training.lr  # cosine decay towards 0
    report = read_checkpoint_info(result.checkpoint_dir).metadata
    assert report["best_step"] == result.best.step and report["effective_batch"] == 1


def test_with_the_default_patiences_the_learning_rate_drops_before_early_stopping(cache, tmp_path):
    defaults = TrainingConfig()
    result = train(cache, _config(cache), _training(lr=0.05, max_epochs=30, patience=defaults.patience,
                                                    lr_patience=defaults.lr_patience), tmp_path)
    assert result.epochs_run < 30  # stopped early
    assert result.history[-1].lr < result.history[0].lr  # and the last epochs ran at a lower rate


def test_learning_rate_drops_tenfold_when_validation_loss_stalls(cache, tmp_path):
    result = train(cache, _config(cache), _training(lr=0.02, max_epochs=6, patience=10, lr_patience=0), tmp_path)
    lrs, losses = [r.lr for r in result.history], [r.val_loss for r in result.history]
    best, stalled = losses[0], []
    for loss in losses[1:-1]:  # ReduceLROnPlateau's default rule: better means below best * (1 - 1e-4)
        stalled.append(loss >= best * (1 - 1e-4))
        best = min(best, loss)
    assert any(stalled)
    for i, stall in enumerate(stalled, start=1):
        assert lrs[i + 1] == pytest.approx(lrs[i] * (0.1 if stall else 1.0))


@pytest.mark.parametrize("variant", sorted(VARIANT_SETTINGS))
def test_every_variant_trains(cache, tmp_path, variant):
    result = train(cache, _config(cache, variant), _training(max_epochs=1), tmp_path)
    network, info = load_checkpoint(result.checkpoint_dir)
    assert info.model_config.variant == variant and result.epochs_run == 1
    # The bundled cache, like any of a manifest dataset, holds image labels only.
    node_targets = IMAGE_NODE_TARGETS if variant == "V4" else None
    assert result.node_supervision_targets == info.metadata.get("node_supervision_targets") == node_targets


def test_v4_trains_its_nodes_on_the_region_labels_of_an_imagenome_cache(imagenome_cache, tmp_path, caplog):
    config = _config(imagenome_cache, "V4")
    assert imagenome_cache.region_labels is not None
    with caplog.at_level(logging.INFO, logger="trainer.training"):
        regional = train(imagenome_cache, config, _training(max_epochs=1), tmp_path / "region")
        broadcast = train(replace(imagenome_cache, region_labels=None), config, _training(max_epochs=1),
                          tmp_path / "image")  # the same cache as one made before region labels were kept
    assert regional.node_supervision_targets == REGION_NODE_TARGETS
    assert read_checkpoint_info(regional.checkpoint_dir).metadata["node_supervision_targets"] == REGION_NODE_TARGETS
    assert broadcast.node_supervision_targets == IMAGE_NODE_TARGETS
    assert read_checkpoint_info(broadcast.checkpoint_dir).metadata["node_supervision_targets"] == IMAGE_NODE_TARGETS
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("node supervision")]
    assert said == [("INFO", f"node supervision targets: {REGION_NODE_TARGETS}"),
                    ("WARNING", f"node supervision targets: {IMAGE_NODE_TARGETS}")]

    region_labels = np.asarray(imagenome_cache.region_labels)
    broadcast_labels = np.broadcast_to(imagenome_cache.labels[:, None, :], region_labels.shape)
    assert not np.array_equal(region_labels, broadcast_labels)
    # One epoch: the saved weights are those the validation loss was computed with.
    val_loss = regional.history[0].val_loss
    assert val_loss == pytest.approx(_val_loss_of(regional.checkpoint_dir, imagenome_cache, region_labels), rel=1e-5)
    assert val_loss != pytest.approx(_val_loss_of(regional.checkpoint_dir, imagenome_cache, broadcast_labels), rel=1e-3)
    assert broadcast.history[0].val_loss == pytest.approx(
        _val_loss_of(broadcast.checkpoint_dir, imagenome_cache, broadcast_labels), rel=1e-5)
    assert regional.history[0].train_loss != pytest.approx(broadcast.history[0].train_loss, rel=1e-3)


def test_selects_on_validation_loss_when_no_label_varies_in_val(cache_dir, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    lines = [json.loads(line) for line in (copy / "records.jsonl").read_text().splitlines()]
    for line in lines:
        if line["split"] == "val":
            line["labels"] = []
    (copy / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cache = FeatureCache.open(copy)
    result = train(cache, _config(cache), _training(max_epochs=3), tmp_path / "out")
    losses = [record.val_loss for record in result.history]
    assert result.selected_on == "val_loss" and result.best_val_auc is None
    assert result.best_epoch == int(np.argmin(losses))
    assert read_checkpoint_info(result.checkpoint_dir).metadata["selected_on"] == "val_loss"


def test_refuses_mismatched_model_or_used_output_and_writes_nothing(cache, tmp_path):
    wrong_classes = ModelConfig.for_variant("V6", input_dim=cache.feature_dim, num_classes=9, **TINY)
    with pytest.raises(TrainingError, match="9 classes.*2 labels"):
        train(cache, wrong_classes, _training(), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    (tmp_path / "b" / "checkpoint").mkdir(parents=True)
    with pytest.raises(TrainingError, match="already exists"):
        train(cache, _config(cache), _training(), tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["checkpoint"]
    with pytest.raises(ValueError, match="lr_factor"):
        TrainingConfig(lr_factor=1.5)


def test_diverged_training_raises_and_writes_no_checkpoint(cache, tmp_path):
    with pytest.raises(TrainingError, match="diverged"):
        train(cache, _config(cache), _training(lr=1e30, max_epochs=1), tmp_path)
    assert not (tmp_path / "checkpoint").exists()


def test_command_line_trains_and_reports(cache_dir, tmp_path, capsys):
    code = main(["train", "--features", str(cache_dir), "--out", str(tmp_path), "--variant", "V4", *TINY_OPTIONS,
                 "--epochs", "1", "--batch-size", "4", "--accumulate", "1", "--accelerator", "cpu", "--devices", "1"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds only the summary; progress goes to stderr
    logs = _json_logs(captured.err)
    # The default small-data preset: steps of a quarter of the 7 training images (1), validated every 5 steps.
    assert [entry["step"] for entry in logs if entry["message"] == "validation finished"] == [5]
    assert summary["epochs_run"] == 1 and summary["world_size"] == 1 and summary["effective_batch"] == 1
    assert json.loads((tmp_path / "training.json").read_text())["history"] == summary["history"]
    assert Image.open(tmp_path / "training_curves.png").size[0] >= 400
    assert read_checkpoint_info(summary["checkpoint_dir"]).model_config.variant == "V4"
    # The cache holds image labels only: the summary and a warning say what the nodes were trained on.
    assert summary["node_supervision_targets"] == IMAGE_NODE_TARGETS
    assert [(entry["level"], entry["message"]) for entry in logs if entry["message"].startswith("node supervision")] \
        == [("WARNING", f"node supervision targets: {IMAGE_NODE_TARGETS}")]
    assert main(["train", "--features", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "not a feature cache" in capsys.readouterr().err


def test_ddp_on_two_cpu_processes_under_torchrun(cache_dir, cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "service.cli", "train", "--features", str(cache_dir), "--out", str(tmp_path), *TINY_OPTIONS,
               "--preset", "paper", "--epochs", "2", "--batch-size", "2", "--accumulate", "1",
               "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    metadata = read_checkpoint_info(tmp_path / "checkpoint").metadata
    single_process_batches = -(-len(cache.indices("train")) // 2)  # 7 train images in batches of 2: 4
    assert metadata["world_size"] == 2 and metadata["train_batches_per_rank"] * 2 == single_process_batches
    logs = _json_logs(completed.stderr)
    finished = sorted((entry["global_rank"], entry["train_batches"]) for entry in logs
                      if entry["message"] == "rank finished training")
    assert finished == [(0, 2), (1, 2)]  # both ranks trained, each on half of the batches
    assert [entry["global_rank"] for entry in logs if entry["message"] == "checkpoint written"] == [0]
    assert len([entry for entry in logs if entry["message"] == "validation finished"]) == 2  # by rank 0 only
    assert len(completed.stdout.strip().splitlines()) == 1  # one JSON summary, from rank 0
    assert any(entry["logger"].startswith("lightning") for entry in logs)  # Lightning's messages as JSON,
    assert "INFO: " not in completed.stderr  # not a second time through its own console handler
