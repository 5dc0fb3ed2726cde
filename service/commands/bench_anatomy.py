"""`chextriev bench anatomy`: the anatomy model's cost per radiograph in the service (service.anatomy_bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.anatomy_bench import DEFAULT_SIDES, AnatomyBenchConfig, run_anatomy_benchmark
from service.commands.arguments import positive_int, positive_ints


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `anatomy` benchmark to `chextriev bench`."""
    anatomy = benches.add_parser("anatomy", help="decode and region-finding time per radiograph, by image size")
    anatomy.add_argument("--model", type=Path, help="anatomy model ONNX file (default: the shipped one)")
    anatomy.add_argument("--out", type=Path, required=True, help="JSON report, rewritten atomically after each size")
    anatomy.add_argument("--sides", type=positive_ints, default=DEFAULT_SIDES,
                         help="longer sides to upscale the bundled radiographs to, besides their own size "
                              f"(default {','.join(map(str, DEFAULT_SIDES))})")
    anatomy.add_argument("--rounds", type=positive_int, default=3, help="timed passes over the radiographs (default 3)")
    anatomy.set_defaults(handler=_anatomy)


def _anatomy(args: argparse.Namespace) -> int:
    report = run_anatomy_benchmark(AnatomyBenchConfig(out=args.out, model=args.model, sides=args.sides,
                                                      rounds=args.rounds))
    for size in report["sizes"]:
        print(f"longer side {size['longer_side']}: decode p50 {size['decode']['p50_ms']} ms, anatomy p50 "
              f"{size['anatomy']['p50_ms']} ms (p90 {size['anatomy']['p90_ms']} ms), {size['refused']} refused")
    print(f"wrote {args.out}")
    return 0
