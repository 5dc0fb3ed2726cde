"""Request and response bodies of the HTTP API (pydantic models, shown in the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from index_store.manifest import VERSION_PATTERN, Manifest
from index_store.store import StoreEntry
from model.catalogue import REGION_NAMES
from service.public_fields import PUBLIC_METADATA_KEYS, PublicMetadata


class ProblemEntry(BaseModel):
    """One bad field of a request; region problems also name the region."""

    field: str
    problem: str
    region: str | None = None
    location: str | None = None


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemEntry] = []


class SearchResult(BaseModel):
    """One retrieved gallery case, best first."""

    rank: int
    case_id: str
    score: float = Field(description="cosine similarity of the query and the case: of their whole-image "
                                     "embeddings, or with regions of interest the mean over those regions of "
                                     "their region embeddings' cosine similarity")
    findings: list[str]
    metadata: PublicMetadata = Field(description=f"allow-listed keys only: {', '.join(sorted(PUBLIC_METADATA_KEYS))}")


class SearchTimings(BaseModel):
    """Milliseconds per phase of a search (fetch: from the archive, for a search by reference; anatomy:
    checking the client's boxes or finding them)."""

    fetch: float = 0.0
    decode: float
    anatomy: float
    embed: float
    search: float
    db: float
    total: float


class CaseRegion(BaseModel):
    """One of the 18 region boxes, [x1, y1, x2, y2] in pixels of its image."""

    name: str
    box: list[float]


def region_entries(boxes: Any) -> list[CaseRegion]:
    """The (18, 4) boxes in catalogue order as named entries."""
    return [CaseRegion(name=name, box=[float(v) for v in box]) for name, box in zip(REGION_NAMES, boxes, strict=True)]


class ArchiveSource(BaseModel):
    """The archive's instance a search by reference used: the one named, or the frontal chest one chosen."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str | None = None
    view_position: str | None = None


class SearchResponse(BaseModel):
    """The most similar gallery cases, the query's 18 regions and the versions that produced them."""

    query_id: str = Field(description="pass it to GET /saliency while the query is kept")
    index_version: str
    model_version: str = Field(description="fingerprint of the model checkpoint")
    regions_source: Literal["client", "model"] = Field(
        description="client: the boxes sent in `regions`; model: found by the anatomy model")
    regions: list[CaseRegion] = Field(description="the 18 boxes the search used, in pixels of the uploaded image")
    anatomy_model_version: str | None = Field(
        default=None, description="SHA-256 of the anatomy model file, when the model placed the regions")
    regions_of_interest: list[str] | None = Field(
        default=None, description="the regions that ranked the results, as sent; null: the whole image")
    results: list[SearchResult]
    source: ArchiveSource | None = Field(
        default=None, description="for a search by study UID: the archive's instance searched with")
    timing_ms: SearchTimings


class RegionSaliency(BaseModel):
    """How much the match rests on one region of the retrieved case."""

    name: str
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the retrieved image")
    similarity_drop: float = Field(description="the similarity minus the similarity with the region blanked")
    importance: float = Field(description="the drop on the fixed scale: drop / scale_max clipped to [0, 1]; "
                                          "0 when the drop does not stand out above the noise floor")
    stands_out: bool = Field(description="the drop is above the noise floor")


class SaliencyTimings(BaseModel):
    """Milliseconds spent, how many region crops went through the backbone again, and how many were
    blanked whole (they share the feature of one blank crop)."""

    occlusion: float
    total: float
    recomputed_crops: int
    blanked_crops: int = 0


class SaliencyResponse(BaseModel):
    """Region-occlusion saliency of one retrieved case for one query."""

    query_id: str
    case_id: str
    similarity: float
    occlusion_source: Literal["snapshot", "recomputed", "cache"] = Field(
        description="where the occlusion embeddings came from: the index snapshot, computed now, "
                    "or computed for an earlier request")
    noise_floor: float = Field(description="a drop stands out only above this: the spread of drops measured when "
                                           "the same radiograph is embedded again (CHEXTRIEV_SALIENCY_NOISE_FLOOR)")
    scale_max: float = Field(description="the drop at the top of the fixed colour scale (CHEXTRIEV_SALIENCY_SCALE_MAX)")
    stands_out: bool = Field(description="whether any region's drop is above the noise floor; false: no region "
                                          "stands out, the match rests on no single region")
    regions: list[RegionSaliency]
    timing_ms: SaliencyTimings


class AnatomyStructure(BaseModel):
    """A structure the anatomy model found."""

    name: Literal["right lung", "left lung", "heart"]
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the uploaded image")
    outline: list[list[float]] = Field(description="closed polygon [[x, y], ...] around the predicted mask")
    confidence: float = Field(description="mean probability inside the predicted mask")
    area_fraction: float = Field(description="share of the image the mask covers")


class RegionTimings(BaseModel):
    """Milliseconds spent decoding the image and running the anatomy model."""

    decode: float
    anatomy: float
    total: float


class RegionsResponse(BaseModel):
    """The anatomy the model finds in a radiograph: its structures and the 18 regions derived from them."""

    width: int
    height: int
    regions: list[CaseRegion]
    structures: list[AnatomyStructure] = Field(
        description="the lungs, and the heart when the model was trained to find it and found it confidently; "
                    "without a heart the cardiac silhouette is placed from the lungs")
    anatomy_model_version: str = Field(description="SHA-256 of the anatomy model file")
    timing_ms: RegionTimings


class CaseResponse(BaseModel):
    """A gallery case as stored, its allow-listed fields only (never the patient, not even as a hash, nor
    DICOM UIDs other than in the archive link the operator configured)."""

    case_id: str
    findings: list[str]
    regions: list[CaseRegion]
    width: int
    height: int
    metadata: PublicMetadata = Field(description=f"allow-listed keys only: {', '.join(sorted(PUBLIC_METADATA_KEYS))}")
    thumbnail_url: str
    archive_url: str | None = Field(
        default=None, description="the study in the archive's viewer (CHEXTRIEV_STUDY_URL_TEMPLATE), for a case "
                                  "imported from the archive when a template is configured")


class CaseSummary(BaseModel):
    """A gallery case in a listing: enough to show it and pick it."""

    case_id: str
    findings: list[str]
    metadata: PublicMetadata = Field(description=f"allow-listed keys only: {', '.join(sorted(PUBLIC_METADATA_KEYS))}")
    thumbnail_url: str
    image_url: str = Field(description="the whole radiograph as an 8-bit grey PNG")


class CaseListing(BaseModel):
    """A page of the gallery's cases in case id order, and how many there are in all."""

    cases: list[CaseSummary]
    total: int


class SnapshotSummary(BaseModel):
    """What a snapshot's manifest says (without file digests), or why it cannot be read."""

    version: str
    created: str | None = None
    model_fingerprint: str | None = None
    dimension: int | None = None
    count: int | None = None
    factory: str | None = None
    search_parameters: str | None = None
    occlusion_regions: int | None = None
    region_count: int | None = Field(default=None, description="regions with per-region vectors (region search)")
    problem: str | None = None

    @classmethod
    def of_manifest(cls, manifest: Manifest) -> SnapshotSummary:
        """The summary of a loaded snapshot's manifest."""
        return cls(**_summary_fields(manifest.summary()))

    @classmethod
    def of_entry(cls, entry: StoreEntry) -> SnapshotSummary:
        """The summary of a store listing entry."""
        return cls(**_summary_fields(entry.summary()))


class IndexListing(BaseModel):
    """The active snapshot, the one a rollback returns to, and every snapshot in the store."""

    active: SnapshotSummary | None
    previous_version: str | None
    available: list[SnapshotSummary]


class ActivateRequest(BaseModel):
    """Which published snapshot version to activate."""

    # The pattern is documented, not enforced here: the index store refuses any other name (422) and
    # the refusal is audited like every activation request. Only a NUL, which no directory name and no
    # database row can hold, is refused before that.
    version: str = Field(min_length=1, max_length=128, json_schema_extra={"pattern": f"^{VERSION_PATTERN.pattern}$"},
                         description="a published snapshot version: letters, digits, '.', '_' or '-', "
                                     "starting with a letter or digit")

    @field_validator("version")
    @classmethod
    def _without_nul(cls, version: str) -> str:
        if "\x00" in version:
            raise ValueError("a snapshot version cannot contain a NUL character")
        return version


class ActivationResponse(BaseModel):
    """The snapshot now active and the one a rollback would return to."""

    active: SnapshotSummary
    previous_version: str | None


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The models and an index snapshot are loaded."""

    status: Literal["ready"] = "ready"
    index_version: str
    model_version: str
    anatomy_model_version: str = Field(description="SHA-256 of the anatomy model file")


def _summary_fields(summary: dict[str, Any]) -> dict[str, Any]:
    return {name: summary[name] for name in SnapshotSummary.model_fields if name in summary}
