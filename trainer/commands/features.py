"""`chextriev features`: run the frozen backbone once over a dataset and cache its features (fp16).

Worker processes decode the images and, on the CPU, cut the exact crops while the backbone runs; on a
GPU the crops are cut there and the backbone is compiled (`--crops`, trainer.feature_pipeline).

Interrupted runs resume: run the same command again. Several GPUs or nodes: start it through
torchrun, e.g. `torchrun --nproc_per_node 4 -m service.cli features ...`; each process reads
RANK/WORLD_SIZE/LOCAL_RANK, takes every WORLD_SIZE-th image and uses GPU LOCAL_RANK, and all write
into the one cache directory, which must be on a filesystem they all see (trainer.feature_cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.backbones import BACKBONE_NAMES, build_backbone
from model.devices import select_device
from model.errors import ChextrievError
from model.feature_extractor import FeatureExtractor
from model.precision import DEVICE_CHOICES, DTYPES, dtype_named
from model.region_crops import REGION_CROPS, SINGLE, region_crops_named
from trainer.commands.dataset_options import add_dataset_arguments, dataset_from_args
from trainer.feature_cache import extract_features
from trainer.feature_pipeline import CROP_METHODS, feature_pipeline
from trainer.launch import launch_position


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` subcommand."""
    parser = subparsers.add_parser(
        "features", help="cache the frozen backbone's region and whole-image features of a dataset")
    parser.add_argument("--out", type=Path, required=True,
                        help="feature cache directory: created, or resumed when it holds this run's cache")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, required=True, help="frozen ImageNet backbone")
    parser.add_argument("--region-crops", choices=tuple(REGION_CROPS), default=SINGLE.name,
                        help="single: one crop per region, mean-pooled (the paper's); tiles: 2 x 2 overlapping "
                             "tiles per region at 4/3 the resolution, max-pooled, which finds small regional "
                             "findings better and costs 4x the backbone work (default single)")
    parser.add_argument("--weights", default="default",
                        help='"default", a weights name, or a local .pth/.safetensors file (default: default)')
    parser.add_argument("--batch-size", type=int, default=16, help="images per backbone batch (default 16)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto: this process's GPU when CUDA is present, else the CPU (default auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="backbone compute dtype; bfloat16 and float16 are fast on a GPU (default float32)")
    parser.add_argument("--workers", type=int,
                        help="processes decoding images while the backbone runs (default: none on the CPU, "
                             "where the backbone uses every core; every core but two with a GPU)")
    parser.add_argument("--crops", choices=CROP_METHODS, default="auto",
                        help="exact: model.crops, cut by the worker processes; device: roi_align on the device "
                             "with a compiled channels_last backbone (trainer.feature_pipeline); device-exact: "
                             "the same with model.crops on the device; auto: device on a GPU, exact elsewhere "
                             "(default auto)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip images that cannot be decoded, whose anatomy is invalid or in which the "
                             "anatomy model (--regions model) finds no chest (logged by case "
                             "id, marked skipped in the cache and left out of training and evaluation) "
                             "instead of stopping at the first")
    add_dataset_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Extract (or resume) this process's share of the features and print the cache's summary."""
    try:
        position = launch_position()
        dataset = dataset_from_args(args)
        region_crops = region_crops_named(args.region_crops)
        extractor = FeatureExtractor(build_backbone(args.backbone, args.weights, pooling=region_crops.pooling),
                                     device=select_device(args.device, position.local_rank),
                                     dtype=dtype_named(args.dtype), region_crops=region_crops)
        cache = extract_features(dataset, extractor, args.out, batch_size=args.batch_size,
                                 num_workers=args.workers, rank=position.rank, world_size=position.world_size,
                                 skip_bad_images=args.skip_bad_images,
                                 pipeline=feature_pipeline(extractor, args.crops))
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({**cache.summary(), "rank": position.rank, "world_size": position.world_size}))
    return 0
