"""The bounded query cache: entries expire after their time to live, and the least recently used go first."""

from __future__ import annotations

import pytest

from service.query_cache import TtlLruCache


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_time_to_live():
    clock = Clock()
    cache = TtlLruCache(ttl_seconds=10, max_entries=4, clock=clock)
    cache.put("a", 1)
    clock.now += 9.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None and len(cache) == 0


def test_reading_an_entry_does_not_extend_its_life():
    clock = Clock()
    cache = TtlLruCache(ttl_seconds=10, max_entries=4, clock=clock)
    cache.put("a", 1)
    for _ in range(3):
        clock.now += 4
        cache.get("a")
    assert cache.get("a") is None


def test_the_least_recently_used_entry_is_dropped_beyond_the_bound():
    cache = TtlLruCache(ttl_seconds=10, max_entries=2, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_storing_again_replaces_and_refreshes():
    clock = Clock()
    cache = TtlLruCache(ttl_seconds=10, max_entries=2, clock=clock)
    cache.put("a", 1)
    clock.now += 8
    cache.put("a", 2)
    clock.now += 8
    assert cache.get("a") == 2


@pytest.mark.parametrize(("ttl", "size"), [(0, 1), (10, 0)])
def test_an_unbounded_cache_is_refused(ttl, size):
    with pytest.raises(ValueError, match="positive"):
        TtlLruCache(ttl_seconds=ttl, max_entries=size)
