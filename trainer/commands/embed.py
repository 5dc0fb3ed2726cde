"""`chextriev embed`: write a gallery's CheXtriev embeddings for `chextriev index build --embeddings`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from model.errors import ChextrievError
from trainer.feature_cache import FeatureCache
from trainer.gallery_export import ALL_SPLITS, PATIENT_SALT_ENV, export_gallery


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `embed` subcommand."""
    parser = subparsers.add_parser("embed", help="export gallery embeddings (.npz) for the index store")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory")
    parser.add_argument("--checkpoint", type=Path, required=True, help="CheXtriev checkpoint directory")
    parser.add_argument("--split", default="test", help=f"split to export, or '{ALL_SPLITS}' (default test)")
    parser.add_argument("--out", type=Path, required=True, help="gallery embeddings file to write (.npz)")
    parser.add_argument("--patient-salt", help=f"secret salt for the patient group keys (default: "
                        f"${PATIENT_SALT_ENV}; without either, no group keys are written)")
    parser.add_argument("--device", default="auto", help='device for the network: "auto", "cpu", "cuda", ...')
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export the embeddings and print a one-line JSON summary."""
    salt = args.patient_salt or os.environ.get(PATIENT_SALT_ENV) or None
    try:
        export = export_gallery(FeatureCache.open(args.features), args.checkpoint, args.out,
                                split=args.split, salt=salt, device=args.device)
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not export.group_keys:
        print(f"note: no patient salt (--patient-salt or ${PATIENT_SALT_ENV}): no group keys written, "
              "so the index cannot exclude a query's own patient", file=sys.stderr)
    print(json.dumps({"path": str(export.path), "count": export.count, "dimension": export.dimension,
                      "model_fingerprint": export.model_fingerprint, "group_keys": export.group_keys}))
    return 0
