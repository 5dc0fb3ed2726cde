"""What a running service holds: settings, database sessions, the embedder with its micro-batcher and
case occlusions, the active index, the query cache and metrics; and the start-up load of the model
and the index snapshot.

The load runs in a worker thread after the server starts, so `/healthz` answers at once and
`/readyz` says 503 (with the reason) until both the model and a snapshot are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index_store.active import ActiveIndex
from index_store.backend import IndexBackend
from index_store.errors import SnapshotError, SnapshotNotFoundError
from model.anatomy_model import AnatomyModel
from model.devices import select_device
from model.embedder import Embedder
from model.errors import ChextrievError
from model.precision import dtype_named
from model.saliency import OcclusionResult, occlusion_embeddings
from service.case_images import load_case_pixels
from service.case_occlusions import CaseOcclusions
from service.db.repository import CaseRecord
from service.db.session import make_engine, make_session_factory
from service.embed_batcher import EmbedBatcher
from service.index_backend import make_backend
from service.metrics import IndexReading, ServiceMetrics
from service.problems import unavailable
from service.query_cache import QueryCache
from service.settings import Settings
from service.snapshot_records import commit_activation, record_refusal, recorded_choice

logger = logging.getLogger(__name__)

STARTUP_ACTOR = "startup"


class ServiceState:
    """Everything the routes share; built by `create_app`, loaded by `load()`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.query_cache = QueryCache(settings.query_ttl_seconds, settings.query_cache_size)
        self.metrics = ServiceMetrics(self.index_reading)
        self.embedder: Embedder | None = None
        self.batcher: EmbedBatcher | None = None  # set with the embedder
        self.occlusions: CaseOcclusions | None = None  # set with the embedder
        self.index: ActiveIndex | None = None
        self.anatomy: AnatomyModel | None = None
        self.load_problem: str | None = "the model and the index snapshot have not been loaded yet"
        self._load_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and a snapshot is active."""
        return (self.embedder is not None and self.anatomy is not None and self.index is not None
                and self.index.manifest is not None)

    def require_ready(self) -> tuple[Embedder, ActiveIndex]:
        """The embedder and the active index, or a 503 problem saying why they are not there."""
        embedder, index = self.embedder, self.index
        if embedder is None or self.anatomy is None or index is None or index.manifest is None:
            raise unavailable("not-ready", f"the service is not ready: {self.load_problem}")
        return embedder, index

    def require_anatomy(self) -> AnatomyModel:
        """The anatomy model, or a 503 problem while it is not loaded."""
        if self.anatomy is None:
            raise unavailable("not-ready", f"the anatomy model is not loaded: {self.load_problem}")
        return self.anatomy

    def index_reading(self) -> IndexReading:
        """The active manifest, readiness and cache size, for the metrics."""
        manifest = self.index.manifest if self.index is not None else None
        return IndexReading(manifest, self.ready, len(self.query_cache))

    def load(self) -> None:
        """Load the checkpoint, then activate the snapshot the database records as active (else the
        configured or newest compatible one); never raises, a failure is kept in `load_problem` for
        `/readyz`."""
        with self._load_lock:
            started = time.perf_counter()
            self.load_problem = "loading the model and the index snapshot"
            try:
                if self.anatomy is None:
                    self.anatomy = AnatomyModel.load(self.settings.anatomy_model)
                    # ONNX Runtime's first run allocates: spend it here, not on the first search (about 0.1 s).
                    self.anatomy.probabilities(np.zeros((64, 64), dtype=np.float32))
                if self.embedder is None:
                    self.embedder = _load_embedder(self.settings)
                    self.batcher = EmbedBatcher(self.embedder, wait_seconds=self.settings.batch_wait_ms / 1000,
                                                max_images=self.settings.batch_max_images)
                    self.occlusions = CaseOcclusions(
                        partial(_case_occlusion, self.embedder, self.settings.image_root),
                        busy=lambda: self.batcher.searches_in_progress > 0,
                        capacity=self.settings.occlusion_cache_size, ttl_seconds=self.settings.query_ttl_seconds)
                if self.index is None:
                    self.index = ActiveIndex(make_backend(self.settings),
                                             expected_fingerprint=self.embedder.fingerprint,
                                             device=self.embedder.device.type)
                if self.index.manifest is None:
                    self._activate_startup_version()
            except Exception as error:  # noqa: BLE001 - any failure is reported by /readyz, not raised
                # /readyz is public: it names the kind of failure; paths and messages go to the log only.
                self.load_problem = f"loading failed ({type(error).__name__}); the service log has the details"
                logger.error("service load failed", exc_info=not isinstance(error, ChextrievError | SnapshotError),
                             extra={"problem": f"{type(error).__name__}: {error}"})
                return
            self.load_problem = None
            manifest = self.index.manifest
            logger.info("service ready", extra={
                "index_version": manifest.version, "model_version": self.embedder.fingerprint,
                "count": manifest.count, "seconds": round(time.perf_counter() - started, 3)})

    def mark_index_active(self) -> None:
        """Clear the load problem once an administrator has activated a snapshot for the loaded model."""
        if self.ready:
            self.load_problem = None

    def close(self) -> None:
        """Stop the micro-batcher and the occlusion warmer, release the index, its back end and the database
        connections."""
        if self.batcher is not None:
            self.batcher.close()
        if self.occlusions is not None:
            self.occlusions.close()
        if self.index is not None:
            self.index.close()
            self.index.backend.close()
        self.engine.dispose()

    def _activate_startup_version(self) -> None:
        """Activate what the database records as active (its rollback target kept); if that snapshot
        cannot serve, the recorded previous one; else the configured or newest compatible version.
        Each refusal is audited; a snapshot an administrator activated meanwhile is kept."""
        recorded = recorded_choice(self.sessions)
        candidates = [] if recorded is None else [(recorded.version, recorded.previous_version)]
        if recorded is not None and recorded.previous_version is not None:
            candidates.append((recorded.previous_version, None))
        for version, previous_version in candidates:
            try:
                self._restore(version, previous_version)
                return
            except SnapshotError as error:
                record_refusal(self.sessions, version, STARTUP_ACTOR, str(error))
                logger.warning("recorded index snapshot cannot serve", extra={
                    "version": version, "problem": f"{type(error).__name__}: {error}"})
        version = self.settings.active_version or _newest_compatible(
            self.index.backend, self.embedder.fingerprint)
        try:
            self._restore(version, None)
        except SnapshotError as error:
            record_refusal(self.sessions, version, STARTUP_ACTOR, str(error))
            raise

    def _restore(self, version: str, previous_version: str | None) -> None:
        self.index.restore(version, previous_version, commit=partial(
            commit_activation, self.sessions, actor=STARTUP_ACTOR, outcome="activated"))


def _load_embedder(settings: Settings) -> Embedder:
    return Embedder.from_checkpoint(settings.checkpoint, device=select_device(settings.device),
                                    dtype=dtype_named(settings.dtype), runtime=settings.runtime,
                                    backbone_weights=settings.backbone_weights)


def _case_occlusion(embedder: Embedder, image_root: str, case: CaseRecord,
                    before_pass: Callable[[], None] | None) -> OcclusionResult:
    """The occlusion embeddings of a gallery case, from its image file and stored boxes."""
    return occlusion_embeddings(embedder, load_case_pixels(image_root, case),
                                np.asarray(case.region_boxes, dtype=np.float32), before_pass=before_pass)


def _newest_compatible(backend: IndexBackend, fingerprint: str) -> str:
    """The newest readable snapshot of `backend` built for the model `fingerprint`."""
    compatible = [entry.version for entry in backend.list_snapshots()
                  if entry.manifest is not None and entry.manifest.model_fingerprint == fingerprint]
    if not compatible:
        raise SnapshotNotFoundError(
            f"{backend.where} holds no snapshot built for model {fingerprint[:12]}...; publish one "
            "or set CHEXTRIEV_ACTIVE_VERSION")
    return compatible[-1]
