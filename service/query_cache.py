"""Recent queries kept briefly under their query id, so that `GET /saliency` needs no second upload.

`TtlLruCache` is bounded twice: an entry expires `ttl_seconds` after it was stored, and once
`max_entries` are held the least recently used one is dropped. Queries keep only what saliency
needs (the query's embeddings and boxes), never the uploaded image bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

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
    """A thread-safe map whose entries expire after `ttl_seconds`, holding at most `max_entries`."""

    def __init__(self, ttl_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic):
        if ttl_seconds <= 0 or max_entries < 1:
            raise ValueError(f"a cache needs a positive time to live and size, got "
                             f"{ttl_seconds} s and {max_entries} entries")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[float, Value]] = OrderedDict()

    def put(self, key: Key, value: Value) -> None:
        """Store `value`, dropping expired entries and then the least recently used beyond the bound."""
        now = self._clock()
        with self._lock:
            self._drop_expired(now)
            self._entries[key] = (now + self.ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: Key) -> Value | None:
        """The value stored under `key`, or None when it is unknown or has expired."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(self._clock())
            return len(self._entries)

    def _drop_expired(self, now: float) -> None:
        expired = [key for key, (expires, _) in self._entries.items() if expires <= now]
        for key in expired:
            del self._entries[key]


QueryCache = TtlLruCache[str, CachedQuery]
