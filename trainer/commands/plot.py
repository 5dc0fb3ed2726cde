"""`chextriev plot`: PNG figures for reports: training runs side by side (`training`) and the similarity
scores of checkpoints on one feature cache (`scores`: each query of a split against every other image)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model.errors import ChextrievError
from trainer.cached_embeddings import load_network_for, network_embeddings
from trainer.feature_cache import FeatureCache
from trainer.plots import plot_score_distributions, plot_training_curves
from trainer.training_report import read_training_history


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `plot` subcommand and its `training` and `scores` figures."""
    parser = subparsers.add_parser("plot", help="PNG figures: training curves, similarity score distributions")
    figures = parser.add_subparsers(dest="figure", required=True)
    training = figures.add_parser("training", help="the curves of `chextriev train` runs side by side")
    training.add_argument("--run", action="append", required=True, metavar="[TITLE=]DIR",
                          help="a run directory holding training.json; repeat for several")
    training.add_argument("--out", type=Path, required=True, help="PNG file")
    training.set_defaults(handler=run_training)
    scores = figures.add_parser("scores", help="histograms of the cosine similarities each checkpoint gives")
    scores.add_argument("--features", type=Path, required=True, help="feature cache directory")
    scores.add_argument("--checkpoint", action="append", required=True, metavar="[TITLE=]DIR",
                        help="a checkpoint directory; repeat for several")
    scores.add_argument("--split", default="val", help="the split whose images are the queries (default val)")
    scores.add_argument("--out", type=Path, required=True, help="PNG file")
    scores.set_defaults(handler=run_scores)


def run_training(args: argparse.Namespace) -> int:
    """Draw the runs' curves."""
    try:
        runs = [(title, *read_training_history(directory)) for title, directory in map(_titled, args.run)]
    except FileNotFoundError as error:
        return _fail(error)
    plot_training_curves(runs, args.out)
    print(f"written: {args.out}")
    return 0


def run_scores(args: argparse.Namespace) -> int:
    """Draw, per checkpoint, the similarities of each query of the split to every other image of the cache."""
    try:
        cache = FeatureCache.open(args.features)
        queries = cache.indices(args.split)
        everything = np.flatnonzero(cache.usable)
        query_positions = np.searchsorted(everything, queries)  # both ascending; queries are usable rows
        others = queries[:, None] != everything[None, :]
        groups = {}
        for title, directory in map(_titled, args.checkpoint):
            network, _ = load_network_for(cache, directory)
            vectors = network_embeddings(network, cache, everything, device="cpu")
            groups[title] = (vectors[query_positions] @ vectors.T)[others]
    except ChextrievError as error:
        return _fail(error)
    plot_score_distributions(groups, args.out, f"{cache.dataset_name}: {args.split} queries against every other image")
    print(f"written: {args.out}")
    return 0


def _titled(value: str) -> tuple[str, Path]:
    title, _, directory = value.rpartition("=")
    return (title or Path(directory).name), Path(directory)


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
