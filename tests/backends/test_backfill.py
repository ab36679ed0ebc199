"""Images indexed before EXIF was read get their metadata from the stored files, on every backend, without
re-embedding and without losing their collections, tags or path."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from scripts.synthetic import jpeg, jpeg_with_exif, photo
from shared.backends import ImageRecord
from shared.backfill import backfill_metadata
from shared.imagestore import ImageStore
from shared.types import ModelInfo
from tests.backends.data import clustered

DIM = 64


def test_old_records_gain_their_exif_without_re_embedding(backend, tmp_path):
    backend.ensure_schema(ModelInfo("test-model", "random", DIM))
    store = ImageStore(tmp_path / "images")
    with_exif, _ = store.put(jpeg_with_exif(photo(1)))
    without, _ = store.put(jpeg(2))
    gone = "e" * 64  # indexed, but its file was lost
    old = [ImageRecord(id=i, filename=f"{n}.jpg", size_bytes=1, format="JPEG", width=320, height=240, model="m/x")
           for n, i in enumerate([with_exif, without, gone])]
    old[0] = old[0].with_labels(["Trip"], ["sea"])
    vectors = clustered(3, DIM, seed=4)
    backend.upsert(old, vectors)

    report = backfill_metadata(backend, store, batch_size=2)
    assert (report.seen, report.without, report.updated, report.missing_files) == (3, 3, 1, 1)
    got = backend.get([with_exif, without, gone])
    assert got[with_exif].captured_at == datetime(2021, 5, 1, 12, 30, tzinfo=UTC)
    assert (got[with_exif].camera_make, got[with_exif].camera_model) == ("Canon", "Canon EOS 5D")
    assert got[with_exif].latitude == pytest.approx(40.4168, abs=1e-4)
    assert (got[with_exif].collections, got[with_exif].tags) == (("Trip",), ("sea",))
    assert got[without] == old[1] and got[gone] == old[2]
    assert np.allclose(backend.get_vectors([with_exif])[with_exif], vectors[0], atol=1e-6)
    assert backfill_metadata(backend, store).updated == 0  # a second run has nothing to do
