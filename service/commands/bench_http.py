"""`chextriev bench http`: POST /search end to end over HTTP against real uvicorn servers (service.http_bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.commands.arguments import positive_int, positive_ints
from service.http_bench import BACKBONE, CONFIGURATIONS, DEFAULT_WORK_DIR, RESNET50, HttpBenchConfig, run_http_benchmark


def register(benches: argparse._SubParsersAction) -> None:
    """Add the `http` benchmark to `chextriev bench`."""
    http = benches.add_parser(
        "http", help="POST /search over HTTP against real servers: eager, fast and batched configurations")
    http.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                      help=f"the demo work directory, built first if needed (default {DEFAULT_WORK_DIR})")
    http.add_argument("--out", type=Path, required=True, help="JSON report, rewritten atomically after each server")
    http.add_argument("--config", action="append", choices=tuple(CONFIGURATIONS),
                      help="server configuration; repeat for several (default: all)")
    http.add_argument("--requests", type=positive_int, default=40,
                      help="searches per level of clients, at least 2 per client (default 40)")
    http.add_argument("--clients", type=positive_ints, default=(1, 8, 32),
                      help="concurrent clients of each level (default 1,8,32)")
    http.add_argument("--extra-gallery", type=positive_ints, default=(),
                      help="also serve the demo grown by N synthetic cases, e.g. 100000,1000000")
    http.add_argument("--backbone", choices=(BACKBONE, RESNET50), default=BACKBONE,
                      help=f"{RESNET50}: serve a demo built in the scratch directory on random ResNet50 weights")
    http.add_argument("--scratch-dir", type=Path,
                      help="where grown galleries, the ResNet50 demo and server logs go, kept (default: a "
                           "temporary directory, removed)")
    http.add_argument("--without-regions", action="store_true",
                      help="send every search without regions, so the anatomy model finds them")
    http.set_defaults(handler=_http)




def _http(args: argparse.Namespace) -> int:
    config = HttpBenchConfig(work_dir=args.work_dir, out=args.out,
                             configurations=tuple(args.config or CONFIGURATIONS), requests=args.requests,
                             clients=args.clients, extra_gallery=args.extra_gallery, backbone=args.backbone,
                             scratch_dir=args.scratch_dir, send_regions=not args.without_regions)
    try:
        report = run_http_benchmark(config)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for server in report["servers"]:
        levels = ", ".join(f"{level['clients']} clients p50 {level['p50_ms']} ms {level['throughput_rps']} req/s"
                           for level in server["levels"])
        print(f"{server['name']:>16} ready {server['ready_seconds']} s, peak RSS "
              f"{server['peak_rss_bytes'] / 2**20:.0f} MiB: {levels}")
    print(f"wrote {args.out}")
    return 0
