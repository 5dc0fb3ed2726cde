"""Retrieval metrics as REFERENCE_NOTES "Metrics, exactly" defines them, on hand-checked cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from model.errors import ChextrievError
from trainer.evaluation.metrics import (
    MetricsInputError,
    average_precision,
    evaluate_embeddings,
    evaluate_retrieval,
    hit_ratio,
    query_scores,
    reciprocal_rank,
    retrieve_top_k,
)


@pytest.mark.parametrize(
    ("hits", "ap", "hr", "rr"),
    [
        ([0, 1, 1, 0, 1], (1 / 2 + 2 / 3 + 3 / 5) / 3, 0.6, 0.5),  # the worked example
        ([0, 0, 0, 0, 0], 0.0, 0.0, 0.0),
        ([True] * 5, 1.0, 1.0, 1.0),
        ([1, 0, 0, 0, 1], (1 + 2 / 5) / 2, 0.4, 1.0),
    ],
)
def test_single_query_scores(hits, ap, hr, rr):
    assert average_precision(hits) == pytest.approx(ap)
    assert hit_ratio(hits) == pytest.approx(hr)
    assert reciprocal_rank(hits) == pytest.approx(rr)


def test_worked_example_value():
    assert average_precision([0, 1, 1, 0, 1]) == pytest.approx(0.5889, abs=1e-4)


def test_hit_ratio_divides_by_k_even_when_fewer_were_retrieved():
    assert hit_ratio([1, 0], k=5) == pytest.approx(0.2)
    with pytest.raises(MetricsInputError, match="k must be"):
        hit_ratio([1, 0, 1], k=2)


@pytest.mark.parametrize("hits", [[], [0, 2], [[1, 0]], ["1"]])
def test_bad_hits_are_rejected(hits):
    with pytest.raises(MetricsInputError):
        average_precision(hits)


def test_query_is_excluded_by_identity_not_by_rank():
    # The query "q" ties with two other items and lands at rank 3 by index; "dup" is an identical
    # image stored under another id and must stay.
    ids = ["x", "dup", "y", "q", "z"]
    similarity = np.array([[0.9, 1.0, 1.0, 1.0, 0.1]])
    assert retrieve_top_k(similarity, 3, ["q"], ids).tolist() == [[1, 2, 0]]


def test_ties_are_broken_by_lower_index_row_by_row():
    similarity = np.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.7, 0.7, 0.2]])
    ranked = retrieve_top_k(similarity, 3, ["c", "a"], ["a", "b", "c", "d"])
    assert ranked.tolist() == [[0, 1, 3], [1, 2, 3]]


def test_same_group_items_are_excluded_and_k_results_still_returned():
    ids = ["q", "q-followup", "other1", "q-lateral", "other2", "other3"]
    patients = ["p1", "p1", "p2", "p1", "p3", "p2"]
    similarity = np.array([[1.0, 0.99, 0.2, 0.98, 0.5, 0.3]])
    ranked = retrieve_top_k(similarity, 3, ["q"], ids, ["p1"], patients)
    assert ranked.tolist() == [[4, 5, 2]]
    assert retrieve_top_k(similarity, 3, ["q"], ids).tolist() == [[1, 3, 4]]
    with pytest.raises(MetricsInputError, match="only 3 eligible") as caught:
        retrieve_top_k(similarity, 4, ["q"], ids, ["p1"], patients)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ChextrievError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"similarity": np.array([[0.1, np.nan]])}, "finite"),
        ({"k": 0}, "positive integer"),
        ({"gallery_ids": ["a", "a"]}, "unique"),
        ({"gallery_ids": ["a"]}, "expected 1 query and 2 gallery"),
        ({"query_groups": ["p"]}, "both"),
    ],
)
def test_bad_retrieval_input_is_rejected(kwargs, message):
    arguments = {"similarity": np.array([[0.1, 0.2]]), "k": 1, "query_ids": ["q"],
                 "gallery_ids": ["a", "b"]} | kwargs
    with pytest.raises(MetricsInputError, match=message):
        retrieve_top_k(**arguments)


def _hand_case():
    """k=2. Classes: common (3 positive queries), rare (2, one with no hit), absent (none)."""
    gallery = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    queries = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)
    ranked = np.array([[0, 3], [3, 1], [0, 2], [3, 0]])
    # common: AP 1, 1/2, 1 -> 5/6; HR 1/2 each; RR 1, 1/2, 1 -> 5/6.
    # rare: q2 hits at rank 2 (AP = HR = RR = 1/2); q3 has no hit (0) -> 1/4 each, or 1/2 skipped.
    return queries, gallery, ranked, ("common", "rare", "absent")


def _scores(report):
    return {row.name: (row.scores.ap, row.scores.hr, row.scores.rr) for row in report.per_class}


def test_per_class_and_mean_scores_by_hand():
    report = evaluate_retrieval(*_hand_case())
    scores = _scores(report)
    assert scores["common"] == pytest.approx((5 / 6, 1 / 2, 5 / 6))
    assert scores["rare"] == pytest.approx((1 / 4, 1 / 4, 1 / 4))
    assert np.isnan(scores["absent"]).all()
    assert [(row.n_positive, row.n_scored) for row in report.per_class] == [(3, 3), (2, 2), (0, 0)]
    assert report.missing_classes == ("absent",)
    mean = report.mean
    assert (mean.ap, mean.hr, mean.rr) == pytest.approx((13 / 24, 3 / 8, 13 / 24))


def test_weighted_mean_weights_by_positive_query_count():
    weighted = evaluate_retrieval(*_hand_case()).weighted_mean
    # (3 * 5/6 + 2 * 1/4) / 5; weighting inversely to frequency would give 0.41 instead.
    assert weighted.ap == pytest.approx(0.6)
    assert weighted.hr == pytest.approx((3 * 1 / 2 + 2 * 1 / 4) / 5)
    assert weighted.rr == pytest.approx(0.6)


def test_skipping_zero_hit_queries_inflates_the_rare_class():
    honest = evaluate_retrieval(*_hand_case())
    skipped = evaluate_retrieval(*_hand_case(), skip_zero_hit=True)
    assert _scores(skipped)["rare"] == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert _scores(skipped)["common"] == _scores(honest)["common"]
    assert skipped.per_class[1].n_positive == 2 and skipped.per_class[1].n_scored == 1
    assert skipped.mean.ap == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert skipped.mean.ap > honest.mean.ap
    # Weights stay the positive-query counts, as in the authors' code.
    assert skipped.weighted_mean.ap == pytest.approx((3 * 5 / 6 + 2 * 1 / 2) / 5)


def test_per_query_scores_by_hand():
    queries, gallery, ranked, _ = _hand_case()
    scores = query_scores(queries, gallery, ranked)
    np.testing.assert_allclose(scores.ap, [[1, np.nan, np.nan], [1 / 2, np.nan, np.nan], [1, 1 / 2, np.nan],
                                           [np.nan, 0, np.nan]])
    np.testing.assert_allclose(scores.rr[:, 1], [np.nan, np.nan, 1 / 2, 0])
    np.testing.assert_allclose(scores.hr[:, 0], [1 / 2, 1 / 2, 1 / 2, np.nan])
    assert scores.hit.tolist() == [[True, False, False], [True, False, False], [True, True, False],
                                   [False, False, False]]


def test_markdown_table_rows():
    text = evaluate_retrieval(*_hand_case()).to_markdown()
    lines = text.splitlines()
    assert lines[0] == "| finding | AP | HR | RR | n |"
    for row in ("| common | 83.3 | 50.0 | 83.3 | 3 |", "| rare | 25.0 | 25.0 | 25.0 | 2 |",
                "| absent | n/a | n/a | n/a | 0 |", "| Mean | 54.2 | 37.5 | 54.2 |  |",
                "| wMean | 60.0 | 40.0 | 60.0 |  |"):
        assert row in lines
    assert "Zero-hit queries not skipped" in text
    assert "left out of the means: absent." in text
    skipped = evaluate_retrieval(*_hand_case(), skip_zero_hit=True).to_markdown()
    assert "Zero-hit queries SKIPPED (1 left out)" in skipped
    assert "| rare | 50.0 | 50.0 | 50.0 | 2 |" in skipped.splitlines()


def test_report_dict_is_json_ready():
    data = json.loads(json.dumps(evaluate_retrieval(*_hand_case()).to_dict(), allow_nan=False))
    assert data["k"] == 2 and data["num_queries"] == 4 and data["skip_zero_hit"] is False
    assert data["per_class"][2] == {"name": "absent", "n_positive": 0, "n_scored": 0,
                                    "ap": None, "hr": None, "rr": None}
    assert data["weighted_mean"]["ap"] == pytest.approx(0.6)
    assert data["missing_classes"] == ["absent"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, g, r, n: (q, g, r, n[:2]), "class counts disagree"),
        (lambda q, g, r, n: (q * 2, g, r, n), "only 0/1"),
        (lambda q, g, r, n: (q, g, r + 2, n), "outside the gallery"),
        (lambda q, g, r, n: (q, g, np.array([[0, 0], [3, 1], [0, 2], [3, 0]]), n), "twice"),
        (lambda q, g, r, n: (q, g, r[:3], n), "shape"),
    ],
)
def test_bad_evaluation_input_is_rejected(change, message):
    with pytest.raises(MetricsInputError, match=message):
        evaluate_retrieval(*change(*_hand_case()))


def _random_test_set(num_items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num_items, 32)).astype(np.float32)
    prevalence = np.array([0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.03, 0.0])
    labels = rng.random((num_items, prevalence.size)) < prevalence
    ids = [f"img{i:05d}" for i in range(num_items)]
    patients = [f"p{g}" for g in rng.integers(0, num_items // 3, num_items)]
    return embeddings, labels, ids, patients, tuple(f"class{c}" for c in range(prevalence.size))


def test_invariants_on_a_realistic_shape():
    embeddings, labels, ids, patients, names = _random_test_set(200)
    k = 5
    unit = embeddings.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    ranked = retrieve_top_k(similarity, k, ids, ids, patients, patients)
    for q in range(len(ids)):
        eligible = [j for j in range(len(ids)) if patients[j] != patients[q]]
        assert ranked[q].tolist() == sorted(eligible, key=lambda j: (-similarity[q, j], j))[:k]

    report = evaluate_retrieval(labels, labels, ranked, names)
    assert report.to_dict() == evaluate_embeddings(embeddings, labels, ids, k, names,
                                                   groups=patients).to_dict()
    skipped = evaluate_retrieval(labels, labels, ranked, names, skip_zero_hit=True)
    assert report.missing_classes == ("class8",)
    for c, (row, row_skipped) in enumerate(zip(report.per_class[:-1], skipped.per_class[:-1])):
        hits = labels[ranked[labels[:, c]], c]
        assert row.n_positive == labels[:, c].sum() > 0
        assert row.scores.hr * k * row.n_positive == pytest.approx(hits.sum())
        with_hit = hits.any(axis=1).mean()
        assert row_skipped.n_scored == hits.any(axis=1).sum()
        if row_skipped.n_scored == 0:  # a rare class whose every query missed: nothing to skip to
            assert row.name in skipped.missing_classes and np.isnan(row_skipped.scores.ap)
            assert row.scores.ap == row.scores.hr == row.scores.rr == 0.0
            continue
        for value, value_skipped in zip((row.scores.ap, row.scores.hr, row.scores.rr),
                                        (row_skipped.scores.ap, row_skipped.scores.hr,
                                         row_skipped.scores.rr)):
            # every query with a hit scores at least 1/k on each metric, at most 1
            assert with_hit / k - 1e-12 <= value <= with_hit + 1e-12
            assert value == pytest.approx(value_skipped * with_hit)
            assert value_skipped >= value
    assert report.mean.ap == pytest.approx(np.mean([r.scores.ap for r in report.per_class[:-1]]))

    top1 = evaluate_retrieval(labels, labels, ranked[:, :1], names)
    for row in top1.per_class[:-1]:
        assert row.scores.ap == row.scores.hr == row.scores.rr


def test_large_test_set_is_evaluated_in_query_blocks_like_one_matrix():
    embeddings, labels, ids, patients, names = _random_test_set(2100, seed=1)
    unit = embeddings.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    ranked = retrieve_top_k(unit @ unit.T, 10, ids, ids, patients, patients)
    expected = evaluate_retrieval(labels, labels, ranked, names).to_dict()
    assert evaluate_embeddings(embeddings, labels, ids, 10, names, groups=patients).to_dict() \
        == expected


def test_bad_embeddings_are_rejected():
    embeddings, labels, ids, _, names = _random_test_set(20)
    with pytest.raises(MetricsInputError, match="same items"):
        evaluate_embeddings(embeddings, labels[:19], ids, 5, names)
    embeddings[3] = 0
    with pytest.raises(MetricsInputError, match="img00003.*all zeros"):
        evaluate_embeddings(embeddings, labels, ids, 5, names)


NIH_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
               "Infiltration", "Pneumonia", "Pneumothorax", "Hernia")


def test_same_patient_exclusion_on_real_radiographs(shared_data):
    """NIH test split: 200 real radiographs of 59 patients, raw pixels as embeddings."""
    with open(shared_data / "nih1000" / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    pixels = np.stack([
        np.asarray(Image.open(shared_data / "nih1000" / row["image"]).convert("L"), np.float64)
        .ravel() for row in rows])
    embeddings = pixels - pixels.mean(axis=1, keepdims=True)
    labels = np.array([[name in row["labels"].split("|") for name in NIH_CLASSES] for row in rows])
    ids = [row["image"] for row in rows]
    patients = np.array([row["patient_id"] for row in rows])
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    ranked_any = retrieve_top_k(unit @ unit.T, 5, ids, ids)
    ranked_other = retrieve_top_k(unit @ unit.T, 5, ids, ids, patients, patients)
    assert (patients[ranked_any] == patients[:, None]).any()  # follow-ups look alike
    assert not (patients[ranked_other] == patients[:, None]).any()
    assert ranked_other.shape == (200, 5)

    report = evaluate_embeddings(embeddings, labels, ids, 5, NIH_CLASSES, groups=patients)
    assert report.missing_classes == ("Pneumothorax", "Hernia")
    assert {row.name: row.n_positive for row in report.per_class}["Effusion"] == 29
    assert report.to_dict() == evaluate_retrieval(labels, labels, ranked_other,
                                                  NIH_CLASSES).to_dict()
