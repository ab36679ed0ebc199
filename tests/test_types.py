"""The shared contracts: light imports, the one error table, job records and their states."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from scripts.devservices import REPO, child_env
from shared.types import (
    FINAL_STATES,
    AccessDenied,
    BackendError,
    BackendUnavailable,
    FileError,
    ImageError,
    Job,
    JobClosed,
    JobState,
    ModelInfo,
    NotFound,
    PathNotAllowed,
    QueryError,
    SchemaMismatch,
    TooLarge,
    describe,
    final_state,
    kind_of_status,
)


def test_importing_the_backends_loads_neither_pillow_nor_torch():
    code = ("import json, sys; import shared.backends, shared.backends.base, shared.types; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'torch', 'open_clip', "
            "'psycopg', 'pymilvus', 'pymysql'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(("exc", "kind", "status", "prefix"), [
    (ImageError("plain text"), "bad_input", 422, "not a usable image: plain text"),
    (QueryError("the text is empty"), "bad_input", 422, "the text is empty"),
    (AccessDenied("no key"), "forbidden", 401, "no key"),
    (PathNotAllowed("/etc"), "forbidden", 403, "/etc"),
    (NotFound("no job"), "not_found", 404, "no job"),
    (JobClosed("sealed"), "bad_input", 409, "sealed"),
    (TooLarge("2000 files"), "bad_input", 413, "2000 files"),
    (BackendUnavailable("down"), "unavailable", 503, "vector database unavailable, try again shortly: down"),
    (redis.ConnectionError("refused"), "unavailable", 503, "job queue (Redis) unavailable"),
    (SchemaMismatch("other model"), "error", 500, "vector database error: other model"),
    (BackendError("boom"), "error", 500, "vector database error: boom"),
])
def test_one_table_maps_our_errors(exc, kind, status, prefix):
    info, message = describe(exc)
    assert (info.kind, info.status) == (kind, status) and message.startswith(prefix)
    assert kind_of_status(status) == kind or status in (401, 409, 413)
    if status == 503:
        assert info.headers["Retry-After"]


def test_anything_else_is_not_ours():
    assert describe(KeyError("x")) is None
    assert kind_of_status(400) == "bad_input" and kind_of_status(502) == "error"


def test_final_state_counts_duplicates_as_done():
    assert final_state(done=5, failed=0) is JobState.COMPLETED
    assert final_state(done=157, failed=2) is JobState.COMPLETED_WITH_ERRORS  # duplicates are part of done
    assert final_state(done=0, failed=2) is JobState.FAILED
    assert {final_state(done=d, failed=f) for d in (0, 3) for f in (0, 3)} <= FINAL_STATES


def test_job_round_trips_through_its_json():
    job = Job(job_id="a" * 32, kind="folder", state=JobState.COMPLETED_WITH_ERRORS, total=3, done=2, failed=1,
              seen=4, skipped=1, duplicates=1, errors=(FileError(None, "x.jpg", "truncated"),), created_at=1.0,
              updated_at=2.0, path="/photos", skipped_reasons={"not an image: plain text": 1},
              stage_s={"encode": 0.5})
    data = json.loads(json.dumps(job.as_dict()))
    assert data["state"] == "completed_with_errors" and data["errors"][0]["filename"] == "x.jpg"
    assert Job.from_dict(data) == job
    assert job.finished and not Job(job_id="b" * 32, kind="folder", state=JobState.RUNNING, walking=True).finished
    upload = Job(job_id="c" * 32, kind="upload", state=JobState.QUEUED).as_dict()
    assert "walking" not in upload and "path" not in upload


@pytest.mark.parametrize("info", [ModelInfo("ViT-B-32", "laion2b_s34b_b79k", 512),
                                  ModelInfo("ViT-B-32", "laion2b_s34b_b79k", 512, precision="int8"),
                                  ModelInfo("efficientnet-lite0", "imagenet", 1280, extractor="efficientnet_lite"),
                                  ModelInfo("x", "tag:v2", 64, "int8", extractor="efficientnet_lite"),
                                  ModelInfo("ViT-B-32", "tag:v2", 512)])
def test_model_identity_round_trips_and_int8_is_another_model(info):
    from shared.backends.base import check_model

    assert ModelInfo.from_json(info.to_json()) == info
    assert ModelInfo.from_label(info.label(), info.dim) == info
    full = ModelInfo("ViT-B-32", "laion2b_s34b_b79k", 512)
    int8 = ModelInfo("ViT-B-32", "laion2b_s34b_b79k", 512, "int8")
    check_model(full, full, index="test")
    with pytest.raises(SchemaMismatch):
        check_model(full, int8, index="test")
    # another extractor is another model, even with the same name and weights; open_clip's labels are unchanged
    lite = ModelInfo("ViT-B-32", "laion2b_s34b_b79k", 512, extractor="efficientnet_lite")
    with pytest.raises(SchemaMismatch):
        check_model(full, lite, index="test")
    assert full.label() == "ViT-B-32/laion2b_s34b_b79k" and lite.label().startswith("efficientnet_lite:")
    # identities stored before precision existed read back as the model's own vectors
    assert ModelInfo.from_json('{"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "dim": 512}') == full
