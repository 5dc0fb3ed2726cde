"""`GET /saliency` as a plain function: the region-occlusion similarity drops of one retrieved case
for one kept query, as JSON rows and optionally as a PNG. Runs in a worker thread.

The occlusion embeddings of the case come from the active snapshot when it has them; otherwise from
service.case_occlusions: computed from the case's image and stored boxes (only the crops that
overlap each blanked box), by this request or, ahead of it, in the background after the search that
returned the case, and kept for a while, so that asking for the PNG after the JSON costs no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index_store.errors import SnapshotNotFoundError
from model.catalogue import NUM_REGIONS
from model.saliency import region_saliency
from model.saliency_render import render_saliency_png
from service.case_images import load_case_pixels
from service.db.repository import CaseRecord, get_case
from service.db.session import session_scope
from service.problems import Problem, field_problem
from service.query_cache import CachedQuery
from service.schemas import RegionSaliency, SaliencyResponse, SaliencyTimings
from service.state import ServiceState
from service.timing import PhaseTimer


@dataclass(frozen=True)
class SaliencyOutcome:
    """The JSON answer and, when asked for, the PNG rendering."""

    response: SaliencyResponse
    png: bytes | None = None


def run_saliency(state: ServiceState, query_id: str, case_id: str, *, render: bool = False) -> SaliencyOutcome:
    """Saliency of `case_id` for the kept query `query_id`; 404 problems for an unknown query or case."""
    timer = PhaseTimer()
    embedder, index = state.require_ready()
    query = _kept_query(state, query_id)
    case = _stored_case(state, case_id)
    with index.lease() as snapshot:
        try:
            retrieved = snapshot.embedding(case_id)
        except SnapshotNotFoundError as error:
            raise _unknown_case(case_id, f"case {case_id} is not in the active index snapshot") from error
        occluded = snapshot.occlusion_embeddings(case_id)
    boxes = np.asarray(case.region_boxes, dtype=np.float32)
    recomputed, blanked, source = 0, 0, "snapshot"
    with timer.phase("occlusion"):
        if occluded is None or occluded.shape[0] != NUM_REGIONS:
            occlusion, source = state.occlusions.get(case)
            if source == "recomputed":
                recomputed, blanked = occlusion.recomputed_crops, occlusion.blanked_crops
            occluded, retrieved = occlusion.embeddings, occlusion.unoccluded
    saliency = region_saliency(query.embedding, retrieved, occluded, boxes, state.settings.saliency_scale)
    png = None
    if render:
        with timer.phase("render"):
            pixels = load_case_pixels(state.settings.image_root, case)
            png = render_saliency_png(pixels, saliency)
    response = SaliencyResponse(
        query_id=query_id, case_id=case_id, similarity=saliency.similarity, occlusion_source=source,
        noise_floor=saliency.scale.noise_floor, scale_max=saliency.scale.scale_max,
        stands_out=saliency.any_stands_out, regions=[RegionSaliency(**row) for row in saliency.rows()],
        timing_ms=SaliencyTimings(occlusion=timer.phases["occlusion"], total=timer.total_ms(),
                                  recomputed_crops=recomputed, blanked_crops=blanked))
    return SaliencyOutcome(response, png)


def _kept_query(state: ServiceState, query_id: str) -> CachedQuery:
    query = state.query_cache.get(query_id)
    if query is None:
        raise Problem(404, "unknown-query",
                      f"query {query_id} is unknown or has expired (queries are kept "
                      f"{state.settings.query_ttl_seconds} s); search again",
                      [field_problem("query_id", "unknown or expired query")])
    return query


def _stored_case(state: ServiceState, case_id: str) -> CaseRecord:
    with session_scope(state.sessions) as session:
        case = get_case(session, case_id)
    if case is None:
        raise _unknown_case(case_id, f"case {case_id} is not in the gallery")
    return case


def _unknown_case(case_id: str, detail: str) -> Problem:
    return Problem(404, "unknown-case", detail, [field_problem("case_id", "unknown case")])
