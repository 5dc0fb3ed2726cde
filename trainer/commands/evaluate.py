"""`chextriev evaluate`: paper-style retrieval evaluation of a feature cache (and a checkpoint), or
cross-validated (`--folds K`: a model trained per patient-level fold, every image a query once).

Every table comes twice: over all images and over other patients' images only. Tasks: the cache's labels
(default), or a label table's column (`--labels-from`, with `--folds`), such as JSRT's malignancy or the
nodule's lung zone, with region-level search for the latter (`--region-level`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.errors import ChextrievError
from trainer.commands.train import add_training_arguments, training_from_args
from trainer.evaluation.crossval import cross_validate
from trainer.evaluation.crossval_report import render_crossval_markdown, write_crossval_report
from trainer.evaluation.markdown import render_markdown
from trainer.evaluation.report import evaluate, write_report
from trainer.evaluation.tasks import cache_label_task, table_task
from trainer.feature_cache import FeatureCache


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate", help="top-k retrieval AP/HR/RR per finding: CheXtriev vs the global CNN and the region mean")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory")
    parser.add_argument("--checkpoint", type=Path, help="CheXtriev checkpoint directory (default: baselines only)")
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for evaluation.json and evaluation.md (with --folds: crossval.json, "
                             "crossval.md and each fold's model under fold-F/)")
    parser.add_argument("--k", type=int, action="append", dest="ks",
                        help="retrieve the top k; repeat for several (default 5)")
    parser.add_argument("--split", default="test", help="split that is both queries and gallery (default test)")
    parser.add_argument("--device", default="auto", help='device for the network: "auto", "cpu", "cuda", ...')
    crossval = parser.add_argument_group("cross-validation (a model is trained per fold with the options below)")
    crossval.add_argument("--folds", type=int, help="K patient-level folds: each image is a query once, asked by "
                                                    "the model trained without its patient's images")
    crossval.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    crossval.add_argument("--labels-from", type=Path, metavar="TABLE",
                          help="evaluate on a label table's column instead of the cache's labels (CSV or JSON "
                               "Lines keyed by case_id or image): cases are relevant when they share its value")
    crossval.add_argument("--label-column", help="that table's column, e.g. malignancy or zone")
    crossval.add_argument("--gallery-label", help="also search the images positive for this cache label (JSRT: "
                                                  "nodule, so that every nodule image is searched)")
    crossval.add_argument("--region-level", action="store_true",
                          help="the column names regions (or lung zones): rank also by the node embedding of the "
                               "query's region, against the raw feature of that region")
    add_training_arguments(crossval)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the Markdown tables and write the report files."""
    try:
        if args.folds is not None:
            return _cross_validate(args)
        if args.labels_from is not None:
            raise ValueError("--labels-from needs --folds: a label table's task is evaluated cross-validated")
        result = evaluate(FeatureCache.open(args.features), args.checkpoint, ks=args.ks or (5,),
                          split=args.split, device=args.device)
        json_path, markdown_path = write_report(result, args.out)
    except (ChextrievError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(render_markdown(result))
    print(f"written: {json_path} and {markdown_path}")
    return 0


def _cross_validate(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        raise ValueError("--folds trains a model per fold; it takes no --checkpoint")
    if (args.labels_from is None) != (args.label_column is None):
        raise ValueError("--labels-from and --label-column go together")
    cache = FeatureCache.open(args.features)
    task = (cache_label_task(cache) if args.labels_from is None else
            table_task(cache, args.labels_from, args.label_column, gallery_label=args.gallery_label,
                       region_level=args.region_level))
    model_config, training, targets = training_from_args(args, cache)
    result = cross_validate(cache, task, model_config, training, args.out, folds=args.folds, seed=args.fold_seed,
                            ks=args.ks or (5,), device=args.device, region_targets=targets)
    json_path, markdown_path = write_crossval_report(result, args.out)
    print(render_crossval_markdown(result))
    print(f"written: {json_path} and {markdown_path}")
    return 0
