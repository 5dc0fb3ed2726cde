"""Train/val/test splits: split names as datasets write them, and patient-level splitting.

Every image of a patient belongs to one split, so that no patient is both retrieved and queried
across splits. Without a split column, patients are shuffled with a seed and cut so that each split
receives about its fraction of the *images*.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from trainer.datasets.errors import option_error
from trainer.datasets.records import SPLITS

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
# When a split column puts one patient in several splits, "majority" keeps each such patient in
# the split holding most of their images; ties go to the first of these.
TIE_PREFERENCE: tuple[str, ...] = ("test", "val", "train")


def split_name(value: str) -> str | None:
    """"train", "val" or "test" for a split name as written (any case, e.g. "validate"), else None."""
    return SPLIT_ALIASES.get(value.strip().lower())


def checked_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative train/val/test fractions summing to 1 (DatasetError otherwise)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not 0 <= f <= 1 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise option_error("split_fractions", f"expected three fractions in [0, 1] for train, val and "
                                              f"test summing to 1, got {list(fractions)}")
    return values  # type: ignore[return-value]


def patient_splits(patient_keys: Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0) -> list[str]:
    """The split of each image, given each image's patient key: deterministic for a seed and
    independent of the order of the images; all images of a patient share a split."""
    train, val, _ = checked_fractions(fractions)
    images_per_patient = Counter(patient_keys)
    patients = sorted(images_per_patient)
    random.Random(seed).shuffle(patients)
    total = len(patient_keys)
    assigned, done = {}, 0
    for patient in patients:
        middle = (done + images_per_patient[patient] / 2) / total
        assigned[patient] = "train" if middle < train else "val" if middle < train + val else "test"
        done += images_per_patient[patient]
    return [assigned[key] for key in patient_keys]


def patients_in_several_splits(patient_keys: Sequence[str], splits: Sequence[str]) -> dict[str, Counter]:
    """Images per split of each patient whose images lie in more than one split."""
    per_patient: dict[str, Counter] = defaultdict(Counter)
    for key, split in zip(patient_keys, splits):
        per_patient[key][split] += 1
    return {key: counts for key, counts in per_patient.items() if len(counts) > 1}


def majority_splits(patient_keys: Sequence[str], splits: Sequence[str]) -> list[str]:
    """The splits with each patient found in several moved wholly to the split holding most of
    their images (ties: TIE_PREFERENCE order)."""
    rank = {name: len(TIE_PREFERENCE) - index for index, name in enumerate(TIE_PREFERENCE)}
    chosen = {key: max(SPLITS, key=lambda name: (counts[name], rank[name]))
              for key, counts in patients_in_several_splits(patient_keys, splits).items()}
    return [chosen.get(key, split) for key, split in zip(patient_keys, splits)]
