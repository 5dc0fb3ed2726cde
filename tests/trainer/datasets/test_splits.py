"""Patient-level splitting and split names."""

from __future__ import annotations

import random

import pytest

from trainer.datasets import DatasetError
from trainer.datasets.splits import majority_splits, patient_splits, patients_in_several_splits, split_name


def test_split_names_as_datasets_write_them():
    assert [split_name(v) for v in ("train", "Training", "valid", "VALIDATE", "validation", "val", "dev",
                                    " test ", "testing")] == ["train"] * 2 + ["val"] * 5 + ["test"] * 2
    assert split_name("holdout") is None and split_name("") is None


def test_patient_split_keeps_patients_whole_and_follows_the_fractions():
    rng = random.Random(1)
    keys = [f"p{rng.randrange(300)}" for _ in range(2000)]
    splits = patient_splits(keys, (0.7, 0.1, 0.2), seed=5)
    assert not patients_in_several_splits(keys, splits)
    shares = {name: splits.count(name) / len(keys) for name in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.7, abs=0.02)
    assert shares["val"] == pytest.approx(0.1, abs=0.02)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)


def test_patient_split_is_deterministic_and_independent_of_row_order():
    keys = [f"p{i % 37}" for i in range(200)]
    splits = dict(zip(range(200), patient_splits(keys, seed=2)))
    order = list(range(200))
    random.Random(0).shuffle(order)
    shuffled = patient_splits([keys[i] for i in order], seed=2)
    assert [splits[i] for i in order] == shuffled
    assert patient_splits(keys, seed=2) == [splits[i] for i in range(200)]
    assert patient_splits(keys, seed=3) != [splits[i] for i in range(200)]


def test_a_zero_fraction_leaves_that_split_empty():
    assert "val" not in patient_splits([f"p{i}" for i in range(50)], (0.8, 0.0, 0.2))


@pytest.mark.parametrize("fractions", [(0.7, 0.1), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(DatasetError, match="split_fractions"):
        patient_splits(["a"], fractions)


def test_majority_moves_a_patient_to_the_split_holding_most_images_ties_to_test():
    keys = ["a", "a", "a", "b", "b", "c"]
    given = ["train", "test", "train", "val", "test", "train"]
    assert majority_splits(keys, given) == ["train", "train", "train", "test", "test", "train"]
