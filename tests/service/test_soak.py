"""The soak script in its CI length: a real uvicorn server, 32 clients for 15 s while snapshots are
activated and rolled back; no request may fail and every answer names the version that served it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    PLAIN_VERSION,
    SALT,
    ServiceSetup,
    service_database,
    service_setup,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SOAK_TIMEOUT_SECONDS = 600


def test_fifteen_second_soak_has_no_failures(service_setup: ServiceSetup, tmp_path: Path):
    store = tmp_path / "store"  # the two test snapshots only (other tests publish broken ones beside them)
    store.mkdir()
    for version in (PLAIN_VERSION, OCCLUDED_VERSION):
        os.symlink(service_setup.store / version, store / version)
    out = tmp_path / "soak.json"
    with service_database(service_setup, "sqlite", tmp_path) as url:
        finished = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "soak.py"), "--checkpoint", str(service_setup.checkpoint),
             "--store", str(store), "--database-url", url, "--image-root", str(service_setup.image_root),
             "--duration", "15", "--clients", "32", "--activate-every", "2.5", "--out", str(out)],
            env={**os.environ, "CHEXTRIEV_PATIENT_SALT": SALT, "CHEXTRIEV_ACTIVE_VERSION": PLAIN_VERSION},
            capture_output=True, text=True, timeout=SOAK_TIMEOUT_SECONDS)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    print(finished.stdout)
    summary = json.loads(out.read_text())
    assert summary["failures"] == 0 and summary["requests"] >= 32
    assert summary["activations"] >= 2 and summary["rollbacks"] >= 1
    assert set(summary["served_by_version"]) == {PLAIN_VERSION, OCCLUDED_VERSION}
    assert summary["server_peak_rss_mib"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
