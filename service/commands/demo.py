"""`chextriev demo`: embed the bundled sample radiographs and print each query's nearest neighbours.

Until the service and trainer land, the demo shows the parameter-free baselines on real images:
V0 (mean of the 18 region features) and the global CNN, with EfficientNet-Lite0 features.
"""

from __future__ import annotations

import argparse

from model.backbones import build_backbone
from model.baselines import global_cnn_embeddings, region_mean_embeddings
from model.feature_extractor import FeatureExtractor
from model.metrics import retrieve_top_k
from model.sample_gallery import load_sample_cases
from model.sample_retrieval import extract_gallery_features


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser("demo", help="embed the bundled sample radiographs and show neighbours")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--queries", type=int, default=3, help="how many sample cases to query (default 3)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Extract features of the sample gallery and print the top-k of the first few cases."""
    cases = load_sample_cases()
    extractor = FeatureExtractor(build_backbone("efficientnet_lite0"))
    gallery = extract_gallery_features(extractor, cases)
    ids = gallery.case_ids
    patients = [case.patient_id for case in cases]
    by_id = {case.case_id: case for case in cases}
    for label, embeddings in (("V0 region mean", region_mean_embeddings(gallery.region_features)),
                              ("global CNN", global_cnn_embeddings(gallery.whole_image_features))):
        similarity = (embeddings @ embeddings.T).numpy()
        ranked = retrieve_top_k(similarity, args.k, ids, ids, patients, patients)
        print(f"\n== {label}: top {args.k}, same patient excluded")
        for query in range(min(args.queries, len(ids))):
            print(f"query {ids[query]} ({by_id[ids[query]].finding}, {by_id[ids[query]].metadata['view']})")
            for rank, index in enumerate(ranked[query], start=1):
                case = by_id[ids[index]]
                print(f"  {rank}. {case.case_id}  cosine {similarity[query, index]:.3f}  "
                      f"{case.finding}, {case.metadata['view']}")
    return 0
