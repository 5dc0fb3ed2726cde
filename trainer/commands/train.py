"""`chextriev train`: train the projection and graph transformer on a feature cache (trainer.training).

Several processes need no other option than the Lightning ones: `--devices 2 --strategy ddp` lets
Lightning start the second process, and `torchrun --nproc_per_node N -m service.cli train ...
--devices N --strategy ddp` (add `--num-nodes` across nodes) runs under torchrun unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.config import RETRIEVALS, VARIANT_SETTINGS, ModelConfig
from model.errors import ChextrievError
from trainer.feature_cache import FeatureCache
from trainer.region_targets import region_targets_from_table
from trainer.training import PRESETS, RegionTargets, TrainingConfig, train
from trainer.training_report import training_summary, write_training_report

DEFAULT_PRESET = "small-data"
# Model size options (all optional; the variant's paper sizes otherwise): argparse name -> ModelConfig field.
_SIZE_OPTIONS = {"width": int, "num_layers": int, "num_heads": int, "head_dim": int, "ff_dim": int, "dropout": float}
# Training options: argparse name -> (TrainingConfig field, type).
_TRAINING_OPTIONS = {
    "epochs": ("max_epochs", int), "batch_size": ("batch_size", int),
    "accumulate": ("accumulate_grad_batches", int), "max_batch_fraction": ("max_batch_fraction", float),
    "lr": ("lr", float), "weight_decay": ("weight_decay", float), "schedule": ("schedule", str),
    "warmup_fraction": ("warmup_fraction", float), "lr_factor": ("lr_factor", float),
    "lr_patience": ("lr_patience", int), "validation_interval": ("validation_interval", int),
    "patience": ("patience", int), "gradient_clip": ("gradient_clip", float),
    "node_loss_weight": ("node_loss_weight", float), "contrastive_weight": ("contrastive_weight", float),
    "contrastive_temperature": ("contrastive_temperature", float),
    "seed": ("seed", int), "accelerator": ("accelerator", str), "devices": ("devices", str),
    "num_nodes": ("num_nodes", int), "strategy": ("strategy", str), "precision": ("precision", str),
}
# What some training options mean, after their preset values.
_HELP_NOTES = {
    "accumulate": ": the paper's 16 x 16 = 256 images per optimiser step on one device (16 x 8 x 2 GPUs), exact "
                  "since the network has no BatchNorm; on N devices it is batch size x accumulate x N",
    "max_batch_fraction": ": batch size x accumulate is cut to this share of the training images, so that a "
                          "small set still gives several optimiser steps an epoch",
    "schedule": ": plateau (ReduceLROnPlateau on the validation loss, once per epoch) or cosine (linear warm-up "
                "then cosine decay, counted in optimiser steps)",
    "lr_patience": ": plateau only: the rate drops after lr_patience + 1 validations without improvement; keep it "
                   "below --patience minus 1, or the schedule never acts",
    "validation_interval": ": validate every this many optimiser steps (unset: once per epoch)",
    "patience": ": stop after this many validations without a lower validation loss",
    "node_loss_weight": ": the image classifier on each node against region labels (--region-findings, or the "
                        "cache's), for any variant; V4 always has 1",
    "contrastive_weight": ": supervised contrastive loss on the node embeddings: nodes of one region with the same "
                          "finding are pulled together",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser("train", help="train CheXtriev on a feature cache (PyTorch Lightning)")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory (chextriev features)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: checkpoint/, training.json, training_curves.png and Lightning's "
                             "logs; must not hold a checkpoint")
    add_training_arguments(parser)
    parser.set_defaults(handler=run)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, preset, training and regional-findings options (train and evaluate --folds share them)."""
    parser.add_argument("--variant", default="V6", choices=sorted(VARIANT_SETTINGS),
                        help="paper variant (default V6); V0 is the trained network without graph layers, not "
                             "the parameter-free region mean, which `chextriev evaluate` scores as a baseline")
    parser.add_argument("--retrieval", choices=RETRIEVALS, help="retrieval embedding (default multilevel)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help=f"training settings (default {DEFAULT_PRESET}: hundreds to thousands of images; paper: "
                             "the paper's for Chest ImaGenome's 226k); the options below override single settings")
    add_region_findings_arguments(parser)
    for name, kind in _SIZE_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help="model size override (default: paper)")
    for name, (field, kind) in _TRAINING_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=_preset_help(field) + _HELP_NOTES.get(name, ""))


def add_region_findings_arguments(parser: argparse.ArgumentParser) -> None:
    """--region-findings TABLE with --region-column and --region-label (train and evaluate share them)."""
    parser.add_argument("--region-findings", type=Path, metavar="TABLE",
                        help="CSV or JSON Lines naming the region of each image's finding (case_id or image column; "
                             "e.g. ../shared/data/jsrt/nodules.csv): node labels for the node losses")
    parser.add_argument("--region-column", default="zone",
                        help="its column naming the region: one of the 18 names or a lung zone such as "
                             "'right upper' (default zone)")
    parser.add_argument("--region-label", help="the cache label those regions belong to (default: the cache's "
                                               "only label)")


def run(args: argparse.Namespace) -> int:
    """Train and print a JSON summary (from rank 0 only)."""
    try:
        cache = FeatureCache.open(args.features)
        model_config, training, targets = training_from_args(args, cache)
        result = train(cache, model_config, training, args.out, region_targets=targets)
    except (ChextrievError, ValueError) as error:  # the configurations raise ValueError on bad settings
        return _fail(error)
    if result.global_rank == 0:
        summary = training_summary(result)
        write_training_report(args.out, summary, result.history)
        print(json.dumps(summary))
    return 0


def training_from_args(args: argparse.Namespace,
                       cache: FeatureCache) -> tuple[ModelConfig, TrainingConfig, RegionTargets | None]:
    """The model configuration, training settings and regional node labels the options ask for; ValueError
    or a ChextrievError for a bad combination."""
    overrides = {name: getattr(args, name) for name in (*_SIZE_OPTIONS, "retrieval") if getattr(args, name) is not None}
    settings = {field: getattr(args, name) for name, (field, _) in _TRAINING_OPTIONS.items()
                if getattr(args, name) is not None}
    if "devices" in settings and settings["devices"].isdigit():
        settings["devices"] = int(settings["devices"])
    training = TrainingConfig.preset(args.preset, **settings)
    model_config = ModelConfig.for_variant(args.variant, input_dim=cache.feature_dim,
                                           num_classes=len(cache.label_names), **overrides)
    return model_config, training, region_targets_from_args(args, cache)


def region_targets_from_args(args: argparse.Namespace, cache: FeatureCache) -> RegionTargets | None:
    """The node labels --region-findings asks for, or None."""
    if args.region_findings is None:
        return None
    label = args.region_label
    if label is None:
        if len(cache.label_names) != 1:
            raise ValueError(f"--region-label is needed: the cache has the labels {', '.join(cache.label_names)}")
        label = cache.label_names[0]
    return region_targets_from_table(cache, args.region_findings, args.region_column, label)


def _preset_help(field: str) -> str:
    values = {name: getattr(preset, field) for name, preset in PRESETS.items()}
    return "default " + ", ".join(f"{value} ({name})" for name, value in values.items())


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
