"""`chextriev train`: train the projection and graph transformer on a feature cache (trainer.training).

Several processes need no other option than the Lightning ones: `--devices 2 --strategy ddp` lets
Lightning start the second process, and `torchrun --nproc_per_node N -m service.cli train ...
--devices N --strategy ddp` (add `--num-nodes` across nodes) runs under torchrun unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model.config import RETRIEVALS, VARIANT_SETTINGS, ModelConfig
from model.errors import ChextrievError
from trainer.feature_cache import FeatureCache
from trainer.training import TrainingConfig, train

_DEFAULTS = TrainingConfig()
# Model size options (all optional; the variant's paper sizes otherwise): argparse name -> ModelConfig field.
_SIZE_OPTIONS = {"width": int, "num_layers": int, "num_heads": int, "head_dim": int, "ff_dim": int, "dropout": float}
# Training options: argparse name -> (TrainingConfig field, type).
_TRAINING_OPTIONS = {
    "epochs": ("max_epochs", int), "batch_size": ("batch_size", int),
    "accumulate": ("accumulate_grad_batches", int), "lr": ("lr", float), "lr_factor": ("lr_factor", float),
    "lr_patience": ("lr_patience", int), "patience": ("patience", int), "gradient_clip": ("gradient_clip", float),
    "seed": ("seed", int), "accelerator": ("accelerator", str), "devices": ("devices", str),
    "num_nodes": ("num_nodes", int), "strategy": ("strategy", str), "precision": ("precision", str),
}
# What the defaults of some training options mean, after "default N".
_HELP_NOTES = {
    "accumulate": f": {_DEFAULTS.batch_size} x {_DEFAULTS.accumulate_grad_batches} = "
                  f"{_DEFAULTS.batch_size * _DEFAULTS.accumulate_grad_batches} images per optimiser step on one "
                  "device, the paper's effective batch (16 x 8 x 2 GPUs), exact since the network has no "
                  "BatchNorm; on N devices it is batch size x accumulate x N, so pass 8 on two",
    "lr_patience": f": the learning rate drops after {_DEFAULTS.lr_patience + 1} validations without improvement, "
                   f"before early stopping (--patience, default {_DEFAULTS.patience}) ends the run; keep it "
                   "below --patience minus 1, or the schedule never acts",
    "patience": ": stop after this many validations without a lower validation loss; keep --lr-patience below "
                "it minus 1 so the learning rate can drop first",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser("train", help="train CheXtriev on a feature cache (PyTorch Lightning)")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory (chextriev features)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: checkpoint/ and Lightning's logs; must not hold a checkpoint")
    parser.add_argument("--variant", default="V6", choices=sorted(VARIANT_SETTINGS),
                        help="paper variant (default V6); V0 is the trained network without graph layers, not "
                             "the parameter-free region mean, which `chextriev evaluate` scores as a baseline")
    parser.add_argument("--retrieval", choices=RETRIEVALS, help="retrieval embedding (default multilevel)")
    for name, kind in _SIZE_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help="model size override (default: paper)")
    for name, (field, kind) in _TRAINING_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind,
                            help=f"default {getattr(_DEFAULTS, field)}{_HELP_NOTES.get(name, '')}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train and print a JSON summary (from rank 0 only)."""
    overrides = {name: getattr(args, name) for name in (*_SIZE_OPTIONS, "retrieval") if getattr(args, name) is not None}
    settings = {field: getattr(args, name) for name, (field, _) in _TRAINING_OPTIONS.items()
                if getattr(args, name) is not None}
    if "devices" in settings and settings["devices"].isdigit():
        settings["devices"] = int(settings["devices"])
    try:
        training = TrainingConfig(**settings)
        cache = FeatureCache.open(args.features)
        model_config = ModelConfig.for_variant(args.variant, input_dim=cache.feature_dim,
                                               num_classes=len(cache.label_names), **overrides)
    except (ChextrievError, ValueError) as error:  # the configurations raise ValueError on bad settings
        return _fail(error)
    try:
        result = train(cache, model_config, training, args.out)
    except ChextrievError as error:
        return _fail(error)
    if result.global_rank == 0:
        summary = dataclasses.asdict(result)
        summary["checkpoint_dir"] = str(result.checkpoint_dir)
        print(json.dumps(summary))
    return 0


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
