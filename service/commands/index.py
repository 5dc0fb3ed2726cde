"""`chextriev index build|publish|list|clean`: snapshots of gallery embeddings in an index back end.

`build` reads the gallery embeddings file the offline trainer writes (format: index_store.gallery)
and either publishes the snapshot straight into the configured back end (CHEXTRIEV_INDEX_BACKEND or
`--backend`: the local store `--store`, default CHEXTRIEV_INDEX_STORE, or Milvus at CHEXTRIEV_MILVUS_URI)
or writes it into a new staging directory (`--out`) that `publish` later verifies and publishes
atomically into the back end. `list` lists the back end's versions. `clean` removes what killed
publishers left: staging directories (every publish does so too) and, in Milvus, staging collections
older than a day.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

from index_store.backend import IndexBackend
from index_store.errors import SnapshotError
from index_store.faiss_index import EXACT_FACTORY
from index_store.gallery import read_gallery_npz, resolve_fingerprint
from index_store.store import build_snapshot
from service.index_backend import make_backend
from service.settings import SettingsError, read_settings

_LIST_COLUMNS = ("version", "created", "count", "dimension", "factory", "model_fingerprint")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `index` subcommand and its actions."""
    parser = subparsers.add_parser("index", help="build, publish, list and clean index snapshots")
    actions = parser.add_subparsers(dest="action", required=True)

    build = actions.add_parser("build", help="build a snapshot from a gallery embeddings .npz")
    build.add_argument("--embeddings", type=Path, required=True, help="gallery embeddings .npz")
    _add_backend_arguments(build, "publish the snapshot atomically into this local index store "
                                  "(Milvus: the directory of the occlusion and region sidecars)")
    build.add_argument("--out", type=Path, help="instead, write a local snapshot into this new staging directory")
    build.add_argument("--version", help="snapshot version (default: the UTC build time)")
    build.add_argument(
        "--factory", help='FAISS factory string (default "Flat": exact); Milvus: FLAT (default), HNSW or IVF_FLAT'
    )
    build.add_argument(
        "--search-params", help='search parameters, e.g. "nprobe=32" (FAISS, Milvus IVF_FLAT) or "ef=128" '
                                "(Milvus HNSW); default per index type"
    )
    build.add_argument("--model-fingerprint", help="model fingerprint (default: the one in the .npz)")
    build.set_defaults(handler=_build)

    publish = actions.add_parser("publish", help="verify a staged snapshot and publish it into the index back end")
    publish.add_argument("--snapshot", type=Path, required=True, help="snapshot directory built with --out")
    _add_backend_arguments(publish, "local index store directory (Milvus: the directory of the occlusion and region "
                                    "sidecars); Milvus takes an exact (Flat) snapshot, published as FLAT")
    publish.add_argument("--as-version", help="publish a copy under this version instead of the snapshot's own "
                                              "(e.g. a published one again, to rehearse activations)")
    publish.set_defaults(handler=_publish)

    listing = actions.add_parser("list", help="list the snapshots of the index back end, oldest first")
    _add_backend_arguments(listing, "local index store directory")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list)

    clean = actions.add_parser("clean", help="remove what dead publishers left: staging directories, and in "
                                             "Milvus staging collections older than a day")
    _add_backend_arguments(clean, "local index store directory (Milvus: the directory of the occlusion and region "
                                  "sidecars)")
    clean.set_defaults(handler=_clean)


def _add_backend_arguments(parser: argparse.ArgumentParser, store_help: str) -> None:
    parser.add_argument("--backend", choices=("local", "milvus"),
                        help="index back end (default: CHEXTRIEV_INDEX_BACKEND, else local)")
    parser.add_argument("--store", type=Path, help=f"{store_help} (default: CHEXTRIEV_INDEX_STORE)")


def _backend(args: argparse.Namespace) -> IndexBackend:
    """The back end of the settings, with `--backend` and `--store` given on the command line instead."""
    given = {"index_backend": args.backend, "index_store": None if args.store is None else str(args.store)}
    settings = read_settings()
    return make_backend(settings.model_copy(update={k: v for k, v in given.items() if v is not None}))


def _build(args: argparse.Namespace) -> int:
    if args.out is not None and (args.store is not None or args.backend == "milvus"):
        print("error: --out writes a local staging directory; it goes without --store and --backend milvus",
              file=sys.stderr)
        return 2
    try:
        gallery, file_fingerprint = read_gallery_npz(args.embeddings)
        options = {
            "model_fingerprint": resolve_fingerprint(args.model_fingerprint, file_fingerprint),
            "search_parameters": args.search_params,
            "version": args.version,
        }
        if args.out is None:
            with closing(_backend(args)) as backend:
                manifest = backend.publish_gallery(gallery, factory=args.factory, **options)
        else:
            manifest = build_snapshot(args.out, gallery, factory=args.factory or EXACT_FACTORY, **options)
    except (SnapshotError, SettingsError) as exc:
        return _fail(exc)
    print(json.dumps(manifest.summary()))
    return 0


def _publish(args: argparse.Namespace) -> int:
    try:
        with closing(_backend(args)) as backend:
            manifest = backend.publish_directory(args.snapshot, version=args.as_version)
    except (SnapshotError, SettingsError) as exc:
        return _fail(exc)
    print(json.dumps(manifest.summary()))
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        with closing(_backend(args)) as backend:
            entries = backend.list_snapshots()
    except (SnapshotError, SettingsError) as exc:
        return _fail(exc)
    rows = [entry.summary() for entry in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [list(_LIST_COLUMNS)] + [
        [str(row[c]) for c in _LIST_COLUMNS] for row in rows if row["problem"] is None
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(_LIST_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for row in rows:
        if row["problem"] is not None:
            print(f"{row['version']}  UNREADABLE: {row['problem']}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    try:
        with closing(_backend(args)) as backend:
            removed = backend.remove_abandoned_staging()
    except (SnapshotError, SettingsError) as exc:
        return _fail(exc)
    for path in removed:
        print(f"removed {path}")
    return 0


def _fail(exc: SnapshotError | SettingsError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1
