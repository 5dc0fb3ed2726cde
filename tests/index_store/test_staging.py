"""Publishers killed with SIGKILL mid-publish: their staging directories are never listed, and the next
publish or `chextriev index clean` removes them; a live publisher's staging directory is left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from index_store.store import list_snapshots, open_version
from service.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]

# Publishes `version` into `store` with the real store code; the snapshot writer is wrapped to print the
# directory it wrote and wait for a line on stdin before publishing goes on to the rename.
PAUSED_PUBLISHER = """
import sys
from pathlib import Path
import index_store.store as store
from tests.index_store.galleries import FINGERPRINT, make_gallery

write_snapshot = store.write_snapshot

def write_then_pause(directory, *args, **kwargs):
    manifest = write_snapshot(directory, *args, **kwargs)
    print(directory, flush=True)
    sys.stdin.readline()
    return manifest

store.write_snapshot = write_then_pause
root, version = Path(sys.argv[1]), sys.argv[2]
store.publish_gallery(root, make_gallery(seed=9, prefix=version), model_fingerprint=FINGERPRINT, version=version)
"""


@dataclass
class PausedPublisher:
    """A publisher process paused before its rename, and its staging directory (a direct child of the store)."""

    process: subprocess.Popen
    staging: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def resume(self) -> None:
        """Let it rename its snapshot into place and exit; it must succeed."""
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.wait(timeout=60) == 0


@pytest.fixture
def paused_publisher(store: Path) -> Iterator[Callable[[str], PausedPublisher]]:
    """Start a real publisher of a version into `store` and return once its snapshot files are written."""
    started: list[subprocess.Popen] = []

    def start(version: str) -> PausedPublisher:
        process = subprocess.Popen(
            [sys.executable, "-c", PAUSED_PUBLISHER, str(store), version],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        written = process.stdout.readline().strip()
        assert written, f"the publisher of {version} exited before writing its snapshot"
        assert (Path(written) / "manifest.json").is_file() and (Path(written) / "index.faiss").is_file()
        return PausedPublisher(process, store / Path(written).relative_to(store).parts[0])

    yield start
    for process in started:
        process.kill()
        process.communicate()


@pytest.fixture
def live_and_killed(paused_publisher) -> tuple[PausedPublisher, PausedPublisher]:
    """Two paused publishers, "live" and "dead", the second killed; both staging directories remain."""
    live = paused_publisher("live")
    dead = paused_publisher("dead")  # its publish started with a clean, which spared the live one
    dead.kill()
    assert dead.staging.exists() and live.staging.exists()
    return live, dead


def _assert_only_whole_snapshots(store: Path, versions: set[str]) -> None:
    """The store lists exactly `versions`, each readable; each opens fully verified (checksums, canary)."""
    entries = list_snapshots(store)
    assert {entry.version for entry in entries} == versions
    assert all(entry.problem is None for entry in entries)
    for entry in entries:
        open_version(store, entry.version).close()


def test_the_next_publish_removes_a_killed_publishers_staging_and_spares_a_live_one(
    store: Path, publish, live_and_killed
) -> None:
    live, dead = live_and_killed
    _assert_only_whole_snapshots(store, {"v1"})

    publish("v2")
    assert not dead.staging.exists() and live.staging.exists()
    _assert_only_whole_snapshots(store, {"v1", "v2"})

    live.resume()
    _assert_only_whole_snapshots(store, {"v1", "v2", "live"})
    assert sorted(path.name for path in store.iterdir()) == ["live", "v1", "v2"]


def test_index_clean_removes_a_killed_publishers_staging_and_spares_a_live_one(
    store: Path, live_and_killed, capsys
) -> None:
    live, dead = live_and_killed
    assert main(["index", "clean", "--store", str(store)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed {dead.staging}"]
    assert not dead.staging.exists() and live.staging.exists()
    _assert_only_whole_snapshots(store, {"v1"})

    live.resume()
    assert main(["index", "clean", "--store", str(store)]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(path.name for path in store.iterdir()) == ["live", "v1"]
    _assert_only_whole_snapshots(store, {"v1", "live"})


def test_index_clean_of_a_missing_store_fails_with_the_reason(tmp_path: Path, capsys) -> None:
    assert main(["index", "clean", "--store", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
