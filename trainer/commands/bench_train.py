"""`chextriev bench train`: epoch time of training on a feature cache beside its pure compute time
(trainer.train_bench). `register` adds it to the `bench` subcommand's benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.config import VARIANT_SETTINGS
from model.errors import ChextrievError
from trainer.feature_cache import FeatureCache
from trainer.train_bench import run_train_bench


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `train` benchmark to the subparsers of `chextriev bench`."""
    parser = benches.add_parser("train", help="epoch time of both training paths beside the pure compute time")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory (chextriev features)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report, written atomically")
    parser.add_argument("--epochs", type=_positive, default=3, help="epochs per training path (default 3)")
    parser.add_argument("--variant", default="V6", choices=sorted(VARIANT_SETTINGS), help="paper variant (default V6)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the report's figures."""
    try:
        report = run_train_bench(FeatureCache.open(args.features), args.variant, args.epochs, args.out)
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"compute_seconds_per_epoch": report["compute_seconds_per_epoch"],
                      **{name: path["median_epoch_seconds"] for name, path in report["paths"].items()}}))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
