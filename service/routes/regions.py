"""`POST /regions`: a radiograph in, the lungs and heart the anatomy model finds and the 18 regions out;
`POST /preview`: a radiograph in, a PNG a browser can show out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.regions_service import find_regions, upload_preview
from service.routes.dependencies import State, problem_responses
from service.routes.search import read_within
from service.schemas import RegionsResponse

router = APIRouter(tags=["search"])


@router.post("/regions", response_model=RegionsResponse, responses=problem_responses(400, 413, 415, 422, 503))
async def regions(
    state: State,
    image: Annotated[UploadFile, File(description="DICOM Part 10, PNG (8 or 16 bit) or JPEG")],
) -> RegionsResponse:
    """The 18 region boxes and the outlines of the structures found, for checking the anatomy before a
    search; 422 when the model finds no plausible frontal chest."""
    data = await read_within(image, state.settings.max_upload_bytes)
    return await run_in_threadpool(find_regions, state, data)


@router.post("/preview", response_class=Response,
             responses={**problem_responses(400, 413, 415, 422, 503), 200: {"content": {"image/png": {}}}})
async def preview(
    state: State,
    image: Annotated[UploadFile, File(description="DICOM Part 10, PNG (8 or 16 bit) or JPEG")],
) -> Response:
    """The radiograph as an 8-bit grey PNG (longer side at most 1024 pixels), decoded as a search decodes it:
    for showing a DICOM, which a browser cannot decode. The headers X-Image-Width and X-Image-Height give
    the upload's own size (the space of its region boxes). Nothing is kept."""
    data = await read_within(image, state.settings.max_upload_bytes)
    png, width, height = await run_in_threadpool(upload_preview, state, data)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store",
                                                          "X-Image-Width": str(width), "X-Image-Height": str(height)})
