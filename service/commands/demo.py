"""`chextriev demo`: build the demo gallery from the bundled radiographs (once) and serve it.

The first start extracts features, trains a small model briefly, publishes the index snapshot and
records the cases (service.demo_build); later starts reuse all of it and are ready in seconds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from index_store.errors import SnapshotError
from model.errors import ChextrievError
from service.commands.serve import serve
from service.demo_build import DEFAULT_WORK_DIR, DemoBuild, build_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="build a demo gallery from the bundled radiographs (first start only) and serve it")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"where the demo's model, index, database and build record live "
                             f"(default {DEFAULT_WORK_DIR})")
    parser.add_argument("--host", help="address to listen on (default $CHEXTRIEV_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default $CHEXTRIEV_PORT or 8000)")
    parser.add_argument("--rebuild", action="store_true", help="build everything again, reusing nothing")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the demo, print its record, exit")
    parser.add_argument("--no-occlusion", action="store_true",
                        help="leave the occlusion embeddings out of the snapshot: a first build several times "
                             "faster on a CPU, after which /saliency computes them per case when asked")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the demo, then serve it until interrupted (or print the build record and exit)."""
    try:
        build = build_demo(args.work_dir, rebuild=args.rebuild, occlusion=not args.no_occlusion)
    except (ChextrievError, SnapshotError, CommandError, SQLAlchemyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.build_only:
        print(json.dumps(build.record))
        return 0
    overrides = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = build.settings.model_copy(update=overrides)
    print(_welcome(build, f"http://{settings.host}:{settings.port}"), flush=True)
    serve(settings)
    return 0


def _welcome(build: DemoBuild, url: str) -> str:
    """What the demo serves and a search to try."""
    record = build.record
    steps = ", ".join(f"{step} {action}" for step, action in record["steps"].items())
    command = ["curl", "-s", f"{url}/search", "-F", f"image=@{build.example_image}",
               "-F", f"regions=<{build.example_regions}", "-F", "k=5"]
    return (f"CheXtriev demo: {record['cases']} cases, index snapshot {record['snapshot_version']}, "
            f"model {record['checkpoint_fingerprint'][:12]} ({steps}; {record['seconds']} s)\n"
            f"Serving {url} (API documentation: {url}/docs). Try a search:\n  {shlex.join(command)}")
