"""`chextriev bench http`: POST /search end to end over HTTP against real uvicorn servers, several
server configurations in one run so that every figure has its baseline (eager PyTorch) from the same run.

Each configuration is a fresh server process on a free local port: `chextriev demo` on the built demo
(so its time to /readyz is the demo's warm start), or `chextriev serve` on a copy of the demo grown
with synthetic gallery cases (`extra_gallery`). Every request is a real multipart upload of a bundled
radiograph with its 18 region boxes as the `regions` field, as the README's curl example sends it.
Per server: seconds from process start to /readyz 200 (and the CPU seconds it used until then),
latency percentiles and throughput for each
number of concurrent clients, the answers that were not 200, the server's peak and final RSS
(/proc/<pid>/status VmHWM and VmRSS) and the bytes of its index snapshot and database on disk. The
bench's own clients share the machine's cores with the server.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import torch
import torchvision
from pydantic import SecretStr
from sqlalchemy import insert, select

from index_store.gallery import GalleryData
from index_store.snapshot import GROUP_KEYS_FILE
from index_store.store import open_version, publish_gallery
from index_store.synthetic import cluster_centres, clustered_unit_vectors
from model.anatomy import boxes_by_name
from model.fileio import atomic_write_bytes
from service.commands.demo import demo_settings
from service.db.models import Case
from service.db.session import make_engine, make_session_factory, session_scope
from service.snapshot_records import commit_activation
from trainer.demo.build import BACKBONE, DEFAULT_WORK_DIR, DemoPaths, demo_salt
from trainer.demo.samples import load_sample_cases, sample_case_input

logger = logging.getLogger(__name__)

BASELINE = "eager"
# CHEXTRIEV_* variables of each server configuration, over the demo's settings.
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "eager": {"CHEXTRIEV_RUNTIME": "torch"},
    "fast": {"CHEXTRIEV_RUNTIME": "auto"},
    "fast-batched": {"CHEXTRIEV_RUNTIME": "auto", "CHEXTRIEV_BATCH_WAIT_MS": "5", "CHEXTRIEV_BATCH_MAX_IMAGES": "8"},
}
# The configuration that serves the grown galleries.
GALLERY_CONFIGURATION = "fast"
RESNET50 = "resnet50"
WARMUP_REQUESTS = 2
READY_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
SYNTHETIC_PREFIX = "synthetic-"  # demo case ids are cxrlb-NNNN, so synthetic ids cannot clash
SYNTHETIC_CLUSTERS, SYNTHETIC_SPREAD, SYNTHETIC_SEED = 1000, 1.0, 0
INSERT_CHUNK_ROWS = 50_000
RESNET50_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class HttpBenchConfig:
    """What to measure: the demo work directory, the configurations, requests, clients, extra galleries."""

    out: Path
    work_dir: Path = DEFAULT_WORK_DIR
    configurations: tuple[str, ...] = tuple(CONFIGURATIONS)
    requests: int = 40  # per level of concurrency, at least 2 per client
    clients: tuple[int, ...] = (1, 8, 32)
    k: int = 5
    extra_gallery: tuple[int, ...] = ()
    backbone: str = BACKBONE
    scratch_dir: Path | None = None  # kept when given; a temporary directory otherwise
    send_regions: bool = True  # False: every search leaves the regions to the anatomy model
    command_line: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))


@dataclass(frozen=True)
class Upload:
    """One /search request: a bundled radiograph's file and its 18 boxes as the `regions` JSON (None:
    sent without regions)."""

    filename: str
    content: bytes
    content_type: str
    regions: str | None


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its name, command line, CHEXTRIEV_* variables and what it serves."""

    name: str
    command: list[str]
    environment: dict[str, str]
    gallery_cases: int
    snapshot_dir: Path
    database: Path
    compared_with: str  # the configuration its ratios are against


def run_http_benchmark(config: HttpBenchConfig) -> dict[str, Any]:
    """Measure every configuration (and every grown gallery), rewriting the JSON report after each server."""
    unknown = sorted(set(config.configurations) - set(CONFIGURATIONS))
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; known: {', '.join(CONFIGURATIONS)}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress
    with _scratch(config.scratch_dir) as scratch:
        demo_arguments, work_dir, weights_note = _demo_arguments(config, scratch)
        record = _prepare_demo(demo_arguments)
        paths = DemoPaths(work_dir.resolve())
        uploads = bundled_uploads(with_regions=config.send_regions)
        report: dict[str, Any] = {
            "benchmark": "http", "command_line": list(config.command_line), "machine": machine(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"requests_per_level": config.requests, "clients": list(config.clients), "k": config.k,
                         "warmup_requests": WARMUP_REQUESTS, "uploads": len(uploads),
                         "regions": "client" if config.send_regions else "model",
                         "note": "the bench's HTTP clients share the machine's cores with the server"},
            "demo": {"work_dir": str(paths.work_dir), "snapshot_version": record["snapshot_version"],
                     "cases": record["cases"], "backbone": record["backbone"], "weights_note": weights_note,
                     "build_seconds": record["seconds"], "build_steps": record["steps"]},
            "servers": [],
        }
        specs = [_demo_server(name, demo_arguments, paths, record) for name in config.configurations]
        for extra in config.extra_gallery:
            specs.append(_grown_server(extra, paths, record, scratch))
        for spec in specs:
            report["servers"].append(measure_server(spec, uploads, config, scratch / "logs"))
            _add_ratios(report["servers"])
            report["warm_start_seconds"] = _warm_start(report["servers"])
            atomic_write_bytes(config.out, json.dumps(report, indent=2).encode())
    return report


def measure_server(spec: ServerSpec, uploads: list[Upload], config: HttpBenchConfig, log_dir: Path) -> dict:
    """Start the server, time it to /readyz 200, run every level of clients, read its RSS, stop it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [*spec.command, "--port", str(port)]
    base_url = f"http://127.0.0.1:{port}"
    _progress(f"{spec.name}: starting ({spec.gallery_cases} gallery cases)")
    with open(log_dir / f"{spec.name}.log", "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, **spec.environment}, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            ready_seconds = _wait_until_ready(process, base_url, started, log_dir / f"{spec.name}.log")
            ready_cpu_seconds = process_cpu_seconds(process.pid)
            _progress(f"{spec.name}: ready after {ready_seconds:.2f} s ({ready_cpu_seconds:.2f} s of CPU)")
            with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
                warmup_ms = [_search(client, uploads[i % len(uploads)], config.k)[1] for i in range(WARMUP_REQUESTS)]
            levels = []
            for clients in config.clients:
                levels.append(run_level(base_url, uploads, clients, max(config.requests, 2 * clients), config.k))
                _progress(f"{spec.name}: {clients} clients: p50 {levels[-1]['p50_ms']} ms, "
                          f"{levels[-1]['throughput_rps']} req/s, {levels[-1]['non_200']} not 200")
            memory = process_memory(process.pid)
        finally:
            stop_server(process)
    return {"name": spec.name, "gallery_cases": spec.gallery_cases, "compared_with": spec.compared_with,
            "command": command,
            "environment": _public(spec.environment), "ready_seconds": round(ready_seconds, 3),
            "ready_cpu_seconds": round(ready_cpu_seconds, 3),
            "warmup_ms": [round(ms, 1) for ms in warmup_ms], "levels": levels,
            "non_200": sum(level["non_200"] for level in levels), **memory,
            "snapshot_bytes": directory_bytes(spec.snapshot_dir), "database_bytes": spec.database.stat().st_size}


def run_level(base_url: str, uploads: list[Upload], clients: int, requests: int, k: int) -> dict[str, Any]:
    """`requests` searches by `clients` concurrent clients (one httpx client each); latency and throughput."""
    local = threading.local()
    opened: list[httpx.Client] = []

    def one(index: int) -> tuple[int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
            opened.append(local.client)
        return _search(local.client, uploads[index % len(uploads)], k)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            answers = list(pool.map(one, range(requests)))
    finally:
        for client in opened:
            client.close()
    seconds = time.perf_counter() - started
    latencies = np.array([ms for _, ms in answers])
    statuses = [status for status, _ in answers]
    p50, p90, p99 = (round(float(value), 1) for value in np.percentile(latencies, [50, 90, 99]))
    return {"clients": clients, "requests": requests, "seconds": round(seconds, 3),
            "throughput_rps": round(requests / seconds, 3), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "non_200": sum(status != 200 for status in statuses),
            "statuses": {str(status): statuses.count(status) for status in sorted(set(statuses))}}


def bundled_uploads(with_regions: bool = True) -> list[Upload]:
    """Every bundled radiograph as an upload, with the 18 boxes derived from its expert lung boxes
    unless `with_regions` is False."""
    uploads = []
    for case in load_sample_cases():
        _, boxes = sample_case_input(case)
        content_type = "image/png" if case.image_path.suffix.lower() == ".png" else "image/jpeg"
        uploads.append(Upload(case.image_path.name, case.image_path.read_bytes(), content_type,
                              json.dumps(boxes_by_name(boxes)) if with_regions else None))
    return uploads


def grow_gallery(paths: DemoPaths, record: dict[str, Any], extra: int, directory: Path) -> tuple[str, Path, Path]:
    """Publish the demo's cases plus `extra` synthetic unit vectors into a new store under `directory`,
    and copy the demo's database with a case row per synthetic vector, the grown snapshot recorded as
    active (the service restores the recorded choice first). The grown snapshot holds whole-image vectors
    only (the benchmark's searches are whole-image ones; 18 region vectors a case would make a grown gallery
    of 1M cases 18 times larger). Returns (version, store, database)."""
    store, database = directory / "index", directory / "chextriev.db"
    snapshot = open_version(paths.index_store, record["snapshot_version"])
    try:
        real_ids = snapshot.case_ids
        real = np.stack([snapshot.embedding(case_id) for case_id in real_ids]).astype(np.float32)
        real_keys = json.loads((snapshot.path / GROUP_KEYS_FILE).read_text())
        fingerprint = snapshot.manifest.model_fingerprint
    finally:
        snapshot.close()
    synthetic_ids = [f"{SYNTHETIC_PREFIX}{row:08d}" for row in range(extra)]
    centres = cluster_centres(SYNTHETIC_CLUSTERS, real.shape[1], SYNTHETIC_SEED)
    embeddings = np.concatenate([real, clustered_unit_vectors(centres, extra, SYNTHETIC_SPREAD, SYNTHETIC_SEED)])
    gallery = GalleryData(embeddings=embeddings, case_ids=(*real_ids, *synthetic_ids),
                          group_keys=(*real_keys, *synthetic_ids))  # each synthetic case is its own patient
    manifest = publish_gallery(store, gallery, model_fingerprint=fingerprint)
    shutil.copyfile(paths.database, database)
    engine = make_engine(f"sqlite:///{database}")
    try:
        sessions = make_session_factory(engine)
        _insert_synthetic_cases(sessions, real_ids[0], synthetic_ids)
        commit_activation(sessions, manifest, None, actor="bench", outcome="activated")
    finally:
        engine.dispose()
    return manifest.version, store, database


def _insert_synthetic_cases(sessions, template_id: str, case_ids: list[str]) -> None:
    """A row per synthetic case, a copy of the template case's columns under the new id (bulk insert)."""
    with session_scope(sessions) as session:
        template = session.execute(select(Case.__table__).where(Case.case_id == template_id)).mappings().one()
        columns = {name: value for name, value in template.items() if name not in ("case_id", "patient_hash")}
        for start in range(0, len(case_ids), INSERT_CHUNK_ROWS):
            session.execute(insert(Case.__table__),
                            [{**columns, "case_id": case_id} for case_id in case_ids[start:start + INSERT_CHUNK_ROWS]])


def write_random_resnet50(path: Path) -> Path:
    """A seeded randomly initialised torchvision ResNet50 state dict: serving latency does not depend on
    the weight values, and no ImageNet weights are available offline."""
    torch.manual_seed(RESNET50_WEIGHTS_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def machine() -> dict[str, Any]:
    """The machine and library versions a report was measured with."""
    model_names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")]
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "cpu_model": model_names[0] if model_names else platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
            "httpx": httpx.__version__}


def process_memory(pid: int) -> dict[str, int]:
    """Peak and current resident memory of process `pid` in bytes (VmHWM, VmRSS of /proc/<pid>/status)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"peak_rss_bytes": int(fields["VmHWM"].split()[0]) * 1024,
            "final_rss_bytes": int(fields["VmRSS"].split()[0]) * 1024}


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process `pid` has used (/proc/<pid>/stat): its start's cost in work,
    which other processes sharing the cores do not inflate as they do its wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def directory_bytes(directory: Path) -> int:
    """The bytes of every file under `directory`."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def free_port() -> int:
    """A local TCP port that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_server(process: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop), then SIGKILL when it has not exited in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def _demo_arguments(config: HttpBenchConfig, scratch: Path) -> tuple[list[str], Path, str | None]:
    """`chextriev demo` arguments of the served demo, its work directory, and a note on its weights.
    ResNet50 gets a demo of its own in the scratch directory, built on random weights."""
    command = [sys.executable, "-m", "service.cli", "demo"]
    if config.backbone == BACKBONE:
        return [*command, "--work-dir", str(config.work_dir)], config.work_dir, None
    if config.backbone != RESNET50:
        raise ValueError(f"unknown backbone {config.backbone!r}; expected {BACKBONE} or {RESNET50}")
    weights = write_random_resnet50(scratch / "resnet50-random.pth")
    work_dir = scratch / "demo-resnet50"
    note = (f"torchvision resnet50 with seeded random weights (seed {RESNET50_WEIGHTS_SEED}): no ImageNet "
            "weights are available offline; latency and memory do not depend on the weight values, "
            "retrieval quality does")
    return ([*command, "--work-dir", str(work_dir), "--backbone", RESNET50, "--backbone-weights", str(weights)],
            work_dir, note)


def _prepare_demo(demo_arguments: list[str]) -> dict[str, Any]:
    """Build the demo (or check it is built) with `--build-only`, so that every server starts warm."""
    _progress("demo: building or checking (--build-only)")
    completed = subprocess.run([*demo_arguments, "--build-only"], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"demo build failed ({completed.returncode}): {completed.stderr[-4000:]}")
    record = json.loads(completed.stdout.strip().splitlines()[-1])
    _progress(f"demo: {record['cases']} cases, steps {record['steps']}, {record['seconds']} s")
    return record


def _demo_server(name: str, demo_arguments: list[str], paths: DemoPaths, record: dict[str, Any]) -> ServerSpec:
    return ServerSpec(name=name, command=demo_arguments, environment=CONFIGURATIONS[name],
                      gallery_cases=record["cases"], snapshot_dir=paths.index_store / record["snapshot_version"],
                      database=paths.database, compared_with=BASELINE)


def _grown_server(extra: int, paths: DemoPaths, record: dict[str, Any], scratch: Path) -> ServerSpec:
    """`chextriev serve` over the demo grown by `extra` synthetic cases, with the `fast` configuration."""
    _progress(f"gallery +{extra}: publishing the snapshot and filling the database")
    started = time.perf_counter()
    version, store, database = grow_gallery(paths, record, extra, scratch / f"gallery-{extra}")
    _progress(f"gallery +{extra}: ready to serve after {time.perf_counter() - started:.1f} s")
    settings = demo_settings(paths, demo_salt(paths, os.environ.get("CHEXTRIEV_PATIENT_SALT")), record,
                             database_url=f"sqlite:///{database}", index_store=str(store), active_version=version)
    environment = {f"CHEXTRIEV_{name.upper()}": value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                   for name, value in settings.model_dump().items() if value is not None
                   and name not in ("host", "port")}
    return ServerSpec(name=f"{GALLERY_CONFIGURATION}+{extra}", command=[sys.executable, "-m", "service.cli", "serve"],
                      environment={**environment, **CONFIGURATIONS[GALLERY_CONFIGURATION]},
                      gallery_cases=record["cases"] + extra, snapshot_dir=store / version, database=database,
                      compared_with=GALLERY_CONFIGURATION)


def _wait_until_ready(process: subprocess.Popen, base_url: str, started: float, log_path: Path) -> float:
    """Seconds from `started` until GET /readyz answers 200 (polled every 50 ms)."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before it was ready: "
                                   f"{log_path.read_text()[-4000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S} s; its log: {log_path}")


def _search(client: httpx.Client, upload: Upload, k: int) -> tuple[int, float]:
    """POST /search with `upload`; the status code and the milliseconds until the whole answer was read."""
    started = time.perf_counter()
    response = client.post("/search", files={"image": (upload.filename, upload.content, upload.content_type)},
                           data={"k": str(k), **({} if upload.regions is None else {"regions": upload.regions})})
    return response.status_code, (time.perf_counter() - started) * 1000


def _add_ratios(servers: list[dict]) -> None:
    """Each server's p50 speed-up (reference p50 / its p50) and throughput ratio (its / the reference's)
    per number of clients, against its `compared_with` server (demo configurations against `eager`,
    grown galleries against `fast` on the demo's own gallery) when that one was measured."""
    by_name = {server["name"]: server for server in servers}
    for server in servers:
        reference = by_name.get(server["compared_with"])
        if reference is None or reference is server:
            continue
        baseline = {level["clients"]: level for level in reference["levels"]}
        server["ratios"] = [{"clients": level["clients"],
                             "p50_speedup": round(baseline[level["clients"]]["p50_ms"] / level["p50_ms"], 3),
                             "throughput_ratio": round(level["throughput_rps"]
                                                       / baseline[level["clients"]]["throughput_rps"], 3)}
                            for level in server["levels"] if level["clients"] in baseline]


def _warm_start(servers: list[dict]) -> dict[str, Any] | None:
    """The `fast` demo server's seconds to /readyz: the warm start of `chextriev demo`."""
    fast = next((server for server in servers if server["name"] == "fast"), None)
    return None if fast is None else {"command": fast["command"], "ready_seconds": fast["ready_seconds"],
                                      "ready_cpu_seconds": fast["ready_cpu_seconds"]}


def _public(environment: dict[str, str]) -> dict[str, str]:
    """The server's variables for the report, the patient salt and admin token left out."""
    secret = ("CHEXTRIEV_PATIENT_SALT", "CHEXTRIEV_ADMIN_TOKEN")
    return {name: value for name, value in environment.items() if name not in secret}


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _scratch(directory: Path | None) -> Iterator[Path]:
    """The given scratch directory (created, kept), or a temporary one removed afterwards."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="chextriev-http-bench-") as temporary:
        yield Path(temporary)
