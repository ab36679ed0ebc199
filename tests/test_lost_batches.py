"""A batch the queue lost is found and sent again by a worker, so its job completes (on the real stack)."""

from __future__ import annotations

from scripts.synthetic import jpeg
from shared.queue import EMBED_BATCH
from tests.test_pipeline_e2e import wait_job


def test_a_batch_the_queue_lost_is_sent_again_by_a_worker(client):
    """kombu takes a message off the Redis list before it records it as unacknowledged: a worker killed in
    that instant loses the batch. Simulated here by a batch recorded in its job but never queued."""
    proxima = client.app.state.proxima
    image_id, _ = proxima.images.put(jpeg(77_001))
    job_id = proxima.jobs.create(total=1)
    proxima.jobs.record_sent(job_id, "lost-b0", EMBED_BATCH, [{"id": image_id, "filename": "lost.jpg"}])
    job = wait_job(client, job_id, timeout=120)  # two idle sweeps of 15 s, then the batch itself
    assert (job["state"], job["done"]) == ("completed", 1)
    assert client.get(f"/images/{image_id}/similar").status_code == 200  # it is indexed
