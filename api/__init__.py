"""The HTTP API (FastAPI): stores uploads, enqueues embedding jobs, answers searches."""
