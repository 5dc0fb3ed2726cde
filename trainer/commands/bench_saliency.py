"""`chextriev bench saliency`: occlusion embeddings on demand against re-embedding every blanked image
(trainer.saliency_bench). `register` adds it to the `bench` subcommand's benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.errors import ChextrievError
from trainer.saliency_bench import SaliencyBenchConfig, run_saliency_bench


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `saliency` benchmark to the subparsers of `chextriev bench`."""
    parser = benches.add_parser(
        "saliency", help="occlusion embeddings of a case on demand against re-embedding each blanked image")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON report, written atomically")
    parser.add_argument("--cases", type=int, default=8, choices=range(1, 49), metavar="N",
                        help="bundled radiographs to time, 1 to 48 (default 8)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    try:
        report = run_saliency_bench(SaliencyBenchConfig(args.checkpoint, args.out, args.cases))
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"from scratch p50 {report['baseline']['p50_ms']} ms, on demand p50 {report['on_demand']['p50_ms']} ms "
          f"({report['p50_ratio']}x), max difference {report['max_abs_difference']}")
    print(f"wrote {args.out}")
    return 0
