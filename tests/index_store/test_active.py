"""The active index: activation, rollback, and searches that never see a half-swapped or freed snapshot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from index_store.active import ActiveIndex, NoPreviousSnapshotError
from index_store.errors import SnapshotIncompatibleError, SnapshotNotFoundError
from index_store.local_backend import LocalBackend
from index_store.search import QueryHits
from index_store.snapshot import Snapshot
from index_store.store import open_version
from tests.index_store.galleries import FINGERPRINT, make_gallery


def test_activate_and_rollback(store: Path, publish) -> None:
    publish("v2")
    publish("v3", model_fingerprint="sha256:other-model")
    active = ActiveIndex(LocalBackend(store), expected_fingerprint=FINGERPRINT)
    with pytest.raises(SnapshotNotFoundError, match="no previous snapshot"):
        active.rollback()
    assert active.activate("v1").version == "v1" and active.previous_version is None
    query = make_gallery(seed=7, prefix="v2").embeddings[4]
    active.activate("v2")
    assert active.search(query, 1)[0].case_ids == ("v2-4",)
    with pytest.raises(SnapshotIncompatibleError, match="fingerprint"):
        active.activate("v3")
    assert (active.manifest.version, active.previous_version) == ("v2", "v1")
    assert active.rollback().version == "v1" and active.search(query, 1)[0].index_version == "v1"
    assert active.rollback().version == "v2"  # a rollback can itself be rolled back


def test_a_replaced_snapshot_is_closed_when_its_last_lease_ends(store: Path, publish) -> None:
    publish("v2")
    active = ActiveIndex(LocalBackend(store))
    active.activate("v1")
    with active.lease() as old:
        active.activate("v2")
        assert not old.closed and old.search(make_gallery().embeddings[0], 1)[0].case_ids == ("case-0",)
    assert old.closed
    with active.lease() as current:
        assert current.version == "v2" and not current.closed


def test_searches_during_repeated_swaps_each_run_on_one_live_snapshot(store: Path, publish) -> None:
    """Four threads search while a fifth swaps v1 <-> v2 forty times; the two galleries have different
    vectors and ids, so a result mixing snapshots, or computed on a closed one, cannot go unnoticed."""
    publish("v2")
    queries = make_gallery(seed=11).embeddings[:6]
    expected: dict[str, list[QueryHits]] = {}
    for version in ("v1", "v2"):
        snapshot = open_version(store, version)
        expected[version] = snapshot.search(queries, 5)
        snapshot.close()
    assert expected["v1"][0].case_ids != expected["v2"][0].case_ids

    active = ActiveIndex(LocalBackend(store))
    active.activate("v1")
    errors: list[BaseException] = []
    served: dict[str, int] = {"v1": 0, "v2": 0}
    seen: dict[int, Snapshot] = {}
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            try:
                with active.lease() as snapshot:
                    seen[id(snapshot)] = snapshot
                    first = snapshot.search(queries, 5)
                    time.sleep(0.001)  # a swap may happen here; this snapshot must stay open
                    assert not snapshot.closed
                    second = snapshot.search(queries, 5)
                for hits in (first, second, active.search(queries, 5)):
                    version = hits[0].index_version
                    assert hits == expected[version]
                    served[version] += 1
            except BaseException as exc:  # noqa: BLE001 - every failure is collected and asserted on
                errors.append(exc)
                return

    threads = [threading.Thread(target=search_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 8
    for swap in range(40):
        if time.monotonic() > deadline:
            break
        if swap % 2:
            active.rollback()
        else:
            active.activate("v2" if active.manifest.version == "v1" else "v1")
        time.sleep(0.005)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
    assert served["v1"] > 0 and served["v2"] > 0
    with active.lease() as current:
        replaced = [snapshot for snapshot in seen.values() if snapshot is not current]
    assert len(replaced) >= 2 and all(snapshot.closed for snapshot in replaced)
    active.close()
    assert current.closed


def test_a_failed_commit_leaves_the_active_snapshot_serving(store: Path, publish) -> None:
    publish("v2")
    active = ActiveIndex(LocalBackend(store))
    active.activate("v1")
    opened: list[Snapshot] = []

    def refuse(manifest, previous_version):
        with active.lease() as serving:
            opened.append(serving)
        raise RuntimeError(f"recording {manifest.version} (then {previous_version}) failed")

    with pytest.raises(RuntimeError, match="recording v2 \\(then v1\\) failed"):
        active.activate("v2", commit=refuse)
    assert opened[0].version == "v1"  # the commit runs before the swap
    assert (active.manifest.version, active.previous_version) == ("v1", None)
    with pytest.raises(NoPreviousSnapshotError):
        active.rollback()


def test_commit_sees_what_will_serve_and_what_a_rollback_returns_to(store: Path, publish) -> None:
    publish("v2")
    active = ActiveIndex(LocalBackend(store))
    committed: list[tuple[str, str | None]] = []

    def record(manifest, previous_version):
        committed.append((manifest.version, previous_version))

    active.activate("v1", commit=record)
    active.activate("v2", commit=record)
    active.rollback(commit=record)
    active.activate("v1", commit=record)  # already active: nothing swaps, the request is still committed
    assert committed == [("v1", None), ("v2", "v1"), ("v1", "v2"), ("v1", "v2")]


def test_restore_keeps_a_snapshot_activated_before_it(store: Path, publish) -> None:
    publish("v2")
    active = ActiveIndex(LocalBackend(store))
    active.activate("v2")
    assert active.restore("v1", None) is None
    assert (active.manifest.version, active.previous_version) == ("v2", None)
    fresh = ActiveIndex(LocalBackend(store))
    assert fresh.restore("v1", "v2").version == "v1"
    assert fresh.rollback().version == "v2"


def test_concurrent_rollbacks_take_turns(store: Path, publish) -> None:
    """Eight rollbacks at once between v1 and v2: each commit names the version it swaps in and the
    one it replaces, so the committed sequence alternates and ends where the index is."""
    publish("v2")
    active = ActiveIndex(LocalBackend(store))
    active.activate("v1")
    active.activate("v2")
    committed: list[tuple[str, str | None]] = []
    start = threading.Barrier(8)

    def roll_back() -> None:
        start.wait()
        active.rollback(commit=lambda manifest, previous: committed.append((manifest.version, previous)))

    threads = [threading.Thread(target=roll_back) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert committed == [("v1", "v2"), ("v2", "v1")] * 4
    assert (active.manifest.version, active.previous_version) == committed[-1]
