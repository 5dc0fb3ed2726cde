"""`chextriev bench saliency`: occlusion embeddings on demand against re-embedding every blanked image
(trainer.saliency_bench); `chextriev bench saliency-noise`: the noise floor of the similarity drops
(trainer.saliency_noise). `register` adds both to the `bench` subcommand's benchmarks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from model.errors import ChextrievError
from trainer.saliency_bench import SaliencyBenchConfig, run_saliency_bench
from trainer.saliency_noise import SaliencyNoiseConfig, run_saliency_noise


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `saliency` and `saliency-noise` benchmarks to the subparsers of `chextriev bench`."""
    parser = benches.add_parser(
        "saliency", help="occlusion embeddings of a case on demand against re-embedding each blanked image")
    _common_arguments(parser, default_cases=8, what="bundled radiographs to time")
    parser.set_defaults(handler=run)
    noise = benches.add_parser(
        "saliency-noise", help="how much similarity drops change when the same radiograph is embedded again "
                               "(1-2 px shifts, JPEG re-encoding): the noise floor of saliency")
    _common_arguments(noise, default_cases=12, what="bundled radiographs used as retrieved cases")
    noise.set_defaults(handler=run_noise)


def _common_arguments(parser: argparse.ArgumentParser, *, default_cases: int, what: str) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON report, written atomically")
    parser.add_argument("--cases", type=int, default=default_cases, choices=range(1, 49), metavar="N",
                        help=f"{what}, 1 to 48 (default {default_cases})")


def run(args: argparse.Namespace) -> int:
    """Run the timing benchmark and print its figures."""
    return _run_and_print(lambda: run_saliency_bench(SaliencyBenchConfig(args.checkpoint, args.out, args.cases)),
                          lambda report: f"from scratch p50 {report['baseline']['p50_ms']} ms, on demand p50 "
                                         f"{report['on_demand']['p50_ms']} ms ({report['p50_ratio']}x), "
                                         f"max difference {report['max_abs_difference']}", args.out)


def run_noise(args: argparse.Namespace) -> int:
    """Run the noise measurement and print the floor it suggests."""
    return _run_and_print(lambda: run_saliency_noise(SaliencyNoiseConfig(args.checkpoint, args.out, args.cases)),
                          _noise_summary, args.out)


def _noise_summary(report: dict) -> str:
    change = report["drop_change_all"]
    return (f"{report['pairs']} pairs: drops change by p50 {change['abs_p50']}, p99 {change['abs_p99']}, "
            f"max {change['abs_max']}; drops themselves p99 {report['drops']['abs_p99']}; "
            f"suggested noise floor {report['suggested_noise_floor']} (default {report['default_noise_floor']})")


def _run_and_print(benchmark: Callable[[], dict], summary: Callable[[dict], str], out: Path) -> int:
    """Run `benchmark`; print its summary and where its report went (0), or the error (1)."""
    try:
        report = benchmark()
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(report))
    print(f"wrote {out}")
    return 0
