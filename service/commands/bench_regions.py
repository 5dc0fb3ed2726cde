"""`chextriev bench regions`: region-level search, the exact scan against re-ranking a whole-image
shortlist (index_store.region_bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from index_store.region_bench import RegionBenchConfig, run_region_benchmark
from service.commands.arguments import positive_int, positive_ints


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `regions` benchmark to `chextriev bench`."""
    regions = benches.add_parser(
        "regions", help="region-level search: exact scan vs shortlist re-ranking, latency p50/p99, recall@10, "
                        "region file size, growth with the gallery size")
    regions.add_argument("--sizes", required=True, type=positive_ints, help="gallery sizes, e.g. 10000,100000")
    regions.add_argument("--dims", type=positive_ints, default=(256,), help="embedding dimensions (default 256)")
    regions.add_argument("--regions-of-interest", type=positive_ints, default=(1, 2, 4),
                         help="how many regions of interest per query (default 1,2,4)")
    regions.add_argument("--shortlists", type=positive_ints, default=(100, 1000),
                         help="shortlist sizes M to re-rank (default 100,1000)")
    regions.add_argument("--queries", type=positive_int, default=50, help="distinct queries (default 50)")
    regions.add_argument("--repeats", type=positive_int, default=50, help="timed single queries per case")
    regions.add_argument("--work-dir", type=Path, help="where the temporary snapshots go (default: TMPDIR)")
    regions.add_argument("--out", type=Path, required=True, help="JSON report, rewritten atomically after each case")
    regions.set_defaults(handler=_regions)


def _regions(args: argparse.Namespace) -> int:
    report = run_region_benchmark(RegionBenchConfig(
        sizes=args.sizes, out=args.out, dimensions=args.dims, regions_of_interest=args.regions_of_interest,
        shortlists=args.shortlists, queries=args.queries, repeats=args.repeats, work_dir=args.work_dir))
    for result in report["results"]:
        print(f"N={result['size']} D={result['dimension']} regions={result['regions_of_interest']} "
              f"{result['mode']}: p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms, "
              f"recall@10 {result['recall_at_10']}")
    for row in report["growth"]:
        print(f"D={row['dimension']} regions={row['regions_of_interest']} {row['mode']}: latency ~ size^"
              f"{row['slope_log_latency_per_log_size']}")
    print(f"wrote {args.out}")
    return 0
