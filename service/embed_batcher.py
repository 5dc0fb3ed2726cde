"""Dynamic micro-batching: concurrent searches share one backbone and network pass.

A search runs inside `EmbedBatcher.in_progress()` from its start (so that the batcher knows it may
soon ask) and hands its radiograph and boxes to `embed`, which waits. One batching thread takes the
first waiting search, gathers those that arrive within `wait_seconds` (up to `max_images`), embeds
them together with `Embedder.embed_batch` and hands every search its own row. A batch is never held
back when no other search is in progress. The embeddings equal those of embedding each image alone:
the crops and the network treat every image of a batch independently.

With `wait_seconds` 0 there is no batching thread and each search embeds on its own thread, which is
the default: on a CPU the backbone already batches a search's 18 crops (`chextriev bench http`
compares both).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from model.embedder import Embedder, Embeddings

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    pixels: np.ndarray
    boxes: np.ndarray
    result: Future = field(default_factory=Future)


_STOP = object()


class EmbedBatcher:
    """Embeds one radiograph per call, batching calls that overlap in time (see the module docstring)."""

    def __init__(self, embedder: Embedder, *, wait_seconds: float, max_images: int):
        if wait_seconds < 0 or max_images < 1:
            raise ValueError(f"need wait_seconds >= 0 and max_images >= 1, got {wait_seconds}, {max_images}")
        self.embedder = embedder
        self.wait_seconds, self.max_images = wait_seconds, max_images
        self._queue: queue.Queue = queue.Queue()
        self._searches = 0  # searches inside in_progress(): decoding, queued or being embedded
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if wait_seconds > 0 and max_images > 1:
            self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
            self._thread.start()

    @property
    def batching(self) -> bool:
        """True when calls may share a pass (a batching thread runs)."""
        return self._thread is not None

    @property
    def searches_in_progress(self) -> int:
        """How many searches are inside in_progress() now."""
        with self._lock:
            return self._searches

    @contextmanager
    def in_progress(self) -> Iterator[None]:
        """Count a search as in progress for as long as the block runs (batches wait only for those)."""
        with self._lock:
            self._searches += 1
        try:
            yield
        finally:
            with self._lock:
                self._searches -= 1

    def embed(self, pixels: np.ndarray, boxes: np.ndarray) -> Embeddings:
        """The embeddings of one grey image (H, W) and its validated (18, 4) boxes, as a batch of one."""
        if self._thread is None:
            return self.embedder.embed(pixels, boxes)
        request = _Request(pixels, np.asarray(boxes, dtype=np.float32))
        self._queue.put(request)
        return request.result.result()

    def close(self) -> None:
        """Stop the batching thread once the searches already queued are embedded."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            self._embed(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and the requests that arrive within the wait; True when a stop was met."""
        batch = [first]
        deadline = time.monotonic() + self.wait_seconds
        while len(batch) < self.max_images:
            with self._lock:
                others_in_progress = self._searches > len(batch)
            remaining = deadline - time.monotonic()
            if not others_in_progress or remaining <= 0:
                break
            try:
                request = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if request is _STOP:
                return batch, True
            batch.append(request)
        return batch, False

    def _embed(self, batch: list[_Request]) -> None:
        try:
            embeddings = self.embedder.embed_batch([request.pixels for request in batch],
                                                   np.stack([request.boxes for request in batch]))
        except BaseException as error:  # noqa: BLE001 - every waiting search gets the failure as its own
            for request in batch:
                request.result.set_exception(error)
            return
        logger.debug("embedded a micro-batch", extra={"images": len(batch)})
        for row, request in enumerate(batch):
            request.result.set_result(Embeddings(image=embeddings.image[row:row + 1],
                                                 nodes=embeddings.nodes[row:row + 1]))
