"""Wall-clock timings of the phases of one request, in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates the milliseconds spent in named phases since it was created."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to phase `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.phases[name] = round(self.phases.get(name, 0.0) + elapsed, 3)

    def total_ms(self) -> float:
        """Milliseconds since the timer was created."""
        return round((time.perf_counter() - self._started) * 1000, 3)
