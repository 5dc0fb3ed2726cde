"""`chextriev anatomy`: train the anatomy model that finds the lungs and heart, and measure it on held-out images.

    chextriev anatomy train --manifest M [--manifest M2 ...] [--column patient_id=patientid] --out DIR
    chextriev anatomy evaluate --manifest M [--column ...] [--model FILE] [--out FILE.json]

Each manifest is read as `chextriev features` reads one (trainer.datasets.manifest), with the column
mappings applied where the file has the column. Rows with lung masks (SCR), lung boxes or the 18
regions train the model; patients are split with --split-seed and --split-fractions, and only the
training and validation patients are trained on. `evaluate` leaves out every image the model's
metadata lists as trained or validated on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model.anatomy_model import STRUCTURES, AnatomyModel
from model.errors import ChextrievError
from model.fileio import atomic_write_bytes
from trainer.anatomy.data import (
    UNSUPERVISED,
    ManifestSpec,
    load_samples,
    negative_samples,
    read_records,
    sample_key,
)
from trainer.anatomy.evaluation import evaluate_anatomy, markdown_summary
from trainer.anatomy.export import export_anatomy_model
from trainer.anatomy.training import AnatomyTrainingConfig, train_anatomy
from trainer.commands.dataset_options import column_mapping
from trainer.datasets.errors import DatasetError

_DEFAULTS = AnatomyTrainingConfig()
MODEL_FILE, RECORD_FILE = "anatomy.onnx", "training.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `anatomy train` and `anatomy evaluate`."""
    parser = subparsers.add_parser("anatomy", help="train and evaluate the anatomy model (lungs, heart -> 18 regions)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train the anatomy model on manifests with lung masks or boxes")
    _add_manifest_arguments(train)
    train.add_argument("--out", type=Path, required=True,
                       help=f"output directory: {MODEL_FILE} (the model) and {RECORD_FILE} (its training record)")
    train.add_argument("--open-licences-only", action="store_true",
                       help="train only on rows whose 'license' column names an open licence (CC BY, CC BY-SA, "
                            "Apache 2.0): what the shipped weights are trained on")
    train.add_argument("--split-fractions", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST",
                       help="patient-level split; the test patients are never trained on (default 0.7,0.15,0.15)")
    for option, kind in (("size", int), ("epochs", int), ("batch_size", int), ("lr", float),
                         ("negatives_fraction", float), ("seed", int)):
        train.add_argument(f"--{option.replace('_', '-')}", type=kind, default=getattr(_DEFAULTS, option),
                           help=f"default {getattr(_DEFAULTS, option)}")
    evaluate = actions.add_parser("evaluate", help="measure a model on images it was not trained on")
    _add_manifest_arguments(evaluate)
    evaluate.add_argument("--model", type=Path, help="ONNX file from `anatomy train` (default: the shipped model)")
    evaluate.add_argument("--also-held-out-from", type=Path, action="append", default=[], metavar="MODEL",
                          help="also leave out the images this other model was trained or validated on, to compare "
                               "two models on the same images (repeatable)")
    evaluate.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.set_defaults(handler=run)


def _add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, action="append", required=True,
                        help="a manifest with lung masks or boxes (repeatable)")
    parser.add_argument("--column", action="append", default=[], metavar="NAME=FILE_COLUMN",
                        help="read FILE_COLUMN as NAME where a manifest has it, e.g. patient_id=patientid")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    try:
        specs = [ManifestSpec(path, column_mapping(args.column)) for path in args.manifest]
        if args.action == "train":
            return _train(args, specs)
        return _evaluate(args, specs)
    except (ChextrievError, DatasetError, ValueError, OSError) as error:
        print(f"chextriev anatomy {args.action}: {error}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, specs: list[ManifestSpec]) -> int:
    config = AnatomyTrainingConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   negatives_fraction=args.negatives_fraction, seed=args.seed)
    fractions = [float(part) for part in args.split_fractions.split(",")]
    train, val, counts = [], [], {}
    for spec in specs:
        name, records = read_records(spec, seed=args.split_seed, split_fractions=fractions,
                                     open_licences_only=args.open_licences_only)
        used = [record for record in records if record.split in ("train", "val")]
        samples = load_samples(name, used, config.size)
        train += [sample for sample in samples if sample.split == "train"]
        val += [sample for sample in samples if sample.split == "val"]
        counts[name] = {"images": len(records), "train": sum(r.split == "train" for r in used),
                        "val": sum(r.split == "val" for r in used)}
    negatives = negative_samples(train, round(len(train) * config.negatives_fraction), config.seed)
    result = train_anatomy(train + negatives, val, config)
    trained = [name for index, name in enumerate(STRUCTURES)
               if any(sample.kinds[index] != UNSUPERVISED for sample in train)]
    keys = sorted(sample.key for sample in train + val)
    args.out.mkdir(parents=True, exist_ok=True)
    export_anatomy_model(result.network, config.size, args.out / MODEL_FILE, trained_structures=trained,
                         training_images=keys,
                         description=_description(counts, args.open_licences_only))
    record = {"config": dataclasses.asdict(config), "datasets": counts, "negatives": len(negatives),
              "trained_structures": trained, "best_epoch": result.best_epoch,
              "best_val_median_lung_iou": result.best_val_iou, "history": result.history,
              "split_seed": args.split_seed, "split_fractions": fractions,
              "open_licences_only": args.open_licences_only, "training_images": keys}
    atomic_write_bytes(args.out / RECORD_FILE, json.dumps(record, indent=2).encode())
    print(f"best epoch {result.best_epoch}: validation median lung-box IoU {result.best_val_iou:.3f}; "
          f"model written to {args.out / MODEL_FILE}")
    return 0


def _description(counts: dict[str, dict], open_licences_only: bool) -> str:
    used = ", ".join(f"{name} ({count['train']} train, {count['val']} validation images)"
                     for name, count in counts.items())
    return f"trained on {used}{', open licences only' if open_licences_only else ''}"


def _evaluate(args: argparse.Namespace, specs: list[ManifestSpec]) -> int:
    model = AnatomyModel.load(args.model)
    seen = model.training_images.union(*(AnatomyModel.load(other).training_images for other in args.also_held_out_from))
    reports = {}
    for spec in specs:
        name, records = read_records(spec, seed=args.split_seed, split_fractions=(0.7, 0.15, 0.15))
        held_out = [record for record in records if sample_key(name, record) not in seen]
        reports[name] = evaluate_anatomy(model, held_out)
    figures = {"model": str(model.path), "model_sha256": model.fingerprint,
               "trained_structures": list(model.trained_structures), "datasets": reports}
    if args.out:
        atomic_write_bytes(args.out, json.dumps(figures, indent=2).encode())
    print(markdown_summary(reports))
    return 0

