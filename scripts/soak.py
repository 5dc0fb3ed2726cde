"""Soak a real server: concurrent searches while snapshots are activated and rolled back.

Starts `chextriev serve` on the loopback over a gallery (a demo work directory, or explicit paths),
then for `--duration` seconds `--clients` threads search with bundled radiographs while another
thread activates the next snapshot every `--activate-every` seconds, every third time rolling back
instead. Every answer must be a 200 naming one of the store's snapshot versions; anything else is a
failure. Writes a JSON summary (requests, failures, p50/p99 latency, the server's peak RSS) and exits
1 if any request failed.

    python scripts/soak.py --demo-dir var/demo --out bench/results/soak.json
    python scripts/soak.py --checkpoint C --store S --database-url sqlite:///x.db --image-root I --duration 15

The database and store are used as given (the store must hold two snapshots of the model or more)
except with --demo-dir: its SQLite file is copied, and its snapshots are linked into a scratch store
beside two copies of the newest, so the soak changes nothing the demo keeps. The server runs with its
own admission settings: with the defaults, searches beyond the CPU count wait in its queue (64), so
32 clients are all served, none refused.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from index_store.store import list_snapshots, publish_directory
from model.anatomy import boxes_by_name
from trainer.demo.build import DemoPaths
from trainer.demo.samples import load_sample_cases, sample_case_input

READY_TIMEOUT_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 300
QUERY_IMAGES = 8
DEMO_COPIES = 2


@dataclass
class Tally:
    """What the clients and the activator saw; appended to from many threads (list.append is atomic)."""

    latencies: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chextriev-soak-") as scratch:
        environment = _server_environment(args, Path(scratch))
        summary = soak(environment, args, Path(scratch) / "server.log")
    _write_atomically(args.out, summary)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


def soak(environment: dict[str, str], args: argparse.Namespace, log: Path) -> dict:
    """Run the server with `environment` (its output to `log`), load it as `args` say, stop it; the
    summary. The server's log must not contain the admin token."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                  env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_ready(base, server)
        admin = {"Authorization": f"Bearer {environment['CHEXTRIEV_ADMIN_TOKEN']}"}
        versions = _compatible_versions(base, admin)
        queries = _queries()
        tally = Tally()
        deadline = time.monotonic() + args.duration
        threads = [threading.Thread(target=_search_until, args=(base, queries[i % len(queries)], deadline,
                                                                  set(versions), tally)) for i in range(args.clients)]
        threads.append(threading.Thread(target=_change_snapshots_until,
                                        args=(base, admin, versions, args.activate_every, deadline, tally)))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        peak_rss_mib = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    if environment["CHEXTRIEV_ADMIN_TOKEN"] in log.read_text(errors="replace"):
        tally.failures.append("the server log contains the admin token")
    return _summary(tally, args, versions, seconds, peak_rss_mib)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, help="a `chextriev demo` work directory (default paths from it)")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--store", type=Path, help="index store holding at least two snapshots of the model")
    parser.add_argument("--database-url")
    parser.add_argument("--image-root", type=Path)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent searching clients (default 32)")
    parser.add_argument("--activate-every", type=float, default=5.0,
                        help="seconds between snapshot changes; every third is a rollback (default 5)")
    parser.add_argument("--out", type=Path, required=True, help="JSON summary, written atomically")
    return parser


def _server_environment(args: argparse.Namespace, scratch: Path) -> dict[str, str]:
    """CHEXTRIEV_* variables of the server: the gallery's paths and a fresh admin token."""
    values = {"CHEXTRIEV_ADMIN_TOKEN": secrets.token_urlsafe(24),
              "CHEXTRIEV_HOST": "127.0.0.1"}
    if args.demo_dir is not None:
        paths = DemoPaths(args.demo_dir)
        database = scratch / "chextriev.db"
        shutil.copyfile(paths.database, database)
        values |= {"CHEXTRIEV_CHECKPOINT": str(paths.checkpoint),
                   "CHEXTRIEV_INDEX_STORE": str(_store_with_copies(paths.index_store, scratch / "index")),
                   "CHEXTRIEV_DATABASE_URL": f"sqlite:///{database}",
                   "CHEXTRIEV_PATIENT_SALT": paths.salt.read_text().strip()}
    explicit = {"CHEXTRIEV_CHECKPOINT": args.checkpoint, "CHEXTRIEV_INDEX_STORE": args.store,
                "CHEXTRIEV_DATABASE_URL": args.database_url, "CHEXTRIEV_IMAGE_ROOT": args.image_root}
    values |= {name: str(value) for name, value in explicit.items() if value is not None}
    return {**os.environ, **values}


def _store_with_copies(source: Path, store: Path) -> Path:
    """A new store holding `source`'s snapshots (linked) and DEMO_COPIES copies of its newest one, so
    that there are snapshots to switch between."""
    store.mkdir()
    entries = [entry for entry in list_snapshots(source) if entry.manifest is not None]
    for entry in entries:
        os.symlink((source / entry.version).resolve(), store / entry.version)
    for copy in range(1, DEMO_COPIES + 1):
        publish_directory(source / entries[-1].version, store, version=f"soak-copy-{copy}")
    return store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready within {READY_TIMEOUT_SECONDS} s")


def _compatible_versions(base: str, admin: dict[str, str]) -> list[str]:
    """The store's readable snapshots built for the served model; at least two are needed."""
    model = httpx.get(f"{base}/readyz").json()["model_version"]
    listing = httpx.get(f"{base}/admin/index", headers=admin).json()
    versions = [entry["version"] for entry in listing["available"]
                if entry["problem"] is None and entry["model_fingerprint"] == model]
    if len(versions) < 2:
        raise SystemExit(f"the store holds {len(versions)} snapshot(s) of the model; the soak needs two or more")
    return versions


def _queries() -> list[tuple[bytes, str]]:
    """PNG bytes and regions JSON of the first bundled radiographs."""
    queries = []
    for case in load_sample_cases()[:QUERY_IMAGES]:
        pixels, boxes = sample_case_input(case)
        buffer = io.BytesIO()
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
        queries.append((buffer.getvalue(), json.dumps(boxes_by_name(boxes))))
    return queries


def _search_until(base: str, query: tuple[bytes, str], deadline: float, versions: set[str], tally: Tally) -> None:
    image, regions = query
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = client.post("/search", files={"image": ("query.png", image, "image/png")},
                                       data={"regions": regions, "k": "5"})
            except httpx.HTTPError as error:
                tally.failures.append(f"search: {type(error).__name__}")
                continue
            tally.latencies.append(time.perf_counter() - started)
            version = response.json().get("index_version") if response.status_code == 200 else None
            if version not in versions:
                tally.failures.append(f"search: {response.status_code} naming version {version!r}")
            else:
                tally.versions.append(version)


def _change_snapshots_until(base: str, admin: dict[str, str], versions: list[str], every: float, deadline: float,
                            tally: Tally) -> None:
    """Every `every` seconds activate the next snapshot; every third change is a rollback instead."""
    started = time.monotonic()
    with httpx.Client(base_url=base, headers=admin, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        for change in itertools.count(1):
            due = started + change * every  # a fixed schedule: a slow activation does not push the next
            if due >= deadline:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            if change % 3 == 0:
                response, kind = client.post("/admin/index/rollback"), "rollback"
            else:
                active = client.get("/admin/index").json()["active"]["version"]
                following = versions[(versions.index(active) + 1) % len(versions)]
                response, kind = client.post("/admin/index/activate", json={"version": following}), "activate"
            if response.status_code != 200:
                tally.failures.append(f"{kind}: {response.status_code}")
            else:
                tally.changes.append((kind, response.json()["active"]["version"]))


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit("no VmHWM in /proc: the peak RSS needs Linux")


def _summary(tally: Tally, args: argparse.Namespace, versions: list[str], seconds: float,
             peak_rss_mib: float) -> dict:
    latencies = sorted(tally.latencies)
    return {
        "clients": args.clients, "duration_s": round(seconds, 1), "activate_every_s": args.activate_every,
        "requests": len(latencies), "failures": len(tally.failures), "failure_kinds": dict(Counter(tally.failures)),
        "requests_per_s": round(len(latencies) / seconds, 2),
        "latency_ms": {"p50": _percentile(latencies, 50), "p99": _percentile(latencies, 99),
                       "max": round(latencies[-1] * 1000, 1) if latencies else None},
        "served_by_version": dict(Counter(tally.versions)), "snapshots": versions,
        "activations": sum(kind == "activate" for kind, _ in tally.changes),
        "rollbacks": sum(kind == "rollback" for kind, _ in tally.changes),
        "server_peak_rss_mib": peak_rss_mib,
    }


def _percentile(sorted_seconds: list[float], percent: float) -> float | None:
    if not sorted_seconds:
        return None
    if len(sorted_seconds) == 1:
        return round(sorted_seconds[0] * 1000, 1)
    return round(statistics.quantiles(sorted_seconds, n=100, method="inclusive")[int(percent) - 1] * 1000, 1)


def _write_atomically(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
