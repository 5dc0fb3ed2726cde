"""`chextriev demo`: build the demo gallery from the bundled radiographs (once) and serve it.

The first start extracts features, trains a small model briefly and publishes the index snapshot
(trainer.demo.build), then records the cases in the service's database (DemoDatabase, here); later
starts reuse all of it and are ready in seconds. This is the one service module that imports the
trainer: it composes the offline build and the service.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from alembic.util.exc import CommandError
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from index_store.errors import SnapshotError
from model.backbones import BACKBONE_NAMES
from model.errors import ChextrievError
from model.patient_keys import patient_hash
from model.region_crops import REGION_CROPS, SINGLE
from service.commands.serve import serve
from service.db.migrate import current_revision, head_revision, upgrade
from service.db.repository import CaseRecord, upsert_cases
from service.db.session import make_engine, make_session_factory, session_scope
from service.settings import Settings, get_settings
from trainer.demo.build import (
    BACKBONE,
    DEFAULT_WEIGHTS,
    DEFAULT_WORK_DIR,
    Compute,
    DemoBuild,
    DemoCase,
    DemoPaths,
    build_demo,
)
from trainer.demo.samples import SAMPLE_DIR

logger = logging.getLogger(__name__)


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
    parser.add_argument("--occlusion", action="store_true",
                        help="precompute every case's occlusion embeddings into the snapshot (a first build "
                             "several times slower on a CPU); without them /saliency computes a case's "
                             "when first asked and caches them")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default=BACKBONE,
                        help=f"the frozen backbone (default {BACKBONE})")
    parser.add_argument("--backbone-weights", default=DEFAULT_WEIGHTS,
                        help="the backbone's weight file (default: its packaged or published ImageNet weights)")
    parser.add_argument("--region-crops", choices=tuple(REGION_CROPS), default=SINGLE.name,
                        help="the crop scheme of the features and the model (model.region_crops; default single)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the demo, then serve it until interrupted (or print the build record and exit)."""
    try:
        base = get_settings()
        salt = base.patient_salt.get_secret_value() if base.patient_salt is not None else None
        build = build_demo(args.work_dir, DemoDatabase, rebuild=args.rebuild, occlusion=args.occlusion,
                           compute=Compute(base.device, base.dtype), configured_salt=salt,
                           backbone=args.backbone, backbone_weights=args.backbone_weights,
                           region_crops=args.region_crops)
    except (ChextrievError, SnapshotError, CommandError, SQLAlchemyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.build_only:
        print(json.dumps(build.record))
        return 0
    overrides = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = demo_settings(build.paths, build.salt, build.record, **overrides)
    print(_welcome(build, f"http://{settings.host}:{settings.port}"), flush=True)
    serve(settings)
    return 0


def _welcome(build: DemoBuild, url: str) -> str:
    """What the demo serves and a search to try."""
    record = build.record
    steps = ", ".join(f"{step} {action}" for step, action in record["steps"].items())
    search = ["curl", "-s", f"{url}/search", "-F", f"image=@{build.example_image}", "-F", "k=5"]
    with_regions = [*search, "-F", f"regions=<{build.example_regions}"]
    return (f"CheXtriev demo: {record['cases']} cases, index snapshot {record['snapshot_version']}, "
            f"model {record['checkpoint_fingerprint'][:12]} ({steps}; {record['seconds']} s)\n"
            f"Serving {url} (API documentation: {url}/docs). Try a search (the anatomy model finds the "
            f"regions):\n  {shlex.join(search)}\nor with your own 18 region boxes:\n  {shlex.join(with_regions)}")


def demo_settings(paths: DemoPaths, salt: str, record: dict[str, Any], **overrides: Any) -> Settings:
    """Service settings over a demo build and its build `record` (snapshot version, backbone weights);
    the rest (admin token, device, runtime, limits) from CHEXTRIEV_*."""
    values = {"database_url": paths.database_url, "index_store": str(paths.index_store),
              "checkpoint": str(paths.checkpoint), "image_root": str(SAMPLE_DIR),
              "patient_salt": SecretStr(salt), "active_version": record["snapshot_version"],
              "backbone_weights": record["backbone"]["weights"]}
    return get_settings().model_copy(update={**values, **overrides})


class DemoDatabase:
    """The demo's case store: the SQLite service database in the work directory, patients as salted hashes."""

    def __init__(self, paths: DemoPaths, salt: str):
        self.paths, self.salt = paths, salt

    def revision(self) -> str | None:
        """The database's revision when the file exists and is at the newest migration."""
        if not self.paths.database.is_file():
            return None
        revision = current_revision(self.paths.database_url)
        return revision if revision is not None and revision == head_revision() else None

    def fill(self, cases: list[DemoCase]) -> str:
        """Migrate the database and upsert every case; returns the revision."""
        revision = upgrade(self.paths.database_url)
        engine = make_engine(self.paths.database_url)
        try:
            with session_scope(make_session_factory(engine)) as session:
                counts = upsert_cases(session, [self._record(case) for case in cases])
        finally:
            engine.dispose()
        logger.info("demo cases recorded", extra={"inserted": counts.inserted, "updated": counts.updated})
        return revision

    def _record(self, case: DemoCase) -> CaseRecord:
        return CaseRecord(
            case_id=case.case_id,
            patient_hash=patient_hash(case.patient_id, self.salt) if case.patient_id else None,
            study_uid=None, series_uid=None, sop_uid=None,
            findings=case.findings, region_boxes=case.region_boxes, image_path=case.image_path,
            width=case.width, height=case.height, metadata=case.metadata)
