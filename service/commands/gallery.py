"""`chextriev gallery import`: a gallery from a DICOMweb archive (PACS), its cases in the database.

Finds frontal CR/DX chest instances with QIDO-RS, fetches them with WADO-RS and writes the images,
an import log and a manifest (service.gallery_import), then records the cases in the service
database. Rerun it after an interruption: it resumes where it stopped. `--publish` goes on to a
published index snapshot with the existing commands, run as child processes (features, embed with
the model in service, index build), so the service's command line never loads the trainer itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from model.anatomy_model import AnatomyModel
from model.checkpoint import read_checkpoint_info
from model.errors import ChextrievError
from service.commands.arguments import positive_int
from service.db.case_import import import_cases
from service.dicomweb import DicomwebArchive
from service.gallery_import import MANIFEST_NAME, ImportRequest, case_records, import_gallery
from service.search_service import upload_limits_of
from service.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `gallery` subcommand and its `import` action."""
    parser = subparsers.add_parser("gallery", help="build a gallery from a DICOMweb archive (PACS)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    importer = actions.add_parser("import", help="import the frontal CR/DX chest instances of an archive")
    importer.add_argument("--dicomweb", metavar="URL",
                          help="the archive's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web "
                               "(default $CHEXTRIEV_DICOMWEB_URL; credentials from CHEXTRIEV_DICOMWEB_*)")
    importer.add_argument("--out", type=Path, required=True,
                          help="where the images, the import log and manifest.csv go (rerun: resume)")
    importer.add_argument("--modality", action="append", choices=("CR", "DX"),
                          help="studies holding this modality (repeatable; default CR and DX)")
    importer.add_argument("--from-date", metavar="YYYYMMDD", help="studies dated on or after this day")
    importer.add_argument("--to-date", metavar="YYYYMMDD", help="studies dated on or before this day")
    importer.add_argument("--study-limit", type=positive_int, help="at most this many studies")
    importer.add_argument("--findings", type=Path, metavar="CSV",
                          help="findings per case: a 'findings' column ('|'-separated) keyed by a sop_uid, "
                               "series_uid, study_uid or accession_number column")
    importer.add_argument("--publish", action="store_true",
                          help="then features, embeddings with the model in service ($CHEXTRIEV_CHECKPOINT) "
                               "and a snapshot published into $CHEXTRIEV_INDEX_STORE")
    importer.add_argument("--version", help="the published snapshot's version (default: the store's choice)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Import, record the cases, optionally publish; print a JSON summary."""
    settings = get_settings()
    if args.dicomweb:
        settings = settings.model_copy(update={"dicomweb_url": args.dicomweb})
    if settings.dicomweb_url is None:
        print("error: give the archive with --dicomweb URL or CHEXTRIEV_DICOMWEB_URL", file=sys.stderr)
        return 2
    dates = f"{args.from_date or ''}-{args.to_date or ''}" if args.from_date or args.to_date else None
    request = ImportRequest(out=args.out, modalities=tuple(args.modality or ("CR", "DX")), date_range=dates,
                            study_limit=args.study_limit, findings=args.findings)
    try:
        archive = DicomwebArchive.from_settings(settings)
        assert archive is not None
        anatomy = AnatomyModel.load(settings.anatomy_model)
        summary = import_gallery(archive, request, anatomy, upload_limits_of(settings), progress=_show_progress)
        salt = settings.patient_salt.get_secret_value() if settings.patient_salt is not None else None
        counts = import_cases(settings.database_url, case_records(summary.cases, summary.findings, salt))
    except (ChextrievError, SQLAlchemyError) as error:
        print(f"\nerror: {error}\nwhat was imported is kept in {args.out}; run the same command again to resume",
              file=sys.stderr)
        return 1
    report = {"studies": summary.studies, "instances": summary.instances, "imported": summary.imported,
              "already_imported": summary.already_imported, "skipped": summary.skipped,
              "cases": len(summary.cases), "inserted": counts.inserted, "updated": counts.updated,
              "manifest": str(args.out / MANIFEST_NAME)}
    if args.publish:
        try:
            status = publish(args.out, settings.checkpoint, settings.backbone_weights, settings.index_store,
                             args.version)
        except ChextrievError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if status != 0:
            return status
    print(json.dumps(report))
    return 0


def publish(out: Path, checkpoint: str, weights: str, store: str, version: str | None) -> int:
    """features -> embed -> index build of the imported manifest, each the existing command in a child
    process; the exit status of the first that fails, else 0. The features directory is named by the
    manifest's hash, so a larger import starts a new cache and a rerun resumes the same one."""
    manifest = out / MANIFEST_NAME
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]
    features, gallery = out / f"features-{digest}", out / f"gallery-{digest}.npz"
    backbone = read_checkpoint_info(checkpoint).backbone.name
    steps = [["features", "--manifest", str(manifest), "--backbone", backbone, "--weights", weights,
              "--out", str(features)],
             ["embed", "--features", str(features), "--checkpoint", checkpoint, "--split", "all",
              "--out", str(gallery)],
             ["index", "build", "--embeddings", str(gallery), "--store", store,
              *(["--version", version] if version else [])]]
    for step in steps:
        print(f"chextriev {' '.join(step)}", file=sys.stderr, flush=True)
        status = subprocess.run([sys.executable, "-m", "service.cli", *step], check=False).returncode
        if status != 0:
            print(f"error: `chextriev {step[0]}` failed ({status})", file=sys.stderr)
            return status
    return 0


def _show_progress(done: int, total: int) -> None:
    """A progress line on a terminal: instances handled of those found."""
    if sys.stderr.isatty():
        width = 30
        filled = width * done // max(total, 1)
        print(f"\rimport [{'#' * filled}{'.' * (width - filled)}] {done}/{total} instances", end="",
              file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)
