"""`POST /search`: a radiograph, with its 18 region boxes or without them -> the most similar gallery cases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from model.errors import ImageTooLargeError
from service.dicomweb import UID_MAX_LENGTH, UID_PATTERN
from service.problems import Problem, field_problem
from service.reference_search import StudyReference
from service.routes.dependencies import State, problem_responses
from service.schemas import SearchResponse
from service.search_service import SearchQuery, run_search

router = APIRouter(tags=["search"])

REGIONS_HELP = ('optional JSON: {"right lung": [x1, y1, x2, y2], ...} with the 18 Chest ImaGenome region names '
                "in pixels of the uploaded image, or a Chest ImaGenome scene graph (objects with bbox_name and "
                "original_x1..original_y2); without it the anatomy model finds the regions")
REGIONS_OF_INTEREST_HELP = ('optional JSON list of 1-18 distinct region names, e.g. ["right lower lung zone"]: '
                            "rank by the similarity of these regions only (the mean over them of the query's and "
                            "the case's region embedding similarity); without it, by the whole image")


UID_FIELD = {"pattern": UID_PATTERN, "max_length": UID_MAX_LENGTH}


@router.post("/search", response_model=SearchResponse,
             responses=problem_responses(400, 404, 413, 415, 422, 503, 504))
async def search(
    request: Request,
    state: State,
    # Optional, yet typed as a file so that the OpenAPI document shows a binary part rather than "file or null".
    image: Annotated[UploadFile, File(
        description="DICOM Part 10, PNG (8 or 16 bit) or JPEG; or give study_uid instead")] = None,  # type: ignore[assignment]
    study_uid: Annotated[str | None, Form(
        description="search with this study of the DICOMweb archive instead of an upload: its frontal CR/DX "
                    "chest instance, or the one series_uid and sop_uid name", **UID_FIELD)] = None,
    series_uid: Annotated[str | None, Form(description="a series of study_uid", **UID_FIELD)] = None,
    sop_uid: Annotated[str | None, Form(description="an instance of series_uid", **UID_FIELD)] = None,
    regions: Annotated[str | None, Form(min_length=1, description=REGIONS_HELP)] = None,
    k: Annotated[int, Form(ge=1, le=100, description="how many cases to return")] = 5,
    exclude_patient_id: Annotated[str | None, Form(
        description="leave out every gallery case of this patient (matched by salted hash)")] = None,
    regions_of_interest: Annotated[str | None, Form(min_length=1, description=REGIONS_OF_INTEREST_HELP)] = None,
) -> SearchResponse:
    """The k most similar gallery cases, with their findings and metadata, the 18 regions used (the client's,
    or the anatomy model's when none are sent: `regions_source`), the versions used and timings. With
    `regions_of_interest`, cases are ranked by how alike those regions are (the mean of the regions' node
    embedding similarities) instead of the whole image. The query is an upload, or a study of the DICOMweb
    archive named by its UIDs (`source` says which instance)."""
    reference = study_reference(image is not None, study_uid, series_uid, sop_uid)
    data = await read_within(image, state.settings.max_upload_bytes) if image is not None else None
    patient = exclude_patient_id.strip() if exclude_patient_id and exclude_patient_id.strip() else None
    response = await run_in_threadpool(run_search, state, SearchQuery(data, regions, k, patient, regions_of_interest,
                                                                       reference))
    request.state.query_id = response.query_id
    return response


def study_reference(uploaded: bool, study_uid: str | None, series_uid: str | None,
                    sop_uid: str | None) -> StudyReference | None:
    """The archive reference the form names (None for an upload); 422 unless exactly one of an image and a
    study is given, and an instance comes with its series."""
    if uploaded == (study_uid is not None):
        raise Problem(422, "invalid-request", "invalid request fields: image (give either an image file or a "
                      "study_uid, not both)",
                      [field_problem("image", "give an image or a study_uid", location="body")])
    if (series_uid is not None or sop_uid is not None) and study_uid is None:
        raise Problem(422, "invalid-request", "invalid request fields: study_uid (series_uid and sop_uid need it)",
                      [field_problem("study_uid", "missing", location="body")])
    if sop_uid is not None and series_uid is None:
        raise Problem(422, "invalid-request", "invalid request fields: series_uid (sop_uid needs it)",
                      [field_problem("series_uid", "missing", location="body")])
    return StudyReference(study_uid, series_uid, sop_uid) if study_uid is not None else None


async def read_within(upload: UploadFile, max_bytes: int) -> bytes:
    """The uploaded file's bytes, reading no more than one byte past `max_bytes` (413 past it)."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the image file is larger than the limit of {max_bytes} bytes")
    return data
