"""A small real service setup for the API tests, built once per test session in a temporary directory.

Bundled radiographs -> EfficientNet-Lite0 region features -> a small untrained CheXtriev network
(width 64) saved as a checkpoint -> gallery embeddings -> two snapshots published into an index store
-> cases upserted into a SQLite database migrated with the Alembic migrations (copied for each service,
or filled afresh on PostgreSQL by `service_database`).

- "v1": the gallery with patient group keys, without occlusion embeddings (saliency recomputes them).
- "v2": the same gallery with occlusion embeddings. With derived regions they cost ~140 backbone crops
  per case (overlapping boxes), so only one case has them for real: SALIENCY_CASE, whose stored boxes
  tile its image in a 3 x 6 grid (boxes that only touch share no pixel, so blanking one changes only
  its own crop: 18 crops). Its row holds model.saliency.occlusion_embeddings; every other row holds
  its plain embedding 18 times (no region changes anything), which the snapshot format allows and no
  test asks saliency about.

Both test modules import the `service_setup` fixture; the setup itself is kept in the pytest config's
stash, so it is built once however many modules use it.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from index_store.gallery import GalleryData
from index_store.store import publish_gallery
from model.anatomy import boxes_by_name
from model.backbones import build_backbone
from model.catalogue import NUM_REGIONS
from model.checkpoint import BackboneRecord, save_checkpoint
from model.config import ModelConfig
from model.embedder import Embedder
from model.network import CheXtriev
from model.patient_keys import patient_group, patient_group_keys
from model.saliency import OcclusionResult, occlusion_embeddings
from service.db.migrate import upgrade
from service.db.repository import CaseRecord, patient_hash, upsert_cases
from service.db.session import make_engine, make_session_factory, session_scope
from service.settings import Settings
from tests.service.databases import scratch_database
from trainer.demo.samples import SampleCase, load_sample_cases, sample_case_input

SALT = "service-tests-patient-salt"
GALLERY_SIZE = 6  # cxrlb-0310/0311 share patient 219, cxrlb-0312/0313 patient 221
QUERY_CASE = "cxrlb-0310"
SALIENCY_CASE = "cxrlb-0007"
PLAIN_VERSION, OCCLUDED_VERSION = "v1", "v2"
_STASH_KEY = pytest.StashKey["ServiceSetup"]()


@dataclass(frozen=True)
class ServiceSetup:
    """Paths, model and gallery of the test service."""

    root: Path
    checkpoint: Path
    store: Path
    image_root: Path
    database: Path  # the SQLite gallery database that each `settings()` call copies
    embedder: Embedder
    cases: tuple[SampleCase, ...]
    inputs: dict[str, tuple[np.ndarray, np.ndarray]]  # case id -> (grey pixels, (18, 4) boxes)
    embeddings: dict[str, np.ndarray]  # case id -> gallery embedding (D,)
    saliency_occlusion: OcclusionResult  # of SALIENCY_CASE, as stored in "v2"

    @property
    def query_case(self) -> SampleCase:
        return next(case for case in self.cases if case.case_id == QUERY_CASE)

    def settings(self, **overrides) -> Settings:
        """Service settings over this setup (snapshot "v1" unless overridden). Without a `database_url`
        each call gets its own copy of the gallery database: a service records which snapshot is
        active, and the next service started on the same database would restore that choice."""
        if "database_url" not in overrides:
            copy = self.root / "databases" / f"{uuid.uuid4().hex}.db"
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.database, copy)
            overrides["database_url"] = f"sqlite:///{copy}"
        values = dict(index_store=str(self.store),
                      checkpoint=str(self.checkpoint), image_root=str(self.image_root),
                      patient_salt=SALT, active_version=PLAIN_VERSION, max_upload_bytes=4_000_000,
                      max_image_pixels=4_000_000)
        return Settings(**{**values, **overrides})


@pytest.fixture(scope="session")
def service_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServiceSetup:
    """The test service's files, built on first use in this session."""
    stash = request.config.stash
    if _STASH_KEY not in stash:
        stash[_STASH_KEY] = build_service_setup(tmp_path_factory.mktemp("service"))
    return stash[_STASH_KEY]


def build_service_setup(root: Path) -> ServiceSetup:
    """Build the checkpoint, gallery images, snapshots and database under `root`."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0")
    config = ModelConfig.for_variant("V6", input_dim=backbone.feature_dim, width=64, num_heads=4,
                                     head_dim=16, ff_dim=128)
    checkpoint = root / "checkpoint"
    save_checkpoint(checkpoint, CheXtriev(config), BackboneRecord.of(backbone))
    embedder = Embedder.from_checkpoint(checkpoint)

    cases = tuple(load_sample_cases()[:GALLERY_SIZE])
    image_root = root / "images"
    image_root.mkdir()
    for case in cases:
        shutil.copyfile(case.image_path, image_root / case.image_path.name)
    inputs = {case.case_id: sample_case_input(case) for case in cases}
    inputs[SALIENCY_CASE] = (inputs[SALIENCY_CASE][0], grid_boxes(*inputs[SALIENCY_CASE][0].shape))
    plain = embedder.embed_batch([pixels for pixels, _ in inputs.values()],
                                 np.stack([boxes for _, boxes in inputs.values()])).image
    occlusion = occlusion_embeddings(embedder, *inputs[SALIENCY_CASE])

    ids = tuple(case.case_id for case in cases)
    store = root / "index"
    for version, with_occlusions in ((PLAIN_VERSION, False), (OCCLUDED_VERSION, True)):
        publish_gallery(store, _gallery(cases, plain, occlusion, with_occlusions),
                        model_fingerprint=embedder.fingerprint, version=version)

    database = root / "service.db"
    fill_database(f"sqlite:///{database}", cases, inputs)
    return ServiceSetup(root, checkpoint, store, image_root, database, embedder, cases, inputs,
                        dict(zip(ids, plain, strict=True)), occlusion)


def service_gallery(setup: ServiceSetup, *, with_occlusions: bool) -> GalleryData:
    """The gallery of snapshot "v1" (False) or "v2" (True), e.g. to publish it into another back end."""
    plain = np.stack([setup.embeddings[case.case_id] for case in setup.cases])
    return _gallery(setup.cases, plain, setup.saliency_occlusion, with_occlusions)


def _gallery(cases: tuple[SampleCase, ...], plain: np.ndarray, occlusion: OcclusionResult,
             with_occlusions: bool) -> GalleryData:
    ids = tuple(case.case_id for case in cases)
    keys = tuple(patient_group_keys([patient_group(case.patient_id, case.case_id) for case in cases], SALT))
    if not with_occlusions:
        return GalleryData(plain, ids, keys)
    occluded = np.repeat(plain[:, None, :], NUM_REGIONS, axis=1)
    occluded[ids.index(SALIENCY_CASE)] = occlusion.embeddings
    return GalleryData(plain, ids, keys, occluded)


def fill_database(url: str, cases: tuple[SampleCase, ...],
                  inputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Migrate the empty database at `url` and store the gallery `cases` in it."""
    upgrade(url)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        upsert_cases(session, [_case_record(case, inputs[case.case_id]) for case in cases])
    engine.dispose()


@contextmanager
def service_database(setup: ServiceSetup, backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh database on `backend` ("sqlite" or "postgresql", see tests.service.databases)
    holding the setup's gallery cases; removed afterwards."""
    with scratch_database(backend, tmp_path) as url:
        fill_database(url, setup.cases, setup.inputs)
        yield url


def grid_boxes(height: int, width: int) -> np.ndarray:
    """18 boxes tiling a `height` x `width` image in 3 columns and 6 rows, in catalogue order."""
    columns, rows = np.linspace(0, width, 4), np.linspace(0, height, 7)
    return np.array([[columns[c], rows[r], columns[c + 1], rows[r + 1]] for r in range(6) for c in range(3)],
                    dtype=np.float32)


def _case_record(case: SampleCase, case_input: tuple[np.ndarray, np.ndarray]) -> CaseRecord:
    pixels, boxes = case_input
    return CaseRecord(case_id=case.case_id, patient_hash=patient_hash(case.patient_id, SALT), study_uid=None,
                      series_uid=None, sop_uid=None, findings=[case.finding], region_boxes=boxes.tolist(),
                      image_path=case.image_path.name, width=pixels.shape[1], height=pixels.shape[0],
                      metadata={"view": case.metadata["view"], "license": case.metadata["license"]})


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of a grey image in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def regions_json(boxes: np.ndarray) -> str:
    """(18, 4) boxes as the JSON object form of the `regions` field: {"right lung": [x1, y1, x2, y2], ...}."""
    return json.dumps(boxes_by_name(boxes))
