"""An occlusion file truncated under an open snapshot: a typed error naming it, never a SIGBUS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Opens the published "v1", truncates its occlusion file to half, asks for the last case's rows, then
# searches again: the process must live on and report what it caught.
READ_AFTER_TRUNCATION = """
import json, os, sys
from pathlib import Path
from index_store.errors import SnapshotError
from index_store.store import open_version

store = Path(sys.argv[1])
snapshot = open_version(store, "v1")
occlusion = store / "v1" / "occlusion.npy"
os.truncate(occlusion, occlusion.stat().st_size // 2)
try:
    snapshot.occlusion_embeddings("case-599")
    caught = None
except SnapshotError as error:
    caught = {"type": type(error).__name__, "file": error.path.name, "message": str(error)}
still_serving = snapshot.search(snapshot.embedding("case-3"), 1)[0].case_ids
print(json.dumps({"caught": caught, "still_serving": still_serving}))
"""


def test_truncated_occlusion_file_raises_a_typed_error_and_the_process_survives(store: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", READ_AFTER_TRUNCATION, str(store)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, f"the reader died (signal 7 is SIGBUS): {child.returncode}\n{child.stderr}"
    report = json.loads(child.stdout)
    assert report["caught"]["type"] == "SnapshotFileChangedError"
    assert report["caught"]["file"] == "occlusion.npy"
    assert "occlusion.npy" in report["caught"]["message"] and "truncated" in report["caught"]["message"]
    assert report["still_serving"] == ["case-3"]
