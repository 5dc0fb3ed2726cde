"""`POST /search`: a radiograph, with its 18 region boxes or without them -> the most similar gallery cases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from model.errors import ImageTooLargeError
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


@router.post("/search", response_model=SearchResponse, responses=problem_responses(400, 413, 415, 422, 503))
async def search(
    request: Request,
    state: State,
    image: Annotated[UploadFile, File(description="DICOM Part 10, PNG (8 or 16 bit) or JPEG")],
    regions: Annotated[str | None, Form(min_length=1, description=REGIONS_HELP)] = None,
    k: Annotated[int, Form(ge=1, le=100, description="how many cases to return")] = 5,
    exclude_patient_id: Annotated[str | None, Form(
        description="leave out every gallery case of this patient (matched by salted hash)")] = None,
    regions_of_interest: Annotated[str | None, Form(min_length=1, description=REGIONS_OF_INTEREST_HELP)] = None,
) -> SearchResponse:
    """The k most similar gallery cases, with their findings and metadata, the 18 regions used (the client's,
    or the anatomy model's when none are sent: `regions_source`), the versions used and timings. With
    `regions_of_interest`, cases are ranked by how alike those regions are (the mean of the regions' node
    embedding similarities) instead of the whole image."""
    data = await read_within(image, state.settings.max_upload_bytes)
    patient = exclude_patient_id.strip() if exclude_patient_id and exclude_patient_id.strip() else None
    response = await run_in_threadpool(run_search, state, SearchQuery(data, regions, k, patient, regions_of_interest))
    request.state.query_id = response.query_id
    return response


async def read_within(upload: UploadFile, max_bytes: int) -> bytes:
    """The uploaded file's bytes, reading no more than one byte past `max_bytes` (413 past it)."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the image file is larger than the limit of {max_bytes} bytes")
    return data
