"""What a retrieval evaluation measured: per k, every method's reports over two candidate scopes, and
the paired tests; serialised to JSON by `to_dict` and rendered by trainer.evaluation.markdown.

Scopes: "all images" lets a query retrieve every other image of the split (the paper's protocol);
"other patients only" also leaves out every image of the query's own patient, which the research
code did not. Both are always computed, so a reader sees how much same-patient retrieval contributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.checkpoint import BackboneRecord
from trainer.evaluation.metrics import RetrievalReport
from trainer.evaluation.significance import SIGNIFICANCE_LEVEL, PairedTest

REPORT_FORMAT = "chextriev-evaluation/2"
PAIRED_TEST_PROTOCOL = (
    "scipy.stats.ttest_rel, two-sided; for each finding it pairs each positive query's AP (HR, RR) "
    "under CheXtriev with the same query's under the baseline, zero-hit queries counted as 0; queries "
    "of one patient are not independent, so the p-values are optimistic where patients have several images")


@dataclass(frozen=True)
class KEvaluation:
    """Everything measured at one k, per method in EvaluationResult.methods order."""

    k: int
    reports: dict[str, RetrievalReport]  # all images; zero-hit queries count as 0: the honest numbers
    skipped_reports: dict[str, RetrievalReport]  # zero-hit queries left out, as the research code's `skip`
    tests: tuple[PairedTest, ...]  # CheXtriev against each baseline, per finding; empty without a checkpoint
    # Other patients only; None when some query's patient leaves fewer than k other images.
    other_patient_reports: dict[str, RetrievalReport] | None = None
    other_patient_tests: tuple[PairedTest, ...] = ()

    def test(self, baseline: str, finding: str, *, other_patients: bool = False) -> PairedTest:
        """The paired test of CheXtriev against `baseline` on `finding`, in one scope."""
        tests = self.other_patient_tests if other_patients else self.tests
        return next(t for t in tests if t.baseline == baseline and t.finding == finding)

    def to_dict(self) -> dict:
        """A JSON-ready dict, the honest reports first."""
        other = self.other_patient_reports
        return {
            "k": self.k,
            "zero_hit_counted": {name: report.to_dict() for name, report in self.reports.items()},
            "zero_hit_skipped": {name: report.to_dict() for name, report in self.skipped_reports.items()},
            "paired_tests": [test.to_dict() for test in self.tests],
            "other_patients_zero_hit_counted": (None if other is None
                                                else {name: report.to_dict() for name, report in other.items()}),
            "other_patients_paired_tests": [test.to_dict() for test in self.other_patient_tests],
        }


@dataclass(frozen=True)
class EvaluationResult:
    """The whole evaluation of one split of one feature cache."""

    dataset: str
    split: str
    regions_source: str
    backbone: BackboneRecord
    checkpoint_fingerprint: str | None
    model_variant: str | None
    num_queries: int
    num_patients: int  # distinct patients among the queries; an image without a patient id is its own
    images_without_patient_id: int
    label_names: tuple[str, ...]
    absent_classes: tuple[str, ...]  # no positive query in the split
    methods: tuple[str, ...]  # baselines first, CheXtriev last (as in the paper's Table 2)
    per_k: tuple[KEvaluation, ...]

    @property
    def atlas_regions(self) -> bool:
        """True when the regions were placed from the atlas template, not annotated per image."""
        return self.regions_source == "atlas"

    def to_dict(self) -> dict:
        """Everything, JSON-ready (NaN becomes None)."""
        return {
            "format": REPORT_FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "regions_source": self.regions_source,
            "atlas_regions": self.atlas_regions,
            "backbone": asdict(self.backbone),
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "model_variant": self.model_variant,
            "ks": [evaluation.k for evaluation in self.per_k],
            "protocol": {
                "queries_and_gallery": f"every usable image of split '{self.split}'",
                "similarity": "cosine (inner product of L2-normalised embeddings)",
                "self_exclusion": "by case id",
                "scopes": {"all images": "every other image of the split is a candidate",
                           "other patients only": "every image of the query's own patient is left out too"},
                "num_patients": self.num_patients,
                "images_without_patient_id": self.images_without_patient_id,
                "paired_test": PAIRED_TEST_PROTOCOL,
                "significance_level": SIGNIFICANCE_LEVEL,
            },
            "num_queries": self.num_queries,
            "label_names": list(self.label_names),
            "absent_classes": list(self.absent_classes),
            "methods": list(self.methods),
            "results": [evaluation.to_dict() for evaluation in self.per_k],
        }
