"""`chextriev bench search`: gallery-search benchmark on synthetic clustered unit vectors (index_store.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from index_store.bench import BenchConfig, run_search_benchmark
from index_store.errors import SnapshotError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand and its `search` benchmark."""
    parser = subparsers.add_parser("bench", help="benchmarks")
    benches = parser.add_subparsers(dest="bench", required=True)
    search = benches.add_parser("search", help="build time, memory, latency and recall of FAISS indexes")
    search.add_argument("--sizes", required=True, type=_int_list, help="gallery sizes, e.g. 10000,100000")
    search.add_argument("--dim", type=int, default=1024, help="embedding dimension (default 1024)")
    search.add_argument(
        "--factory", action="append", required=True, help="FAISS factory string; repeat for several"
    )
    search.add_argument(
        "--out", type=Path, required=True, help="JSON report, rewritten atomically after each case"
    )
    search.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    search.add_argument("--repeats", type=int, default=50, help="timed runs per batch size (default 50)")
    search.set_defaults(handler=_search)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _search(args: argparse.Namespace) -> int:
    config = BenchConfig(
        sizes=args.sizes,
        dimension=args.dim,
        factories=tuple(args.factory),
        out=args.out,
        device=args.device,
        repeats=args.repeats,
    )
    try:
        run_search_benchmark(config)
    except SnapshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
