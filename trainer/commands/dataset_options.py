"""Command-line options that choose a dataset, shared by the offline commands (features, ...).

Either a generic manifest::

    --manifest PATH [--column NAME=FILE_COLUMN ...] [--label-column COL ...] [--yes-no-label A,B]
    [--no-label-values V1,V2] [--label-separators "|,"] [--regions auto|atlas|model] [--atlas-from MANIFEST]
    [--anatomy-model FILE] [--split-seed N] [--split-fractions 0.7,0.1,0.2] [--split-conflicts error|majority]

or Chest ImaGenome on MIMIC-CXR-JPG::

    --imagenome-scene-graphs DIR --mimic-jpg DIR --mimic-split CSV [--mimic-metadata CSV]

and for both ``--missing-images error|skip`` and ``--dataset-name NAME``.
"""

from __future__ import annotations

import argparse

from trainer.datasets.errors import DatasetError, DatasetProblem
from trainer.datasets.imagenome import read_imagenome
from trainer.datasets.labels import DEFAULT_NO_LABEL_VALUES, DEFAULT_SEPARATORS
from trainer.datasets.manifest import (
    MANIFEST_COLUMNS,
    MISSING_IMAGE_POLICIES,
    REGION_MODES,
    SPLIT_CONFLICT_POLICIES,
    read_manifest,
)
from trainer.datasets.records import Dataset
from trainer.datasets.splits import DEFAULT_FRACTIONS

IMAGENOME_OPTIONS = ("imagenome_scene_graphs", "mimic_jpg", "mimic_split")
MANIFEST_ONLY_OPTIONS = ("column", "label_column", "yes_no_label", "no_label_values", "atlas_from", "anatomy_model")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dataset options to a subcommand's parser."""
    group = parser.add_argument_group("dataset (a manifest, or Chest ImaGenome + MIMIC-CXR-JPG)")
    group.add_argument("--manifest", help="CSV or JSONL manifest, one row per image (see README)")
    group.add_argument("--column", action="append", default=[], metavar="NAME=FILE_COLUMN",
                       help=f"read the manifest column FILE_COLUMN as NAME, one of {', '.join(MANIFEST_COLUMNS)} "
                            "(repeatable), e.g. patient_id=patientid")
    group.add_argument("--label-column", action="append", default=[], metavar="COLUMNS",
                       help="column(s) whose values are label names (repeatable, comma-separated)")
    group.add_argument("--yes-no-label", action="append", default=[], metavar="COLUMNS",
                       help="yes/no column(s) whose name becomes a label when the value is yes "
                            "(Y, yes, 1, true); repeatable, comma-separated")
    group.add_argument("--no-label-values", metavar="VALUES",
                       help="comma-separated label values that mean no label (default: "
                            f"{', '.join(DEFAULT_NO_LABEL_VALUES)})")
    group.add_argument("--label-separators", default=DEFAULT_SEPARATORS,
                       help=f"characters separating label names in one cell (default {DEFAULT_SEPARATORS!r})")
    group.add_argument("--regions", choices=REGION_MODES, default="auto",
                       help="auto: each row's own regions, lung boxes or masks; atlas: a mean template "
                            "for every image; model: the anatomy model's prediction from each image's "
                            "pixels (atlas and model: for sets without anatomy)")
    group.add_argument("--atlas-from", metavar="MANIFEST",
                       help="learn the atlas from this manifest's anatomy (standard column names)")
    group.add_argument("--anatomy-model", metavar="FILE",
                       help="ONNX anatomy model of --regions model (default: the shipped model)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    group.add_argument("--split-fractions", default=",".join(str(f) for f in DEFAULT_FRACTIONS),
                       metavar="TRAIN,VAL,TEST", help="fractions of the patient-level split (default 0.7,0.1,0.2)")
    group.add_argument("--split-conflicts", choices=SPLIT_CONFLICT_POLICIES, default="error",
                       help="when a split column puts a patient in several splits: refuse (error) or move "
                            "the patient to the split holding most of their images (majority)")
    group.add_argument("--imagenome-scene-graphs", metavar="DIR", help="folder of {dicom_id}_SceneGraph.json")
    group.add_argument("--mimic-jpg", metavar="DIR", help="MIMIC-CXR-JPG root (holding files/)")
    group.add_argument("--mimic-split", metavar="CSV", help="mimic-cxr-2.0.0-split.csv(.gz)")
    group.add_argument("--mimic-metadata", metavar="CSV",
                       help="mimic-cxr-2.0.0-metadata.csv(.gz): its ViewPosition decides the view")
    group.add_argument("--missing-images", choices=MISSING_IMAGE_POLICIES, default="error",
                       help="images listed but not on disk: refuse (error) or leave out and count (skip)")
    group.add_argument("--dataset-name", help="name recorded with the features (default from the files)")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    """Read the dataset the options describe; DatasetError for contradictory options or bad data."""
    imagenome = [name for name in IMAGENOME_OPTIONS if getattr(args, name)]
    if args.manifest and (imagenome or args.mimic_metadata):
        raise _usage("give either --manifest or the Chest ImaGenome options, not both")
    if imagenome:
        if len(imagenome) < len(IMAGENOME_OPTIONS):
            raise _usage("Chest ImaGenome needs --imagenome-scene-graphs, --mimic-jpg and --mimic-split")
        manifest_only = [f"--{name.replace('_', '-')}" for name in MANIFEST_ONLY_OPTIONS if getattr(args, name)]
        if manifest_only:
            raise _usage(f"{', '.join(manifest_only)} apply to --manifest only")
        return read_imagenome(args.imagenome_scene_graphs, args.mimic_jpg, args.mimic_split,
                              metadata_csv=args.mimic_metadata, missing_images=args.missing_images,
                              **({"name": args.dataset_name} if args.dataset_name else {}))
    if not args.manifest:
        raise _usage("choose a dataset: --manifest PATH, or --imagenome-scene-graphs, --mimic-jpg "
                     "and --mimic-split")
    return read_manifest(
        args.manifest, columns=column_mapping(args.column), label_columns=_names(args.label_column),
        yes_no_label_columns=_names(args.yes_no_label), regions=args.regions, seed=args.split_seed,
        split_fractions=_fractions(args.split_fractions), label_separators=args.label_separators,
        no_label_values=(DEFAULT_NO_LABEL_VALUES if args.no_label_values is None
                         else [value.strip() for value in args.no_label_values.split(",")]),
        missing_images=args.missing_images, split_conflicts=args.split_conflicts,
        atlas_from=args.atlas_from, anatomy_model=args.anatomy_model, name=args.dataset_name)


def column_mapping(items: list[str]) -> dict[str, str]:
    """``--column NAME=FILE_COLUMN`` options as a mapping (DatasetError for a malformed one)."""
    mapping = {}
    for item in items:
        name, separator, column = item.partition("=")
        if not separator or not name.strip() or not column.strip():
            raise _usage(f"--column {item!r}: expected NAME=FILE_COLUMN, e.g. patient_id=patientid")
        mapping[name.strip()] = column.strip()
    return mapping


def _names(items: list[str]) -> list[str]:
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise _usage(f"--split-fractions {text!r}: expected three numbers, e.g. 0.7,0.1,0.2") from None


def _usage(message: str) -> DatasetError:
    return DatasetError([DatasetProblem("command-line options", message)])
