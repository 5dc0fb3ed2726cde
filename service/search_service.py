"""`POST /search` as a plain function: decode, take the client's regions or find them with the anatomy
model, embed, search, look up the cases, keep the query for saliency and audit the search. Runs in a
worker thread, never on the event loop; concurrent searches may share their embedding pass
(service.embed_batcher)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from index_store.backend import ServingSnapshot
from index_store.errors import SnapshotError
from index_store.search import Exclusion, QueryHits
from model.anatomy import parse_regions
from model.embedder import Embeddings
from model.errors import ChextrievError
from model.imaging import DecodedImage, ImageLimits, decode_image
from model.patient_keys import patient_hash
from service.db.repository import SearchAuditRecord, get_cases, record_search
from service.db.session import session_scope
from service.dicomweb import DicomwebArchive
from service.problems import Problem, field_problem, problem_from_error
from service.query_cache import CachedQuery
from service.query_regions import client_regions, model_regions
from service.reference_search import StudyReference, fetch_reference
from service.regions_of_interest import RegionsOfInterest, parse_regions_of_interest
from service.schemas import ArchiveSource, SearchResponse, SearchResult, SearchTimings, region_entries
from service.settings import Settings
from service.state import ServiceState
from service.study_checks import check_searchable_study
from service.timing import PhaseTimer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """One search request: the uploaded file's bytes or the archive's study to fetch them from (exactly
    one of the two), the regions JSON text (None: the anatomy model places them), k, whose cases to skip,
    and the regions of interest JSON text (None: whole image)."""

    image: bytes | None
    regions: str | None
    k: int
    exclude_patient_id: str | None = None
    regions_of_interest: str | None = None
    reference: StudyReference | None = None


def run_search(state: ServiceState, query: SearchQuery) -> SearchResponse:
    """Search the active index; every outcome, success or refusal, is written to the audit log."""
    query_id = uuid.uuid4().hex
    timer = PhaseTimer()
    try:
        response = _search(state, query, query_id, timer)
    except (ChextrievError, SnapshotError, Problem) as error:
        status = error.status if isinstance(error, Problem) else problem_from_error(error).status
        try:
            _audit(state, query_id, query.k, None, None, timer, [], status)
        except Exception:  # noqa: BLE001 - the client gets the search's own error; the log gets this one
            logger.exception("audit of a refused search failed", extra={"query_id": query_id})
        raise
    with timer.phase("db"):
        _audit(state, query_id, query.k, response.index_version, response.model_version, timer,
               [result.case_id for result in response.results], 200)
    response.timing_ms.db, response.timing_ms.total = timer.phases["db"], timer.total_ms()
    return response


def decode_query(upload: bytes, limits: ImageLimits) -> DecodedImage:
    """The decoded upload, checked to be a searchable study by its DICOM header."""
    image = decode_image(upload, limits)
    check_searchable_study(image.dicom)
    return image


def upload_limits(state: ServiceState) -> ImageLimits:
    """The configured limits on an uploaded image."""
    return upload_limits_of(state.settings)


def upload_limits_of(settings: Settings) -> ImageLimits:
    """The limits on an uploaded image that `settings` configure."""
    return ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)


def _search(state: ServiceState, query: SearchQuery, query_id: str, timer: PhaseTimer) -> SearchResponse:
    embedder, index = state.require_ready()
    batcher = state.batcher
    # Malformed boxes and regions of interest are refused before the image is decoded.
    sent_boxes = parse_regions(query.regions) if query.regions is not None else None
    interest = (parse_regions_of_interest(query.regions_of_interest)
                if query.regions_of_interest is not None else None)
    exclusion = _exclusion(state, query.exclude_patient_id)
    upload, source = query.image, None
    if query.reference is not None:
        with timer.phase("fetch"):
            upload, source = _fetch_reference(state, query.reference)
    with batcher.in_progress():
        with timer.phase("decode"):
            image = decode_query(upload, upload_limits(state))
        with timer.phase("anatomy"):
            regions = (client_regions(sent_boxes, image) if sent_boxes is not None
                       else model_regions(state.anatomy, image))
        boxes = regions.boxes
        with timer.phase("embed"):
            embeddings = batcher.embed(image.pixels, boxes)
    with timer.phase("search"), index.lease() as snapshot:
        if exclusion is not None and not snapshot.has_group_keys:
            raise Problem(422, "patient-exclusion-unavailable",
                          f"snapshot {snapshot.version} has no patient group keys to exclude by",
                          [field_problem("exclude_patient_id", "the active index cannot exclude by patient")])
        hits = _ranked(state, snapshot, embeddings, query.k, exclusion, interest)
        warm_occlusions = not snapshot.has_occlusions
    with timer.phase("db"), session_scope(state.sessions) as session:
        cases = get_cases(session, hits.case_ids)
    if warm_occlusions:  # the results a user is likely to open next (service.case_occlusions)
        warmed = hits.case_ids[:state.settings.occlusion_warm_results]
        state.occlusions.warm(cases[case_id] for case_id in warmed if case_id in cases)
    missing = [case_id for case_id in hits.case_ids if case_id not in cases]
    if missing:
        logger.warning("retrieved cases missing from the database",
                       extra={"index_version": hits.index_version, "case_ids": missing})
    state.query_cache.put(query_id, CachedQuery(
        query_id=query_id, embedding=embeddings.image[0], nodes=embeddings.nodes[0], boxes=boxes,
        index_version=hits.index_version, model_version=embedder.fingerprint))
    results = [SearchResult(rank=rank, case_id=case_id, score=score,
                            findings=cases[case_id].findings if case_id in cases else [],
                            metadata=cases[case_id].metadata if case_id in cases else {})
               for rank, case_id, score in zip(hits.ranks, hits.case_ids, hits.scores, strict=True)]
    phases = timer.phases
    return SearchResponse(query_id=query_id, index_version=hits.index_version, model_version=embedder.fingerprint,
                          regions_source=regions.source, regions=region_entries(boxes),
                          anatomy_model_version=state.anatomy.fingerprint if regions.source == "model" else None,
                          regions_of_interest=None if interest is None else list(interest.names),
                          results=results, source=source, timing_ms=SearchTimings(
                              fetch=phases.get("fetch", 0.0), decode=phases["decode"], anatomy=phases["anatomy"],
                              embed=phases["embed"], search=phases["search"], db=phases["db"], total=timer.total_ms()))


def _fetch_reference(state: ServiceState, reference: StudyReference) -> tuple[bytes, ArchiveSource]:
    """The referenced (or chosen) instance fetched from the archive, and which one it is."""
    data, instance = fetch_reference(DicomwebArchive.from_settings(state.settings), reference)
    return data, ArchiveSource(study_uid=instance.study_uid, series_uid=instance.series_uid, sop_uid=instance.sop_uid,
                               modality=instance.modality or None, view_position=instance.view_position or None)


def _ranked(state: ServiceState, snapshot: ServingSnapshot, embeddings: Embeddings, k: int,
            exclusion: Exclusion | None, interest: RegionsOfInterest | None) -> QueryHits:
    """The whole-image search, or with regions of interest the region-level search (exact, or re-ranking
    the configured whole-image shortlist)."""
    if interest is None:
        return snapshot.search(embeddings.image, k, exclusion)[0]
    return snapshot.search_regions(embeddings.nodes[0], interest.indices, k, exclusion,
                                   shortlist=state.settings.region_search_shortlist,
                                   image_query=embeddings.image[0])


def _exclusion(state: ServiceState, patient_id: str | None) -> Exclusion | None:
    """The group key of `patient_id` (the same salted hash as the index's group keys), if one is given."""
    if patient_id is None:
        return None
    salt = state.settings.patient_salt
    if salt is None:
        raise Problem(422, "patient-exclusion-unavailable",
                      "excluding a patient needs the patient salt the gallery was hashed with "
                      "(CHEXTRIEV_PATIENT_SALT), and none is configured",
                      [field_problem("exclude_patient_id", "patient exclusion is not configured")])
    return Exclusion(group_keys=frozenset({patient_hash(patient_id, salt.get_secret_value())}))


def _audit(state: ServiceState, query_id: str, k: int, index_version: str | None, model_version: str | None,
           timer: PhaseTimer, case_ids: list[str], status: int) -> None:
    record = SearchAuditRecord(query_id=query_id, created_at=datetime.now(timezone.utc), k=k,
                               index_version=index_version, model_fingerprint=model_version,
                               latency_ms=timer.total_ms(), result_case_ids=case_ids, status_code=status)
    with session_scope(state.sessions) as session:
        record_search(session, record)
