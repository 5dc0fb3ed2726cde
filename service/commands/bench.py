"""`chextriev bench`: gallery search speed (`search`), the index back ends compared (`backends`), peak
memory of a search at the limits (`peak-memory`), embedding speed of the fast CPU runtime against eager
PyTorch (`embed`), search over HTTP (`http`), the anatomy model's cost (`anatomy`), region-level search
(`regions`); and the benchmarks
other packages register in the entry-point group `chextriev.benches` (the trainer's `train`)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from index_store.bench import BenchConfig, run_search_benchmark
from index_store.errors import SnapshotError
from index_store.milvus_layout import INDEX_TYPES
from model.backbones import BACKBONE_NAMES
from model.errors import ChextrievError
from model.imaging import ImageLimits
from service.commands import bench_anatomy, bench_http, bench_regions
from service.commands.arguments import positive_int, positive_ints
from service.embed_bench import FAST_RUNTIMES, EmbedBenchConfig, run_embed_benchmark
from service.peak_memory import FORMATS, SHAPES, PeakMemoryConfig, run_peak_memory
from service.settings import Settings

# Benchmarks of other packages: each entry point is a function adding its subcommand to `benches`.
BENCH_GROUP = "chextriev.benches"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand and its `search`, `peak-memory` and `embed` benchmarks."""
    parser = subparsers.add_parser("bench", help="benchmarks")
    benches = parser.add_subparsers(dest="bench", required=True)
    search = benches.add_parser("search", help="build time, memory, latency and recall of FAISS indexes")
    search.add_argument("--sizes", required=True, type=positive_ints, help="gallery sizes, e.g. 10000,100000")
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
    _register_backends(benches)
    _register_peak_memory(benches)
    _register_embed(benches)
    bench_http.register(benches)
    bench_anatomy.register(benches)
    bench_regions.register(benches)
    for entry in entry_points(group=BENCH_GROUP):
        entry.load()(benches)


def _register_backends(benches: argparse._SubParsersAction) -> None:
    """Add the `backends` benchmark: the same queries on the local exact snapshot and on Milvus."""
    backends = benches.add_parser(
        "backends", help="local exact snapshot against Milvus (FLAT, HNSW, IVF_FLAT): build, open, memory, "
                         "latency p50/p99, recall@10")
    backends.add_argument("--sizes", required=True, type=positive_ints, help="gallery sizes, e.g. 100000,1000000")
    backends.add_argument("--dim", type=positive_int, default=1024, help="embedding dimension (default 1024)")
    backends.add_argument("--milvus-index", action="append", choices=INDEX_TYPES,
                          help="Milvus index type; repeat for several (default: all)")
    backends.add_argument("--milvus-uri", help="a Milvus server, e.g. http://milvus:19530, its token from "
                                               "CHEXTRIEV_MILVUS_TOKEN (default: milvus-lite in this process)")
    backends.add_argument("--work-dir", type=Path, help="where the temporary stores go (default: TMPDIR)")
    backends.add_argument("--out", type=Path, required=True, help="JSON report, rewritten atomically after each case")
    backends.add_argument("--repeats", type=positive_int, default=200, help="timed single queries per case")
    backends.set_defaults(handler=_backends)


def _register_peak_memory(benches: argparse._SubParsersAction) -> None:
    """Add the `peak-memory` benchmark: its limits default to the service's (service.settings)."""
    defaults = Settings.model_fields
    memory = benches.add_parser(
        "peak-memory", help="peak RSS of decoding and embedding the largest allowed image, one child process each")
    memory.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint directory")
    memory.add_argument("--out", type=Path, required=True,
                        help="JSON report, rewritten atomically after each case")
    memory.add_argument("--max-pixels", type=int, default=defaults["max_image_pixels"].default,
                        help="the service's max_image_pixels (default: the service's default)")
    memory.add_argument("--max-bytes", type=int, default=defaults["max_upload_bytes"].default,
                        help="the service's max_upload_bytes (default: the service's default)")
    memory.add_argument("--format", action="append", choices=FORMATS,
                        help="upload format; repeat for several (default: all)")
    memory.add_argument("--shape", action="append", choices=SHAPES,
                        help="image shape; repeat for several (default: all)")
    memory.set_defaults(handler=_peak_memory)


def _register_embed(benches: argparse._SubParsersAction) -> None:
    """Add the `embed` benchmark: eager float32 PyTorch against a fast runtime, on the CPU."""
    embed = benches.add_parser(
        "embed", help="embedding latency of a bundled radiograph: eager PyTorch against a fast CPU runtime")
    model = embed.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="model checkpoint directory")
    model.add_argument("--backbone", choices=BACKBONE_NAMES,
                       help="no checkpoint: this backbone with seeded random weights and a fresh network of "
                            "the paper's width (for ResNet50, whose weights need a download)")
    embed.add_argument("--runtime", choices=FAST_RUNTIMES, default="auto",
                       help="the fast path's backbone runtime (default auto)")
    embed.add_argument("--out", type=Path, required=True, help="JSON report, written atomically")
    embed.add_argument("--repeats", type=positive_int, default=30,
                       help="timed embeddings per path (default 30)")
    embed.set_defaults(handler=_embed)




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


def _backends(args: argparse.Namespace) -> int:
    from index_store.backend_bench import BackendBenchConfig, run_backend_benchmark  # imports pymilvus

    token = Settings().milvus_token
    config = BackendBenchConfig(sizes=args.sizes, out=args.out, dimension=args.dim,
                                milvus_indexes=tuple(args.milvus_index or INDEX_TYPES), milvus_uri=args.milvus_uri,
                                milvus_token=token.get_secret_value() if token is not None else "",
                                work_dir=args.work_dir, repeats=args.repeats)
    try:
        report = run_backend_benchmark(config)
    except SnapshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for case in report["results"]:
        print(f"{case['size']:>9} {case['backend']:>6} {case['factory']:>16}: build {case['build_seconds']} s, "
              f"open {case['open_seconds']} s, {case['rss_delta_bytes'] / 2**20:.0f} MiB, p50 "
              f"{case['latency_ms']['p50']} ms, p99 {case['latency_ms']['p99']} ms, "
              f"recall@10 {case['recall_at_10']}")
    print(f"wrote {args.out}")
    return 0


def _peak_memory(args: argparse.Namespace) -> int:
    config = PeakMemoryConfig(checkpoint=args.checkpoint, out=args.out,
                              limits=ImageLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels),
                              formats=tuple(args.format or FORMATS), shapes=tuple(args.shape or SHAPES))
    try:
        report = run_peak_memory(config)
    except ChextrievError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for case in report["cases"]:
        print(_peak_memory_line(case, report["baseline"]["peak_rss_bytes"]))
    print(f"wrote {args.out}")
    return 0


def _peak_memory_line(case: dict, baseline: int) -> str:
    mebibytes = {key: case[key] / 2**20 for key in ("peak_rss_bytes", "over_baseline_bytes")}
    return (f"{case['format']:>20} {case['shape']:>9} {case['width']} x {case['height']}: peak "
            f"{mebibytes['peak_rss_bytes']:.0f} MiB, {mebibytes['over_baseline_bytes']:.0f} MiB over the "
            f"model-only {baseline / 2**20:.0f} MiB")


def _embed(args: argparse.Namespace) -> int:
    config = EmbedBenchConfig(out=args.out, checkpoint=args.checkpoint, random_backbone=args.backbone,
                              runtime=args.runtime, repeats=args.repeats)
    try:
        report = run_embed_benchmark(config)
    except ChextrievError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{report['backbone']}, weights: {report['weights']}")
    for key in ("baseline", "fast"):
        path = report[key]
        print(f"{key:>8} ({path['runtime']}): p50 {path['p50_ms']} ms, p90 {path['p90_ms']} ms")
    print(f"p50 ratio {report['p50_ratio']}x, cosine {report['cosine']}")
    print(f"wrote {args.out}")
    return 0
