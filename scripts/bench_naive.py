"""The design document's naive indexing path, kept only as a benchmark baseline (never used by Proxima).

One HTTP request per image; the handler decodes it at full size with open_clip's own PIL preprocessing,
runs the model on that single image, and commits one INSERT. Started by bench_ingest.py as
`uvicorn scripts.bench_naive:app` with the same model settings as the real worker.
"""

from __future__ import annotations

import io
import os
from contextlib import asynccontextmanager
from typing import Annotated, cast

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from shared.config import get_settings
from shared.embedder import load_embedder
from shared.runtime import TorchTowers
from shared.towers import weights_dtype

state: dict = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    import open_clip
    import psycopg
    from pgvector.psycopg import register_vector

    settings = get_settings().model_copy(update={"embed_runtime": "torch"})  # the design document's path
    embedder = load_embedder(settings)
    state["embedder"] = embedder
    state["model"] = cast(TorchTowers, embedder.towers).image.owner
    state["dtype"] = weights_dtype(state["model"].visual)
    state["preprocess"] = open_clip.image_transform(embedder.image_size, is_train=False)
    state["conn"] = psycopg.connect(os.environ["NAIVE_DATABASE_URL"])
    register_vector(state["conn"])
    state["conn"].execute(psycopg.sql.SQL(
        "CREATE TABLE IF NOT EXISTS naive_images (id text PRIMARY KEY, embedding vector({}))"
    ).format(psycopg.sql.Literal(embedder.info.dim)))
    state["conn"].commit()
    yield
    state["conn"].close()


app = FastAPI(lifespan=lifespan)


@app.post("/index_image")
def index_image(file: Annotated[UploadFile, File()]) -> dict:
    data = file.file.read()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    embedder = state["embedder"]
    with torch.inference_mode():
        model = state["model"]
        tensor = state["preprocess"](image).unsqueeze(0).to(embedder.device, state["dtype"])
        vector = torch.nn.functional.normalize(model.encode_image(tensor).float(), dim=-1)[0]
    conn = state["conn"]
    conn.execute("INSERT INTO naive_images (id, embedding) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                 (file.filename, np.asarray(vector.cpu(), dtype=np.float32)))
    conn.commit()
    return {"id": file.filename}
