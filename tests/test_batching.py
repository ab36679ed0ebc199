"""Concurrent searches share model calls, and get exactly what they would get alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scripts.synthetic import photo
from shared.batching import BatchingEmbedder
from shared.config import Settings
from shared.embedder import load_embedder
from shared.imaging import to_model_input


@pytest.fixture(scope="module")
def embedder(tiny_model, models_data_dir):
    config, checkpoint = tiny_model
    return load_embedder(Settings.explicit(device="cpu", model_name=str(config),
                                  model_pretrained=str(checkpoint), data_dir=models_data_dir))


def test_concurrent_requests_are_merged_and_answered_correctly(embedder, monkeypatch):
    pixels = [to_model_input(photo(70 + n), embedder.image_size) for n in range(24)]
    alone = embedder.encode_images(pixels)
    calls: list[int] = []
    real = embedder.encode_images
    monkeypatch.setattr(embedder, "encode_images", lambda p, times=None: calls.append(len(p)) or real(p))
    batching = BatchingEmbedder(embedder)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(pixels))

    def search(n: int) -> None:
        start.wait()
        results[n] = batching.encode_images([pixels[n]])[0]

    threads = [threading.Thread(target=search, args=(n,)) for n in range(len(pixels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(calls) == len(pixels) and len(calls) < len(pixels)  # fewer model calls than requests
    for n in range(len(pixels)):
        assert np.allclose(results[n], alone[n], atol=1e-5)


def test_text_and_errors(embedder):
    batching = BatchingEmbedder(embedder)
    assert np.allclose(batching.encode_text(["a red car"]), embedder.encode_text(["a red car"]), atol=1e-5)
    with pytest.raises(Exception):  # noqa: B017 - whatever the tokenizer raises reaches the caller
        batching.encode_text([None])
    assert batching.encode_text(["still working"]).shape == (1, embedder.info.dim)
    assert batching.encode_images([]).shape == (0, embedder.info.dim)
