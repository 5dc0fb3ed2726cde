"""Recent queries kept briefly under their query id, so that `GET /saliency` needs no second upload.

`TtlLruCache` is bounded twice: an entry expires `ttl_seconds` after it was stored, and once
`max_entries` are held the least recently used one is dropped. Queries keep only what saliency
needs (the query's embeddings and boxes), never the uploaded image bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from cachetools import TTLCache

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


@dataclass(frozen=True, eq=False)
class CachedQuery:
    """One search's query: its embedding (D,), node embeddings (18, D) and validated boxes (18, 4)."""

    query_id: str
    embedding: np.ndarray
    nodes: np.ndarray
    boxes: np.ndarray
    index_version: str
    model_version: str


class TtlLruCache(Generic[Key, Value]):
    """A thread-safe map whose entries expire after `ttl_seconds`, holding at most `max_entries`
    (cachetools' TTLCache, which drops the least recently used entry when full, under a lock)."""

    def __init__(self, ttl_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic):
        if ttl_seconds <= 0 or max_entries < 1:
            raise ValueError(f"a cache needs a positive time to live and size, got "
                             f"{ttl_seconds} s and {max_entries} entries")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: TTLCache = TTLCache(maxsize=max_entries, ttl=ttl_seconds, timer=clock)

    def put(self, key: Key, value: Value) -> None:
        """Store `value`, dropping expired entries and then the least recently used beyond the bound."""
        with self._lock:
            self._entries[key] = value

    def get(self, key: Key) -> Value | None:
        """The value stored under `key`, or None when it is unknown or has expired."""
        with self._lock:
            return self._entries.get(key)

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)


QueryCache = TtlLruCache[str, CachedQuery]
