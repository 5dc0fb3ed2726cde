"""Occlusion embeddings of gallery cases that the active snapshot does not hold: computed on demand
for `GET /saliency`, or ahead of it in the background for the cases a search has just returned, and
kept in a bounded cache (one per loaded model, so a key is a case id).

Background work runs on one thread, one case at a time, and only while no search is in progress
(`busy()` is False): it uses the cores that idle between a search and the click on one of its
results. It waits between the backbone passes of a case too, so a search that arrives meanwhile
waits at most one pass (model.saliency.YIELDING_PASS_CROPS crops). A request for a case that is
being computed waits for that computation instead of repeating it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from model.saliency import OcclusionResult
from service.db.repository import CaseRecord
from service.query_cache import TtlLruCache

logger = logging.getLogger(__name__)

# How often the background thread looks again whether the searches in progress have finished.
IDLE_POLL_SECONDS = 0.05


class CaseOcclusions:
    """On-demand and background occlusion embeddings of gallery cases, cached by case id."""

    def __init__(self, compute: Callable[[CaseRecord, Callable[[], None] | None], OcclusionResult],
                 busy: Callable[[], bool], *, capacity: int, ttl_seconds: float):
        """`compute(case, before_pass)` computes a case, calling `before_pass` (when given) before each
        backbone pass, as model.saliency.occlusion_embeddings does."""
        self._compute = compute
        self._busy = busy
        self._cache: TtlLruCache[str, OcclusionResult] = TtlLruCache(ttl_seconds, capacity)
        self._in_flight: dict[str, Future] = {}
        self._pending: deque[CaseRecord] = deque(maxlen=capacity)
        self._condition = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="occlusion-warmer", daemon=True)
        self._thread.start()

    def get(self, case: CaseRecord) -> tuple[OcclusionResult, str]:
        """The case's occlusion embeddings and where they came from: "cache" when they were computed
        before (or by the background thread while this request waited), "recomputed" when now."""
        cached = self._cache.get(case.case_id)
        if cached is not None:
            return cached, "cache"
        return self._computed(case, None)

    def warm(self, cases: Iterable[CaseRecord]) -> None:
        """Compute these cases in the background when no search is in progress (newest requests first)."""
        with self._condition:
            for case in reversed(list(cases)):
                if self._cache.get(case.case_id) is None and case.case_id not in self._in_flight:
                    self._pending.appendleft(case)
            self._condition.notify()

    def cached(self, case_id: str) -> bool:
        """True when the case's occlusion embeddings are in the cache."""
        return self._cache.get(case_id) is not None

    def close(self) -> None:
        """Stop the background thread after the case it is computing."""
        with self._condition:
            self._stopped = True
            self._pending.clear()
            self._condition.notify()
        self._thread.join()

    def _computed(self, case: CaseRecord, before_pass: Callable[[], None] | None) -> tuple[OcclusionResult, str]:
        """Compute the case on this thread, letting other requests for it wait for the result; or wait
        for the thread already computing it ("cache")."""
        future: Future = Future()
        with self._condition:
            running = self._in_flight.setdefault(case.case_id, future)
        if running is not future:
            return running.result(), "cache"
        try:
            result = self._compute(case, before_pass)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            self._cache.put(case.case_id, result)
            future.set_result(result)
            return result, "recomputed"
        finally:
            with self._condition:
                del self._in_flight[case.case_id]

    def _wait_while_busy(self) -> None:
        with self._condition:
            while self._busy() and not self._stopped:
                self._condition.wait(IDLE_POLL_SECONDS)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._pending or self._busy()):
                    self._condition.wait(IDLE_POLL_SECONDS if self._pending else None)
                if self._stopped:
                    return
                case = self._pending.popleft()
            if self._cache.get(case.case_id) is not None:
                continue
            try:
                self._computed(case, self._wait_while_busy)
            except Exception as error:  # noqa: BLE001 - a case that cannot be warmed is computed on demand
                logger.warning("background occlusion embeddings failed", extra={
                    "case_id": case.case_id, "problem": f"{type(error).__name__}: {error}"})
