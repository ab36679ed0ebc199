"""Proxima's core library, shared by the API, the workers, the UI and the scripts.

It imports nothing from `api/`, `workers/` or `ui/`. Modules:

- `config`      settings from the environment
- `imagestore`  content-addressed image files
- `imaging`     decoding any supported format to RGB, model input preparation
- `embedder`    open_clip loading and batched encoding
- `backends`    the vector database interface and its implementations
- `jobs`        job records in Redis
- `pipeline`    the services: accept uploads, embed a batch, search
"""
