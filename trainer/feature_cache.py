"""The feature cache: the frozen backbone's features of every image of a dataset, computed once.

A cache is a directory holding
- `manifest.json`: format, dataset name and fingerprint, label names, regions source, backbone
  (name, weights id, fingerprint), compute dtype, preprocessing (with the crop scheme,
  model.region_crops), crops ("exact": model.crops, or
  "roi_align": cut on a GPU, see trainer.feature_pipeline; a cache made before it was recorded holds
  exact ones), feature_dim, count, created;
- `records.jsonl`: one line per row: case_id, patient_id, split, labels (positive label names);
- `region_features.npy` (N, 18, F) and `whole_image_features.npy` (N, F), float16;
- `done.npy` (N,) bool: rows finished;
- `skipped.npy` (N,) bool: rows whose image could not be used, kept only with skip_bad_images. Their
  features are zeros; `FeatureCache.usable` and `FeatureCache.indices(split)` leave them out, so
  training and evaluation, which select rows through them, never see them;
- `region_labels.npy` (N, 18, C) bool, optional: the labels positive in each region (catalogue
  order), present only when the dataset has region labels (Chest ImaGenome, not a manifest) and
  listed in the manifest as `"region_labels": "region_labels.npy"`; `FeatureCache.region_labels` is
  None without it. They are not part of the dataset fingerprint: a run on a cache without them (one
  made before they were kept) adds them, and a run refuses a cache holding other ones.

Writing is crash-safe and resumable. The arrays are preallocated and opened as memmaps; after
each batch the features (and skipped flags) are flushed before the batch's done flags, and the
manifest, written atomically after every file exists, is the commit point of the cache's creation;
the region labels are written next (file first, then the manifest that lists them, both atomically).
A killed run restarted with the same dataset and backbone recomputes only rows not done, in the
same batches, so the result is byte-identical to an uninterrupted run; a cache made with another
dataset, backbone, compute dtype, preprocessing or crops refuses to be resumed.

Several processes (torchrun, one per GPU, on one or more nodes) need no code change and no
torch.distributed: each reads its RANK and WORLD_SIZE (trainer.launch) and takes the rows
i % world_size == rank. Rank 0 creates the files; the others wait for the manifest, then all write
their own rows into the same memmaps, so the directory must be on a filesystem every process sees.
Processes on one node share the page cache, so this is always safe there. Across nodes the
filesystem must keep concurrent writes of different nodes to different bytes of one file apart, as
POSIX-coherent parallel filesystems (Lustre, GPFS) set out to; NFS does not promise it for
memory-mapped writes, so there use one node (its processes share the page cache). Each
process batches its own rows, so with several CPU threads, or on GPUs whose kernels depend on the
batch size, a feature can differ from a one-process run in its last fp16 bit; resuming with another
world size is allowed on the same terms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from model.catalogue import NUM_REGIONS
from model.checkpoint import BackboneRecord
from model.errors import ChextrievError
from model.feature_extractor import FeatureExtractor
from model.fileio import atomic_write_bytes
from model.preprocessing import preprocessing_config
from model.region_crops import SINGLE, RegionCrops, region_crops_recorded
from trainer.datasets.records import Dataset, ImageRecord
from trainer.feature_pipeline import (
    DeviceCropPipeline,
    ExactCropPipeline,
    PreparedBatch,
    default_workers,
    feature_pipeline,
)
from trainer.record_images import LoadedImage

logger = logging.getLogger(__name__)

CACHE_FORMAT = "chextriev-feature-cache/1"
MANIFEST_FILE = "manifest.json"
RECORDS_FILE = "records.jsonl"
REGION_FILE = "region_features.npy"
WHOLE_FILE = "whole_image_features.npy"
DONE_FILE = "done.npy"
SKIPPED_FILE = "skipped.npy"
REGION_LABELS_FILE = "region_labels.npy"
REGION_LABELS_KEY = "region_labels"  # manifest key listing REGION_LABELS_FILE, when the cache has it
CACHE_FILES = (MANIFEST_FILE, RECORDS_FILE, REGION_FILE, WHOLE_FILE, DONE_FILE, SKIPPED_FILE, REGION_LABELS_FILE)
SPLITS = ("train", "val", "test")
FEATURE_DTYPE = np.float16
MANIFEST_POLL_S = 0.5
CROPS_KEY, CROPS_BEFORE_RECORDED = "crops", ExactCropPipeline.crops


class FeatureCacheError(ChextrievError):
    """A feature cache is missing, damaged, incomplete, of another run, or cannot be filled."""


@dataclass(frozen=True, eq=False)
class FeatureCache:
    """An opened feature cache; its feature arrays are read-only memmaps (see the module docstring)."""

    directory: Path
    dataset_name: str
    label_names: tuple[str, ...]
    regions_source: str
    backbone: BackboneRecord
    compute_dtype: str
    case_ids: np.ndarray  # (N,) str
    patient_ids: np.ndarray  # (N,) object: str, or None where unknown
    splits: np.ndarray  # (N,) str: "train" | "val" | "test"
    labels: np.ndarray  # (N, C) bool, columns in label_names order
    region_features: np.ndarray  # (N, 18, F) float16
    whole_image_features: np.ndarray  # (N, F) float16
    done: np.ndarray  # (N,) bool
    skipped: np.ndarray  # (N,) bool
    region_labels: np.ndarray | None = None  # (N, 18, C) bool, or None when the cache holds none
    region_crops: RegionCrops = SINGLE  # the crop scheme its region features were computed with

    @classmethod
    def open(cls, directory: str | os.PathLike, *, allow_incomplete: bool = False) -> FeatureCache:
        """Open a cache; FeatureCacheError if damaged, made with other preprocessing, or incomplete
        (unless allow_incomplete, for inspecting a cache that is still being filled)."""
        directory = Path(directory)
        manifest = _read_manifest(directory)
        try:
            region_crops = region_crops_recorded(manifest.get("preprocessing"))
        except ChextrievError as error:
            raise FeatureCacheError(f"feature cache {directory}: {error}") from None
        if manifest.get("preprocessing") != preprocessing_config(region_crops):
            raise FeatureCacheError(f"feature cache {directory} was made with preprocessing "
                                    f"{manifest.get('preprocessing')}, this version uses "
                                    f"{preprocessing_config(region_crops)}")
        try:
            count, feature_dim = int(manifest["count"]), int(manifest["feature_dim"])
            label_names = tuple(manifest["label_names"])
            backbone = BackboneRecord(**manifest["backbone"])
            dataset_name, regions_source = str(manifest["dataset"]), str(manifest["regions_source"])
            compute_dtype = str(manifest["compute_dtype"])
        except (KeyError, TypeError, ValueError) as error:
            raise FeatureCacheError(f"{directory / MANIFEST_FILE}: incomplete manifest ({error!r})") from None
        records = _read_records(directory, count)
        arrays = _open_arrays(directory, count, feature_dim, "r")
        region_labels = _open_region_labels(directory, manifest, count, len(label_names))
        done, skipped = np.array(arrays[DONE_FILE]), np.array(arrays[SKIPPED_FILE])
        missing = int(count - done.sum())
        if missing and not allow_incomplete:
            raise FeatureCacheError(
                f"feature cache {directory} is incomplete: {missing} of {count} rows are missing. "
                "Run `chextriev features` again with the same options to finish it")
        return cls(
            directory=directory, dataset_name=dataset_name, label_names=label_names,
            regions_source=regions_source, backbone=backbone, compute_dtype=compute_dtype,
            case_ids=np.array([r["case_id"] for r in records], dtype=str),
            patient_ids=np.array([r["patient_id"] for r in records], dtype=object),
            splits=np.array([r["split"] for r in records], dtype=str),
            labels=_label_matrix(records, label_names, directory),
            region_features=arrays[REGION_FILE], whole_image_features=arrays[WHOLE_FILE],
            done=done, skipped=skipped, region_labels=region_labels, region_crops=region_crops,
        )

    @property
    def count(self) -> int:
        """Number of rows (images of the dataset)."""
        return len(self.case_ids)

    @property
    def feature_dim(self) -> int:
        """Size of one backbone feature."""
        return int(self.region_features.shape[2])

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: rows whose features exist (done and not skipped)."""
        return self.done & ~self.skipped

    def indices(self, split: str) -> np.ndarray:
        """Row indices of the usable images of `split` ("train", "val" or "test"), ascending."""
        if split not in SPLITS:
            raise FeatureCacheError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return np.flatnonzero((self.splits == split) & self.usable)

    def summary(self) -> dict:
        """Counts and identity of the cache, for logs and the command line."""
        return {"directory": str(self.directory), "dataset": self.dataset_name, "count": self.count,
                "done": int(self.done.sum()), "skipped": int(self.skipped.sum()),
                "splits": {split: int(len(self.indices(split))) for split in SPLITS},
                "feature_dim": self.feature_dim, "backbone": self.backbone.name,
                "compute_dtype": self.compute_dtype, "region_labels": self.region_labels is not None,
                "region_crops": self.region_crops.name}


def extract_features(dataset: Dataset, extractor: FeatureExtractor, out_dir: str | os.PathLike, *,
                     batch_size: int = 16, num_workers: int | None = None, rank: int = 0, world_size: int = 1,
                     skip_bad_images: bool = False, log_every: int = 20,
                     after_batch: Callable[[int], None] | None = None, wait_timeout_s: float = 600.0,
                     pipeline: ExactCropPipeline | DeviceCropPipeline | None = None) -> FeatureCache:
    """Fill (or resume) the feature cache `out_dir` with `extractor`'s features of `dataset`.

    This process takes the rows i % world_size == rank. An image that cannot be decoded or whose
    anatomy is invalid stops the run with FeatureCacheError (naming its case id), or with
    skip_bad_images is marked skipped. `after_batch(images done by this process in this run)` is
    called once each batch is on disk; whatever it raises ends the run with that batch kept. Returns
    the opened cache (with world_size > 1 it may still miss the rows of the other processes).
    `pipeline` (default: trainer.feature_pipeline's choice for the extractor's device) decodes, crops
    and runs the backbone; pass one to reuse its compiled backbone across runs. `num_workers` decoding
    processes (default: trainer.feature_pipeline.default_workers for the device).
    """
    if not dataset.records:
        raise FeatureCacheError(f"dataset {dataset.name!r} has no images")
    if num_workers is None:
        num_workers = default_workers(extractor.device)
    if batch_size < 1 or num_workers < 0 or log_every < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise FeatureCacheError(f"invalid run settings: batch_size={batch_size}, num_workers={num_workers}, "
                                f"log_every={log_every}, rank={rank}, world_size={world_size}")
    directory = Path(out_dir)
    pipeline = pipeline or feature_pipeline(extractor)
    expected = {**_run_manifest(dataset, extractor), CROPS_KEY: pipeline.crops}
    _prepare(directory, expected, dataset, rank, wait_timeout_s)
    arrays = _open_arrays(directory, expected["count"], expected["feature_dim"], "r+")
    mine = np.arange(rank, expected["count"], world_size)
    pending = mine[~np.asarray(arrays[DONE_FILE])[mine]].tolist()
    logger.info("feature extraction started", extra={
        "directory": str(directory), "rank": rank, "world_size": world_size, "rows": len(mine),
        "pending": len(pending), "device": str(extractor.device), "compute_dtype": expected["compute_dtype"],
        "batch_size": batch_size, "workers": num_workers, "crops": pipeline.crops})
    batches = pipeline.batches(dataset.records, pending, batch_size=batch_size, num_workers=num_workers)
    started, processed, skipped = time.perf_counter(), 0, 0
    with tqdm(total=len(mine), initial=len(mine) - len(pending), unit="image",
              desc="features" if world_size == 1 else f"features rank {rank}", disable=rank != 0) as progress:
        for number, batch in enumerate(batches, start=1):
            _report_bad_images(batch.bad, skip_bad_images)
            _write_batch(arrays, pipeline, batch)
            processed, skipped = processed + len(batch.rows), skipped + len(batch.bad)
            progress.update(len(batch.rows))
            if number % log_every == 0 or processed == len(pending):
                logger.info("feature batches written", extra={
                    "rank": rank, "batches": number, "images": processed, "pending": len(pending) - processed,
                    "skipped": skipped, "images_per_s": round(processed / (time.perf_counter() - started), 2)})
            if after_batch is not None:
                after_batch(processed)
    logger.info("feature extraction finished", extra={
        "rank": rank, "images": processed, "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2)})
    return FeatureCache.open(directory, allow_incomplete=world_size > 1)


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over what decides a dataset's cache rows: name, labels, regions source and, per record,
    case id, patient id, split, labels, image file name and anatomy (file paths by name only, so a
    moved data folder keeps its fingerprint; an anatomy model by its file's SHA-256 too). Region labels
    are left out (see the module docstring)."""
    digest = hashlib.sha256(_canonical([dataset.name, list(dataset.label_names), dataset.regions_source]))
    for record in dataset.records:
        digest.update(_canonical([record.case_id, record.patient_id, record.split, list(record.labels),
                                  record.image_path.name, _plain(record.anatomy)]))
    return digest.hexdigest()


def _run_manifest(dataset: Dataset, extractor: FeatureExtractor) -> dict:
    """The manifest this run's cache must have (all of it but `created`)."""
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "label_names": list(dataset.label_names),
        "regions_source": dataset.regions_source,
        "backbone": dataclasses.asdict(BackboneRecord.of(extractor.backbone)),
        "compute_dtype": str(extractor.dtype).removeprefix("torch."),
        "preprocessing": preprocessing_config(extractor.region_crops),
        "feature_dim": extractor.feature_dim,
        "num_regions": NUM_REGIONS,
        "count": len(dataset.records),
    }


def _prepare(directory: Path, expected: dict, dataset: Dataset, rank: int, wait_timeout_s: float) -> None:
    """Create the cache (rank 0, when it does not exist) or wait for it, then check it is this run's;
    rank 0 then adds the dataset's region labels when the cache lacks them."""
    manifest_path = directory / MANIFEST_FILE
    if rank == 0 and not manifest_path.exists():
        _create(directory, expected, dataset.records)
    else:
        deadline = time.monotonic() + wait_timeout_s
        while not manifest_path.exists():
            if time.monotonic() > deadline:
                raise FeatureCacheError(f"rank {rank}: rank 0 did not create the feature cache {directory} "
                                        f"within {wait_timeout_s:g} s")
            time.sleep(MANIFEST_POLL_S)
    existing = _read_manifest(directory)
    stored = {CROPS_KEY: CROPS_BEFORE_RECORDED, **existing}
    differences = [f"{key}: cache has {_short(stored.get(key))}, this run {_short(value)}"
                   for key, value in expected.items() if stored.get(key) != value]
    if differences:
        raise _another_run(directory, "; ".join(differences))
    if rank == 0:
        _keep_region_labels(directory, existing, dataset)


def _another_run(directory: Path, differences: str) -> FeatureCacheError:
    return FeatureCacheError(f"{directory} holds a feature cache of another run and cannot be resumed by this "
                             f"one ({differences}); use another output directory or delete it")


def _keep_region_labels(directory: Path, manifest: dict, dataset: Dataset) -> None:
    """Write the dataset's region labels into a cache that lacks them; refuse one holding other ones."""
    stored = _open_region_labels(directory, manifest, manifest["count"], len(manifest["label_names"]))
    wanted = dataset.region_label_matrix()
    if stored is None and wanted is not None:
        buffer = io.BytesIO()
        np.save(buffer, wanted)
        atomic_write_bytes(directory / REGION_LABELS_FILE, buffer.getvalue())
        _write_manifest(directory, {**manifest, REGION_LABELS_KEY: REGION_LABELS_FILE})
        logger.info("region labels written", extra={"directory": str(directory), "shape": list(wanted.shape)})
    elif stored is not None and (wanted is None or not np.array_equal(stored, wanted)):
        raise _another_run(directory, "region labels: the cache holds other ones than this run's dataset")


def _create(directory: Path, manifest: dict, records: Sequence[ImageRecord]) -> None:
    """Write records, preallocate zeroed arrays, and last, atomically, the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    strangers = sorted(path.name for path in directory.iterdir()
                       if path.name not in CACHE_FILES and not path.name.startswith("."))
    if strangers:
        raise FeatureCacheError(f"{directory} holds files of something else ({', '.join(strangers[:5])}); "
                                "choose a new or empty directory for the feature cache")
    lines = [json.dumps({"case_id": r.case_id, "patient_id": r.patient_id, "split": r.split,
                         "labels": list(r.labels)}) for r in records]
    atomic_write_bytes(directory / RECORDS_FILE, ("\n".join(lines) + "\n").encode())
    for name, shape, dtype in _array_layout(manifest["count"], manifest["feature_dim"]):
        array = open_memmap(directory / name, mode="w+", dtype=dtype, shape=shape)
        array.flush()
        del array
        with open(directory / name, "rb+") as handle:
            os.fsync(handle.fileno())
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write_manifest(directory, {**manifest, "created": created})
    logger.info("feature cache created", extra={"directory": str(directory), "count": manifest["count"],
                                                "feature_dim": manifest["feature_dim"]})


def _array_layout(count: int, feature_dim: int) -> list[tuple[str, tuple[int, ...], type]]:
    return [(REGION_FILE, (count, NUM_REGIONS, feature_dim), FEATURE_DTYPE),
            (WHOLE_FILE, (count, feature_dim), FEATURE_DTYPE),
            (DONE_FILE, (count,), np.bool_),
            (SKIPPED_FILE, (count,), np.bool_)]


def _open_arrays(directory: Path, count: int, feature_dim: int, mode: str) -> dict[str, np.memmap]:
    """The cache's arrays as memmaps (mode "r" or "r+"), each checked against the expected layout."""
    return {name: _open_array(directory, name, shape, dtype, mode)
            for name, shape, dtype in _array_layout(count, feature_dim)}


def _open_region_labels(directory: Path, manifest: dict, count: int, label_count: int) -> np.memmap | None:
    """The region labels as a read-only memmap, or None when the manifest lists none."""
    if REGION_LABELS_KEY not in manifest:
        return None
    return _open_array(directory, REGION_LABELS_FILE, (count, NUM_REGIONS, label_count), np.bool_, "r")


def _open_array(directory: Path, name: str, shape: tuple[int, ...], dtype: type, mode: str) -> np.memmap:
    """One array of the cache as a memmap, checked against its expected shape and dtype."""
    try:
        array = open_memmap(directory / name, mode=mode)
    except (OSError, ValueError) as error:
        raise FeatureCacheError(f"feature cache {directory}: {name} cannot be opened ({error})") from None
    if array.shape != shape or array.dtype != dtype:
        raise FeatureCacheError(f"feature cache {directory}: {name} is {array.dtype} {array.shape}, "
                                f"expected {np.dtype(dtype)} {shape}")
    return array


def _write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise FeatureCacheError(f"{directory} is not a feature cache (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FeatureCacheError(f"{path} cannot be read ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise FeatureCacheError(f"{path}: format {found!r}, expected {CACHE_FORMAT!r}")
    return manifest


def _read_records(directory: Path, count: int) -> list[dict]:
    path = directory / RECORDS_FILE
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise FeatureCacheError(f"{path} cannot be read ({error})") from None
    if len(records) != count:
        raise FeatureCacheError(f"{path} has {len(records)} records, the manifest says {count}")
    keys = {"case_id", "patient_id", "split", "labels"}
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not keys <= set(record):
            raise FeatureCacheError(f"{path} line {number}: expected the fields {', '.join(sorted(keys))}")
    return records


def _label_matrix(records: list[dict], label_names: tuple[str, ...], directory: Path) -> np.ndarray:
    column = {name: index for index, name in enumerate(label_names)}
    matrix = np.zeros((len(records), len(label_names)), dtype=bool)
    for row, record in enumerate(records):
        for label in record["labels"]:
            if label not in column:
                raise FeatureCacheError(f"feature cache {directory}: case {record['case_id']} has label "
                                        f"{label!r}, which is not among the manifest's label names")
            matrix[row, column[label]] = True
    return matrix


def _report_bad_images(bad: list[LoadedImage], skip: bool) -> None:
    """Log each unusable image by case id; unless skipping, stop with an error naming them."""
    for item in bad:
        logger.warning("image cannot be used", extra={"case_id": item.case_id, "problem": item.problem,
                                                      "action": "skipped" if skip else "stopped"})
    if bad and not skip:
        described = "; ".join(f"case {item.case_id}: {item.problem}" for item in bad)
        raise FeatureCacheError(
            f"{len(bad)} image(s) cannot be used ({described}). Fix or remove them, or skip such images "
            "(skip_bad_images=True, `chextriev features --skip-bad-images`): they are then marked skipped "
            "in the cache and left out of training and evaluation")


def _write_batch(arrays: dict[str, np.memmap], pipeline: ExactCropPipeline | DeviceCropPipeline,
                 batch: PreparedBatch) -> None:
    """Features of the batch's usable images, then skipped flags, flushed; then the done flags."""
    if batch.usable_rows:
        region, whole = pipeline.features(batch)
        rows = np.array(batch.usable_rows)
        arrays[REGION_FILE][rows] = region.to("cpu", torch.float16).numpy()
        arrays[WHOLE_FILE][rows] = whole.to("cpu", torch.float16).numpy()
    arrays[SKIPPED_FILE][[item.row for item in batch.bad]] = True
    for name in (REGION_FILE, WHOLE_FILE, SKIPPED_FILE):
        arrays[name].flush()
    arrays[DONE_FILE][batch.rows] = True
    arrays[DONE_FILE].flush()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


def _plain(value: object) -> object:
    """A JSON-able rendering of an anatomy source (dataclasses, paths by name, arrays as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"kind": type(value).__name__,
                **{field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}}
    if isinstance(value, Path):
        return value.name
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(value: object, limit: int = 100) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."
