"""`chextriev evaluate`: paper-style retrieval evaluation of a feature cache (and a checkpoint).

Every table comes twice: over all images of the split and over other patients' images only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.errors import ChextrievError
from trainer.evaluation.markdown import render_markdown
from trainer.evaluation.report import evaluate, write_report
from trainer.feature_cache import FeatureCache


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate", help="top-k retrieval AP/HR/RR per finding: CheXtriev vs the global CNN and the region mean")
    parser.add_argument("--features", type=Path, required=True, help="feature cache directory")
    parser.add_argument("--checkpoint", type=Path, help="CheXtriev checkpoint directory (default: baselines only)")
    parser.add_argument("--out", type=Path, required=True, help="directory for evaluation.json and evaluation.md")
    parser.add_argument("--k", type=int, action="append", dest="ks",
                        help="retrieve the top k; repeat for several (default 5)")
    parser.add_argument("--split", default="test", help="split that is both queries and gallery (default test)")
    parser.add_argument("--device", default="auto", help='device for the network: "auto", "cpu", "cuda", ...')
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the Markdown tables and write the report files."""
    try:
        result = evaluate(FeatureCache.open(args.features), args.checkpoint, ks=args.ks or (5,),
                          split=args.split, device=args.device)
        json_path, markdown_path = write_report(result, args.out)
    except ChextrievError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(render_markdown(result))
    print(f"written: {json_path} and {markdown_path}")
    return 0
