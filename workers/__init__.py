"""Celery workers: take batches of image ids off the queue, embed them, upsert the vectors."""
