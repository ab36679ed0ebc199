"""All settings in one place, read from the environment (and `.env`, or the file PROXIMA_ENV_FILE names).

Every field is documented in `.env.example`; the environment variable is the field name in upper case.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Where images, model weights, and the embedded databases live.
    data_dir: Path = Path("./data")

    # Services
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str | None = None  # unset: embedded PostgreSQL under $DATA_DIR/postgres
    vector_backend: Literal["pgvector", "milvus", "manticore"] = "pgvector"
    milvus_uri: str = ""
    manticore_url: str = ""

    # Model (shared/extractors/): the family, then a model of it; empty names mean the extractor's default
    extractor: Literal["open_clip", "efficientnet_lite"] = "open_clip"  # efficientnet_lite: image search only
    model_name: str = ""  # open_clip: ViT-B-32; efficientnet_lite: efficientnet-lite0
    model_pretrained: str = ""  # open_clip: laion2b_s34b_b79k; efficientnet_lite: imagenet (installed)
    # When the model named here is not the active one (shared/catalog.py): refuse to start, saying what to run,
    # or re-embed every image with it in the background and switch to it when complete
    model_change: Literal["refuse", "reembed"] = "refuse"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # cuda:N picks one GPU
    embed_runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"  # auto: torch on CUDA, else OpenVINO
    embed_precision: Literal["auto", "f32", "bf16", "int8"] = "auto"  # auto: fp16 on CUDA, bf16 where the CPU has it
    embed_threads: int = Field(0, ge=0, le=256)  # model threads on a CPU; 0: the CPUs this process may use
    batch_size: int = Field(0, ge=0, le=4096)  # images per batch; 0: 256 where the model runs on CUDA, else 32
    decode: Literal["auto", "cpu", "gpu"] = "auto"  # gpu: nvJPEG for JPEGs; auto: GPU and CPU pool together
    decode_threads: int = Field(0, ge=0, le=256)  # 0: one per CPU core
    worker_threads: int = Field(2, ge=1, le=64)  # batches a worker process handles at once
    metrics_port: int = Field(0, ge=0, le=65535)  # a worker process serves its Prometheus metrics here; 0: off

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_url: str = ""  # Flower's address for the UI's link; empty: this host, FLOWER_PORT
    max_upload_mb: int = Field(100, ge=1)
    max_files_per_request: int = Field(1000, ge=1)
    max_image_pixels: int = Field(100_000_000, ge=1)

    # Access control
    api_key: SecretStr = SecretStr("")  # set: writes, admin and (unless PUBLIC_SEARCH) searches need X-API-Key
    public_search: bool = False  # with API_KEY set, searches and image reads stay open to anyone
    cors_origins: Annotated[list[str], NoDecode] = []  # browser origins allowed to call the API (comma-separated)

    # pgvector index and search parameters
    pg_hnsw_m: int = Field(16, ge=2, le=100)
    pg_hnsw_ef_construction: int = Field(96, ge=4, le=1000)
    pg_ef_search: int = Field(150, ge=1, le=1000)
    pg_index_type: Literal["vector", "halfvec"] = "halfvec"
    pg_rerank: int = Field(0, ge=0, le=1000)
    pg_pool_size: int = Field(4, ge=1, le=100)

    # Milvus collection index and search parameters; Milvus Lite port for `make up`
    milvus_token: str = ""
    milvus_collection: str = Field("proxima_images", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    milvus_hnsw_m: int = Field(16, ge=2, le=100)
    milvus_hnsw_ef_construction: int = Field(128, ge=4, le=1000)
    milvus_ef_search: int = Field(100, ge=1, le=1000)
    milvus_lite_port: int = Field(19530, ge=1, le=65535)

    # Manticore server for `make up` when MANTICORE_URL is unset: a searchd binary, or a release tarball to
    # unpack under $DATA_DIR/manticore (else `searchd` on PATH), listening on MANTICORE_PORT
    manticore_searchd: str = ""
    manticore_tarball: str = ""
    manticore_port: int = Field(9306, ge=1, le=65535)

    # Manticore table and HNSW parameters
    manticore_table: str = Field("proxima_images", pattern=r"^[a-z_][a-z0-9_]{0,127}$")
    manticore_hnsw_m: int = Field(16, ge=2, le=100)
    manticore_hnsw_ef_construction: int = Field(100, ge=4, le=1000)
    manticore_ef_search: int = Field(64, ge=1, le=1000)
    manticore_quantization: Literal["", "8bit", "1bit"] = ""  # applies when the table is created
    manticore_oversampling: float = Field(3.0, ge=1.0, le=100.0)  # quantized tables: candidates re-scored
    manticore_early_termination: bool = False

    # Folder ingest
    ingest_roots: Annotated[list[Path], NoDecode] = []  # folders POST /ingest may read (comma-separated)
    ingest_max_queued: int = Field(64, ge=1)  # batches waiting in the queue before the walk pauses

    # Jobs and tasks
    job_ttl_days: int = Field(30, ge=1)
    task_max_retries: int = Field(8, ge=0)
    task_visibility_timeout_s: int = Field(3600, ge=10)

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("ingest_roots", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def effective_batch_size(self) -> int:
        """BATCH_SIZE, or the automatic default: 256 when this process would run the model on CUDA, else 32."""
        if self.batch_size:
            return self.batch_size
        from shared.device import default_batch_size  # torch only when the default must be worked out

        return default_batch_size(self.device)

    @classmethod
    def explicit(cls, **values: Any) -> Settings:
        """Settings from `values` and the defaults alone: nothing from the environment or a file (what tests
        pass to the processes and apps they build, so the caller's shell cannot change them)."""
        return _ExplicitSettings(**values)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


class _ExplicitSettings(Settings):
    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the values given, nothing from the environment, a .env or secrets


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once when it first asks (at start-up, never at import).

    From the environment and the file named by PROXIMA_ENV_FILE (default `.env` in the working directory;
    empty: no file, as for the processes tests start)."""
    env_file = os.environ.get("PROXIMA_ENV_FILE", ".env")
    return Settings(_env_file=env_file or None)
