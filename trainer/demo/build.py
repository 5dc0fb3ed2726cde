"""The `chextriev demo` build: the bundled radiographs -> features -> a briefly trained model -> a
published index snapshot -> the cases handed to a case store, all under one work directory.

The offline half is built here; the case store is the caller's (the service's demo command writes
the cases into its database), so the trainer never imports the service.

Work directory (default ./var/demo):
- `features/`: backbone features of the 48 radiographs (trainer.feature_cache): EfficientNet-Lite0
  with its packaged ImageNet weights and single region crops unless the build names another backbone,
  weight file or crop scheme (model.region_crops);
- `training/`: the training run; `training/checkpoint/` is the model (trainer.training);
- `index/`: the index store; the demo's snapshot holds every case's embedding and its patient group
  key, and with `occlusion=True` its 18 occlusion embeddings (so /saliency needs no network pass for
  a gallery case; without them the service computes a case's occlusions when first asked);
- `chextriev.db`: the SQLite service database with the 48 cases, written by the case store;
- `patient_salt`: the salt of the patient hashes (mode 0600), made once, unless CHEXTRIEV_PATIENT_SALT
  is set; group keys and stored hashes are HMACs under it, so the service must use the same salt;
- `example_regions.json`: the 18 region boxes of the first bundled radiograph, for trying /search;
- `build.json`: the build record, written last.
Images are not copied: the image root is the bundled samples folder, which keeps each image beside
its licence and source (ATTRIBUTION.md), and the cases name their files relative to it.

Each step reuses its artefact when the build record shows it was made from the same inputs and the
artefact is still there and sound; otherwise it builds it again (the owning modules write
atomically). features: dataset, backbone and crop scheme (the fingerprint hashes the architecture's
name, its pooling and the weights as loaded, so another backbone, weight file or scheme rebuilds, the
same weights under another path do not); checkpoint: those and the model and training settings;
snapshot: the checkpoint's fingerprint, the salt and the occlusion option; database: the bundled
manifest's SHA-256, the salt and the case store's revision. A crash leaves no record of the step it
interrupted, so the next build redoes that step.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from index_store.errors import SnapshotError
from index_store.gallery import GalleryData
from index_store.manifest import Manifest
from index_store.store import list_snapshots, publish_gallery
from model.backbones import Backbone, backbone_feature_dim, build_backbone, weights_source_digest
from model.catalogue import REGION_NAMES
from model.checkpoint import read_checkpoint_info
from model.config import ModelConfig
from model.devices import select_device
from model.embedder import Embedder
from model.errors import ChextrievError
from model.feature_extractor import FeatureExtractor
from model.fileio import atomic_write_bytes, sha256_file
from model.imaging import decode_image
from model.patient_keys import patient_group_keys
from model.precision import dtype_named
from model.region_crops import SINGLE, RegionCrops, region_crops_named
from model.saliency import occlusion_embeddings
from trainer.cached_embeddings import load_network_for, network_embeddings, network_node_embeddings, patient_groups
from trainer.datasets.manifest import read_manifest
from trainer.datasets.records import Dataset, ImageRecord
from trainer.demo.samples import SAMPLE_DIR, load_sample_cases
from trainer.feature_cache import FeatureCache, FeatureCacheError, dataset_fingerprint, extract_features
from trainer.training import CHECKPOINT_DIRNAME, TrainingConfig, train

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORK_DIR = Path("var/demo")
RECORD_FORMAT = "chextriev-demo-build/1"
MANIFEST = SAMPLE_DIR / "manifest.csv"
MANIFEST_COLUMNS = {"patient_id": "patientid"}
LABEL_COLUMNS = ("finding",)
YES_NO_LABEL_COLUMNS = ("survival", "intubated", "went_icu", "needed_supplemental_O2")
# Every case is in the gallery and nothing is evaluated, so there is no test split; 30% validation
# gives model selection about 14 images to rest on instead of about 4.
SPLIT_FRACTIONS = (0.7, 0.3, 0.0)
BACKBONE = "efficientnet_lite0"
DEFAULT_WEIGHTS = "default"  # the backbone's packaged or published ImageNet weights (model.backbones)
VARIANT = "V6"
# A quarter of the paper's width, 4 heads, 2 layers: 1.7M parameters. The small-data preset (steps of 8
# images, a quarter of the 34 training images; validated every 5 steps; cosine schedule) over 20 epochs
# (100 steps), all run (patience = every validation), so the build takes the same time every time; the validation
# with the best AUC is kept. The embeddings are centred on the training images' mean retrieval state:
# uncentred, every pair of radiographs scored above 0.98 (README, "The demo's similarity scores").
MODEL_SIZES = {"width": 256, "num_heads": 4, "head_dim": 64, "ff_dim": 512}
TRAINING = TrainingConfig.preset("small-data", max_epochs=20, patience=20, centre_embeddings=True, devices=1)
# The record keeps the HMAC of this message under the salt: it shows a changed salt, not the salt.
SALT_CHECK_MESSAGE = "chextriev demo salt check"
# Actions a step reports in the build record.
BUILT, REUSED = "built", "reused"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's artefacts live under its work directory."""

    work_dir: Path

    @property
    def features(self) -> Path:
        return self.work_dir / "features"

    @property
    def training(self) -> Path:
        return self.work_dir / "training"

    @property
    def checkpoint(self) -> Path:
        return self.training / CHECKPOINT_DIRNAME

    @property
    def index_store(self) -> Path:
        return self.work_dir / "index"

    @property
    def database(self) -> Path:
        return self.work_dir / "chextriev.db"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def salt(self) -> Path:
        return self.work_dir / "patient_salt"

    @property
    def example_regions(self) -> Path:
        return self.work_dir / "example_regions.json"

    @property
    def record(self) -> Path:
        return self.work_dir / "build.json"


@dataclass(frozen=True)
class DemoCase:
    """One gallery case as the service stores it: findings, the 18 region boxes, the image path
    relative to the samples folder, size and licence metadata. `patient_id` is for the store to hash."""

    case_id: str
    patient_id: str | None
    findings: list[str]
    region_boxes: list[list[float]]
    image_path: str
    width: int
    height: int
    metadata: dict[str, str]


class CaseStore(Protocol):
    """Where the demo's cases go (the service's database); the build's last step."""

    def revision(self) -> str | None:
        """The store's schema revision when it exists and is up to date; None when it must be filled."""

    def fill(self, cases: list[DemoCase]) -> str:
        """Write (insert or update) every case; return the store's revision."""


@dataclass(frozen=True)
class DemoBuild:
    """A finished build: where it lives, its record, its salt, and a radiograph to try it with."""

    paths: DemoPaths
    record: dict[str, Any]
    salt: str
    example_image: Path
    example_regions: Path


@dataclass(frozen=True)
class Compute:
    """Where the demo embeds its gallery: a device name and a dtype name (model.precision)."""

    device: str = "cpu"
    dtype: str = "float32"


def build_demo(work_dir: str | os.PathLike, case_store: Callable[[DemoPaths, str], CaseStore], *,
               rebuild: bool = False, occlusion: bool = False, compute: Compute = Compute(),
               configured_salt: str | None = None, backbone: str = BACKBONE,
               backbone_weights: str = DEFAULT_WEIGHTS, region_crops: str = SINGLE.name) -> DemoBuild:
    """Build (or reuse) every demo artefact under `work_dir`; `case_store(paths, salt)` receives the cases.

    `rebuild` ignores the build record, so every step runs again; `occlusion=True` precomputes every
    case's occlusion embeddings into the snapshot (a much slower first build; without them /saliency
    computes them per case when asked). `backbone` names the architecture (model.backbones) and
    `backbone_weights` its weights: "default" or a weight file path; the service must load the same.
    `region_crops` names the crop scheme (model.region_crops) of the features and so of the model.
    `configured_salt` is the deployment's patient salt, else the work directory's is used.
    Raises ChextrievError, SnapshotError or the case store's error when a step fails; a failed build
    records nothing, so the next one compares its inputs with the last finished build's.
    """
    started = time.perf_counter()
    paths = DemoPaths(Path(work_dir).resolve())
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    dtype_named(compute.dtype)  # an unknown name stops the build before any work
    crops = region_crops_named(region_crops)
    salt = demo_salt(paths, configured_salt)
    store = case_store(paths, salt)
    previous = {} if rebuild else read_build_record(paths.record)
    dataset = demo_dataset()
    backbone_record = {"name": backbone, "weights": str(backbone_weights),
                       "weights_sha256": weights_source_digest(backbone, backbone_weights),
                       "region_crops": crops.name}
    backbone_model = functools.cache(lambda: build_backbone(backbone, backbone_weights, pooling=crops.pooling))
    model_config = ModelConfig.for_variant(VARIANT, input_dim=backbone_feature_dim(backbone),
                                           num_classes=len(dataset.label_names), **MODEL_SIZES)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "manifest_sha256": sha256_file(MANIFEST),
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "backbone": backbone_record,
        "backbone_fingerprint": _backbone_fingerprint(previous, backbone_record, backbone_model),
        "training": {"model": model_config.to_dict(), "training": TRAINING.to_dict()},
        "salt_check": patient_group_keys([SALT_CHECK_MESSAGE], salt)[0],
        "embedder": {"device": compute.device, "dtype": compute.dtype},
    }
    same = _same_inputs(previous, record)
    logger.info("demo build started", extra={"work_dir": str(paths.work_dir), "rebuild": rebuild,
                                             "occlusion": occlusion, "build_record": bool(previous)})
    steps: dict[str, str] = {}
    cache = _run_step(
        steps, "features",
        lambda: (_complete_cache(paths.features)
                 if same("dataset_fingerprint", "backbone_fingerprint") else None),
        lambda: _extract_features(paths.features, dataset, backbone_model(), crops, compute.device))
    fingerprint = _run_step(
        steps, "checkpoint",
        lambda: (_checkpoint_fingerprint(paths.checkpoint, previous.get("checkpoint_fingerprint"))
                 if same("dataset_fingerprint", "backbone_fingerprint", "training") else None),
        lambda: _train(paths.training, cache, model_config))
    manifest = _run_step(
        steps, "snapshot",
        lambda: (_published_snapshot(paths.index_store, previous.get("snapshot_version"), fingerprint, occlusion)
                 if same("salt_check", "embedder") else None),
        lambda: _publish_gallery(paths, dataset, cache, backbone_model(), salt, occlusion, compute))
    revision = _run_step(
        steps, "database",
        lambda: (_current_cases(paths, store, previous.get("db_revision"))
                 if same("manifest_sha256", "salt_check") else None),
        lambda: _fill_cases(paths, dataset, store))
    record.update({
        "checkpoint_fingerprint": fingerprint,
        "snapshot_version": manifest.version,
        "occlusion": manifest.occlusion_regions is not None,
        "db_revision": revision,
        "cases": manifest.count,
        "steps": steps,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
    })
    atomic_write_bytes(paths.record, json.dumps(record, indent=2).encode())
    logger.info("demo build finished", extra={"work_dir": str(paths.work_dir), "steps": steps,
                                              "snapshot_version": manifest.version, "cases": manifest.count,
                                              "seconds": record["seconds"]})
    return DemoBuild(paths=paths, record=record, salt=salt, example_image=dataset.records[0].image_path,
                     example_regions=paths.example_regions)


def demo_dataset() -> Dataset:
    """The bundled radiographs as a dataset: labels from `finding` and the yes/no outcome columns,
    regions derived from the expert lung boxes, split by patient."""
    return read_manifest(MANIFEST, columns=MANIFEST_COLUMNS, label_columns=LABEL_COLUMNS,
                         yes_no_label_columns=YES_NO_LABEL_COLUMNS, split_fractions=SPLIT_FRACTIONS)


def demo_salt(paths: DemoPaths, configured: str | None) -> str:
    """The configured patient salt, else the work directory's, else a new random one saved there (0600)."""
    if configured is not None:
        return configured
    if paths.salt.is_file():
        return paths.salt.read_text().strip()
    salt = secrets.token_hex(32)
    atomic_write_bytes(paths.salt, salt.encode())
    os.chmod(paths.salt, 0o600)
    logger.info("patient salt generated", extra={"path": str(paths.salt)})
    return salt


def read_build_record(path: Path) -> dict[str, Any]:
    """The build record at `path`, or {} when there is none or it is unreadable (everything is rebuilt)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("build record unreadable: rebuilding", extra={"path": str(path), "problem": str(error)})
        return {}
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else {}


def _backbone_fingerprint(previous: dict[str, Any], backbone: dict[str, Any],
                          build: Callable[[], Backbone]) -> str:
    """The previous build's backbone fingerprint when it was built from the same architecture and the
    same weight file bytes (a warm start then never builds the backbone), else the built one's."""
    if backbone["weights_sha256"] is not None and previous.get("backbone") == backbone:
        return previous["backbone_fingerprint"]
    return build().fingerprint


def _same_inputs(previous: dict[str, Any], current: dict[str, Any]) -> Callable[..., bool]:
    """A test: were the named inputs of the previous build the same as this one's?"""
    return lambda *keys: bool(previous) and all(previous.get(key) == current[key] for key in keys)


def _run_step(steps: dict[str, str], name: str, existing: Callable[[], T | None], build: Callable[[], T]) -> T:
    """The step's reusable artefact (`existing()`, None when there is none), else `build()`; logged and
    recorded in `steps`."""
    started = time.perf_counter()
    result = existing()
    action = REUSED if result is not None else BUILT
    if result is None:
        logger.info("demo step started", extra={"step": name})
        result = build()
    steps[name] = action
    logger.info("demo step finished", extra={"step": name, "action": action,
                                             "seconds": round(time.perf_counter() - started, 2)})
    return result


def _complete_cache(directory: Path) -> FeatureCache | None:
    try:
        return FeatureCache.open(directory)
    except FeatureCacheError:
        return None


def _extract_features(directory: Path, dataset: Dataset, backbone: Backbone, crops: RegionCrops,
                      device: str) -> FeatureCache:
    shutil.rmtree(directory, ignore_errors=True)
    extractor = FeatureExtractor(backbone, device=select_device(device), region_crops=crops)
    return extract_features(dataset, extractor, directory, num_workers=0)


def _checkpoint_fingerprint(directory: Path, expected: str | None) -> str | None:
    """The checkpoint's fingerprint when it is sound and the one recorded, else None."""
    try:
        fingerprint = read_checkpoint_info(directory).fingerprint
    except ChextrievError:
        return None
    return fingerprint if fingerprint == expected else None


def _train(directory: Path, cache: FeatureCache, model_config: ModelConfig) -> str:
    shutil.rmtree(directory, ignore_errors=True)
    result = train(cache, model_config, TRAINING, directory)
    logger.info("demo model trained", extra={"best_epoch": result.best_epoch, "val_auc": result.best_val_auc,
                                             "epochs_run": result.epochs_run, "parameters": result.parameters})
    return read_checkpoint_info(result.checkpoint_dir).fingerprint


def _published_snapshot(store: Path, version: str | None, fingerprint: str, occlusion: bool) -> Manifest | None:
    """The recorded snapshot's manifest when it is published for this checkpoint with region vectors (and
    occlusion embeddings when they are asked for), else None. The service verifies its files when it loads it."""
    try:
        entries = list_snapshots(store)
    except SnapshotError:
        return None
    manifest = next((entry.manifest for entry in entries if entry.version == version), None)
    if (manifest is None or manifest.model_fingerprint != fingerprint or manifest.region_count is None
            or (occlusion and manifest.occlusion_regions is None)):
        return None
    return manifest


def _publish_gallery(paths: DemoPaths, dataset: Dataset, cache: FeatureCache, backbone: Backbone, salt: str,
                     occlusion: bool, compute: Compute) -> Manifest:
    """Embed every case (from the cached features) with its region embeddings, add its occlusion
    embeddings and group key, publish."""
    rows = np.flatnonzero(cache.usable)
    network, info = load_network_for(cache, paths.checkpoint)
    embedder = Embedder(backbone, network, info.fingerprint, device=select_device(compute.device),
                        dtype=dtype_named(compute.dtype), region_crops=info.region_crops)
    gallery = GalleryData(
        embeddings=network_embeddings(embedder.network, cache, rows, device=compute.device).astype(np.float32),
        case_ids=tuple(str(case_id) for case_id in cache.case_ids[rows]),
        group_keys=tuple(patient_group_keys(patient_groups(cache, rows), salt)),
        region_embeddings=network_node_embeddings(embedder.network, cache, rows,
                                                  device=compute.device).astype(np.float32),
    )
    if occlusion:
        records = {record.case_id: record for record in dataset.records}
        gallery = replace(gallery, occlusion_embeddings=gallery_occlusions(
            embedder, [records[case_id] for case_id in gallery.case_ids]))
    return publish_gallery(paths.index_store, gallery, model_fingerprint=info.fingerprint)


def gallery_occlusions(embedder: Embedder, records: list[ImageRecord]) -> np.ndarray:
    """Float32 (N, 18, D): each record's embedding with each of its regions blanked in turn."""
    occluded = []
    for record in tqdm(records, desc="occlusion embeddings", unit="image"):
        image = decode_image(record.image_path)
        boxes = record.anatomy.boxes_for(image)
        occluded.append(occlusion_embeddings(embedder, image.pixels, boxes).embeddings)
    return np.stack(occluded).astype(np.float32)


def _current_cases(paths: DemoPaths, store: CaseStore, recorded: str | None) -> str | None:
    """The store's revision when it is up to date and the recorded one, and the example is there."""
    if not paths.example_regions.is_file():
        return None
    revision = store.revision()
    return revision if revision is not None and revision == recorded else None


def _fill_cases(paths: DemoPaths, dataset: Dataset, store: CaseStore) -> str:
    """Hand every case to the store, and write the example regions file."""
    cases = demo_cases(dataset)
    revision = store.fill(cases)
    example = cases[0]
    regions = dict(zip(REGION_NAMES, example.region_boxes, strict=True))
    atomic_write_bytes(paths.example_regions, json.dumps(regions, indent=2).encode())
    return revision


def demo_cases(dataset: Dataset) -> list[DemoCase]:
    """The bundled cases as the service stores them: findings, the 18 derived region boxes, the image
    path relative to the samples folder, and licence metadata."""
    samples = {case.case_id: case for case in load_sample_cases()}
    cases = []
    for record in dataset.records:
        image = decode_image(record.image_path)
        boxes = record.anatomy.boxes_for(image)
        metadata = {key: value for key, value in samples[record.case_id].metadata.items() if value}
        cases.append(DemoCase(
            case_id=record.case_id,
            patient_id=record.patient_id or None,
            findings=list(record.labels),
            region_boxes=boxes.tolist(),
            image_path=record.image_path.relative_to(SAMPLE_DIR).as_posix(),
            width=image.width, height=image.height,
            metadata=metadata,
        ))
    return cases
