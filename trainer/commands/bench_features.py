"""`chextriev bench features`: images/s of batch feature extraction, the research baseline beside the
fast path of `chextriev features` (trainer.feature_bench). `register` adds it to `chextriev bench`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.backbones import BACKBONE_NAMES
from model.errors import ChextrievError
from model.precision import DEVICE_CHOICES, DTYPES
from trainer.commands.bench_train import _positive
from trainer.commands.dataset_options import add_dataset_arguments, dataset_from_args
from trainer.feature_bench import FeatureBenchConfig, run_feature_bench
from trainer.feature_pipeline import CROP_METHODS


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `features` benchmark to the subparsers of `chextriev bench`."""
    parser = benches.add_parser("features", help="images/s of feature extraction: research baseline against "
                                                 "the fast path of `chextriev features`")
    parser.add_argument("--out", type=Path, required=True, help="JSON report, written atomically")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto)")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="efficientnet_lite0",
                        help="frozen backbone (default efficientnet_lite0)")
    parser.add_argument("--weights", default="default",
                        help='"default", a weights name, a local file, or "random" (speed only; default default)')
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="fast path's compute dtype")
    parser.add_argument("--crops", choices=CROP_METHODS, default="auto", help="fast path's crops (see features)")
    parser.add_argument("--no-compile", action="store_true", help="fast path on a GPU: eager backbone")
    parser.add_argument("--images", type=_positive, default=64,
                        help="bundled radiographs repeated to this count (default 64); a manifest's all")
    parser.add_argument("--baseline-images", type=_positive, help="images of the baseline (default: all)")
    parser.add_argument("--warmup-images", type=_positive, default=8, help="untimed images per path (default 8)")
    parser.add_argument("--batch-size", type=_positive, default=16, help="images per batch (default 16)")
    parser.add_argument("--baseline-batch-size", type=_positive, help="baseline's (default: --batch-size)")
    parser.add_argument("--workers", type=int,
                        help="decoding worker processes (default: as chextriev features, none on the CPU)")
    add_dataset_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    config = FeatureBenchConfig(
        out=args.out, device=args.device, backbone=args.backbone,
        weights=None if args.weights == "random" else args.weights, dtype=args.dtype, crops=args.crops,
        compile_backbone=False if args.no_compile else None, images=args.images,
        baseline_images=args.baseline_images, warmup_images=args.warmup_images, batch_size=args.batch_size,
        baseline_batch_size=args.baseline_batch_size, workers=args.workers)
    try:
        dataset = dataset_from_args(args) if _names_a_dataset(args) else None
        report = run_feature_bench(config, dataset)
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"baseline_images_per_s": report["baseline"]["images_per_s"],
                      "fast_images_per_s": report["fast"]["images_per_s"], "speedup": report["speedup"],
                      "agreement_with_baseline": report["agreement_with_baseline"]}))
    return 0


def _names_a_dataset(args: argparse.Namespace) -> bool:
    return bool(args.manifest or args.imagenome_scene_graphs)
