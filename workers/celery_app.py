"""The workers' Celery application (`celery -A workers.celery_app worker`).

The app object is module-level, as Celery's command line expects, but reads no settings at import: its
configuration (`shared.queue.celery_config`) is filled in lazily, when the worker process first needs it.
"""

from __future__ import annotations

from celery import Celery

from shared.config import get_settings
from shared.queue import celery_config

app = Celery("proxima", include=["workers.tasks"])
app.add_defaults(lambda: celery_config(get_settings()))
