"""`chextriev cases import`: record the cases of a manifest in the service database.

Findings, regions, size, allow-listed metadata and the patient as a salted hash, so that search
results carry them.

A gallery published with `chextriev index build` from a manifest has its embeddings in the index
store; its cases come into the database here (a demo's and an archive import's are recorded by
their own commands). The manifest is read by the trainer's reader with the options of `chextriev
features`, so this is, with `demo`, one of the service modules that reach into the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from model.errors import ChextrievError
from model.imaging import decode_image
from model.patient_keys import patient_hash
from service.db.case_import import import_cases
from service.db.repository import CaseRecord
from service.public_fields import public_metadata
from service.settings import get_settings
from trainer.commands.dataset_options import add_dataset_arguments, dataset_from_args
from trainer.datasets.records import ImageRecord


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cases` subcommand and its `import` action."""
    parser = subparsers.add_parser("cases", help="record a manifest's cases in the service database")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    importer = actions.add_parser("import", help="insert or update the cases of a manifest")
    importer.add_argument("--image-root", type=Path,
                          help="the service's image root (CHEXTRIEV_IMAGE_ROOT) the stored image paths are "
                               "relative to (default: the manifest's folder)")
    add_dataset_arguments(importer)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the manifest, upsert its cases into $CHEXTRIEV_DATABASE_URL (migrated first); print counts."""
    settings = get_settings()
    salt = settings.patient_salt.get_secret_value() if settings.patient_salt is not None else None
    try:
        dataset = dataset_from_args(args)
        root = (args.image_root or Path(args.manifest or ".").parent).resolve()
        records = [case_record(record, root, salt) for record in dataset.records]
        counts = import_cases(settings.database_url, records)
    except (ChextrievError, SQLAlchemyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"cases": len(records), "inserted": counts.inserted, "updated": counts.updated}))
    return 0


def case_record(record: ImageRecord, image_root: Path, salt: str | None) -> CaseRecord:
    """A manifest row as the database stores it; the image is decoded for its size and its regions."""
    image = decode_image(record.image_path)
    path = record.image_path.resolve()
    if not path.is_relative_to(image_root):
        raise ChextrievError(f"case {record.case_id}: {path} is outside the image root {image_root}")
    return CaseRecord(case_id=record.case_id,
                      patient_hash=patient_hash(record.patient_id, salt) if salt and record.patient_id else None,
                      study_uid=None, series_uid=None, sop_uid=None, findings=list(record.labels),
                      region_boxes=record.anatomy.boxes_for(image).tolist(),
                      image_path=path.relative_to(image_root).as_posix(), width=image.width, height=image.height,
                      metadata=public_metadata(record.metadata))
