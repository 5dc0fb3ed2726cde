"""Dynamic micro-batching: concurrent searches share a pass and each gets its own image's embedding."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.checkpoint import BackboneRecord, save_checkpoint
from model.config import ModelConfig
from model.embedder import Embedder
from model.network import CheXtriev
from service.embed_batcher import EmbedBatcher
from trainer.demo.samples import sample_case_input


class CountingEmbedder(Embedder):
    """A real embedder that records the batch size of every embed_batch call."""

    batch_sizes: list[int]

    def embed_batch(self, images, boxes):
        self.batch_sizes.append(len(images))
        return super().embed_batch(images, boxes)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> CountingEmbedder:
    backbone = build_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    config = ModelConfig.for_variant("V6", input_dim=backbone.feature_dim, width=64, num_heads=4,
                                     head_dim=16, ff_dim=128)
    directory = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(directory, CheXtriev(config), BackboneRecord.of(backbone))
    model = CountingEmbedder.from_checkpoint(directory)
    model.batch_sizes = []
    return model


@pytest.fixture(scope="module")
def inputs(sample_cases):
    """Four bundled radiographs of different sizes with their boxes."""
    return [sample_case_input(case) for case in sample_cases[:4]]


def _concurrent_searches(batcher: EmbedBatcher, inputs) -> list[np.ndarray]:
    """Embed every input from its own thread, all inside in_progress() before any embeds."""
    results: list[np.ndarray | None] = [None] * len(inputs)
    errors: list[BaseException] = []
    all_started = threading.Barrier(len(inputs))

    def search(position: int) -> None:
        try:
            with batcher.in_progress():
                all_started.wait()
                pixels, boxes = inputs[position]
                results[position] = batcher.embed(pixels, boxes).image[0]
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=search, args=(position,)) for position in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_concurrent_searches_share_a_pass_and_get_their_own_embeddings(embedder, inputs):
    alone = [embedder.embed(pixels, boxes).image[0] for pixels, boxes in inputs]
    embedder.batch_sizes.clear()
    batcher = EmbedBatcher(embedder, wait_seconds=2.0, max_images=8)
    try:
        batched = _concurrent_searches(batcher, inputs)
    finally:
        batcher.close()
    assert sum(embedder.batch_sizes) == len(inputs)
    assert max(embedder.batch_sizes) > 1, embedder.batch_sizes
    for own, shared in zip(alone, batched, strict=True):
        assert float(own @ shared) > 0.99999
    # each search got its own image's row, not a neighbour's
    assert float(batched[0] @ batched[1]) < float(batched[0] @ alone[0])


def test_a_lone_search_is_not_held_back(embedder, inputs):
    """With no other search in progress the batch is embedded at once, not after the wait."""
    batcher = EmbedBatcher(embedder, wait_seconds=60.0, max_images=8)
    try:
        with batcher.in_progress():
            pixels, boxes = inputs[0]
            result = batcher.embed(pixels, boxes)
    finally:
        batcher.close()
    assert result.image.shape[0] == 1 and result.nodes.shape[:2] == (1, 18)


def test_a_failed_pass_reaches_every_search_in_it(embedder, inputs):
    pixels, boxes = inputs[0]
    batcher = EmbedBatcher(embedder, wait_seconds=1.0, max_images=8)
    try:
        with batcher.in_progress(), pytest.raises(Exception):  # noqa: B017 - whatever the model raises
            batcher.embed(pixels[None], boxes)  # a 3-D image: the crops refuse it
        assert batcher.embed(pixels, boxes).image.shape[0] == 1  # the batcher still serves
    finally:
        batcher.close()


def test_without_a_wait_each_search_embeds_on_its_own_thread(embedder, inputs):
    batcher = EmbedBatcher(embedder, wait_seconds=0.0, max_images=8)
    assert not batcher.batching
    pixels, boxes = inputs[0]
    np.testing.assert_allclose(batcher.embed(pixels, boxes).image, embedder.embed(pixels, boxes).image)
    batcher.close()
