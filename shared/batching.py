"""Concurrent searches share one model call: the API wraps its Embedder in a BatchingEmbedder.

Each search encodes one image or one text. When several arrive at once, encoding them one by one costs
almost as many forward passes as requests (on a CPU, 8 single ViT-B-32 encodes take ~1.75× the time of
one batch of 8). Here one thread per kind (images, texts) runs the model; a request waits in a queue
and is encoded together with whatever else queued meanwhile. Nothing waits on purpose: a request
arriving alone goes straight to the model, so latency at low load is unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from shared import metrics
from shared.embedder import Embedder


class _Merger:
    """A daemon thread that runs `encode` over everything queued, then splits the result back."""

    def __init__(self, encode: Callable[[list[Any]], np.ndarray], max_batch: int, name: str, modality: str) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._modality = modality
        self._queue: queue.SimpleQueue[tuple[list[Any], Future]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, items: list[Any]) -> np.ndarray:
        future: Future = Future()
        self._queue.put((items, future))
        return future.result()

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            count = len(pending[0][0])
            while count < self._max_batch:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                count += len(pending[-1][0])
            metrics.record_model_batch(self._modality, count)  # proxima_model_batch_size
            try:
                vectors = self._encode([item for items, _ in pending for item in items])
            except Exception as exc:  # every waiting request gets the error, the thread lives on
                for _, future in pending:
                    future.set_exception(exc)
                continue
            start = 0
            for items, future in pending:
                future.set_result(vectors[start:start + len(items)])
                start += len(items)


class BatchingEmbedder:
    """An `Encoder` (shared.types) over an Embedder: encode_images, encode_text, info, image_size; thread-safe."""

    def __init__(self, embedder: Embedder, max_batch: int = 32) -> None:
        self.info = embedder.info
        self.image_size = embedder.image_size
        self.runtime = embedder.runtime
        self.precision = embedder.precision
        self.has_text = embedder.has_text
        self._images = _Merger(lambda pixels: embedder.encode_images(list(pixels)), max_batch, "encode-images", "image")
        self._texts = _Merger(embedder.encode_text, max_batch, "encode-texts", "text")

    def encode_images(self, pixels: Sequence[Any]) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        return self._images.submit(list(pixels))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self._texts.submit(list(texts))
