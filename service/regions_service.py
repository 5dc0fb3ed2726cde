"""`POST /regions` and `POST /preview` as plain functions (run in a worker thread): decode the upload, then
run the anatomy model, or make a picture of it that a browser can show (a DICOM it cannot decode)."""

from __future__ import annotations

from service.case_images import grey_png
from service.query_regions import model_regions
from service.schemas import AnatomyStructure, RegionsResponse, RegionTimings, region_entries
from service.search_service import decode_query, upload_limits
from service.state import ServiceState
from service.timing import PhaseTimer

PREVIEW_MAX_SIDE = 1024


def find_regions(state: ServiceState, upload: bytes) -> RegionsResponse:
    """The anatomy of the uploaded radiograph; NoChestFoundError (422) when the model finds no chest."""
    model = state.require_anatomy()
    timer = PhaseTimer()
    with timer.phase("decode"):
        image = decode_query(upload, upload_limits(state))
    with timer.phase("anatomy"):
        regions = model_regions(model, image)
    structures = [AnatomyStructure(name=found.name, box=list(found.box), outline=[list(p) for p in found.outline],
                                   confidence=round(found.confidence, 4), area_fraction=round(found.area_fraction, 4))
                  for found in regions.prediction.structures.values()]
    return RegionsResponse(width=image.width, height=image.height, regions=region_entries(regions.boxes),
                           structures=structures, anatomy_model_version=model.fingerprint,
                           timing_ms=RegionTimings(decode=timer.phases["decode"], anatomy=timer.phases["anatomy"],
                                                   total=timer.total_ms()))


def upload_preview(state: ServiceState, upload: bytes) -> tuple[bytes, int, int]:
    """The uploaded radiograph as an 8-bit grey PNG, its longer side at most PREVIEW_MAX_SIDE pixels,
    decoded and checked as a search would (so a file a search refuses is refused here too); and the
    upload's own width and height, the space of its region boxes."""
    image = decode_query(upload, upload_limits(state))
    return grey_png(image.pixels, PREVIEW_MAX_SIDE), image.width, image.height
