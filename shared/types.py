"""The contracts every layer shares: value types, job records, and our exceptions with their HTTP meaning.

This module is light on purpose (no Pillow, no torch, no database driver): the backends, the API, the UI,
the workers and the scripts all import it. Exceptions, and what each means to a caller:

    ProximaError
    ├── BadInput                422  bad_input    (ValueError too)
    │   ├── ImageError          422  not a decodable / accepted image
    │   └── QueryError          422  an unusable search text
    ├── AccessDenied            401  missing or wrong API key
    ├── Forbidden               403  e.g. a folder outside INGEST_ROOTS
    │   └── PathNotAllowed
    ├── NotFound                404  no such image, job or folder
    ├── JobClosed               409  adding to a job that is sealed
    ├── NotSupported            409  e.g. text search with an image-only extractor
    ├── TooLarge                413  too many files in one request
    ├── ModelLoadError          500  the configured model cannot load (stops a process at start-up)
    └── BackendError            500  the vector database refused something
        ├── BackendUnavailable  503  cannot reach it (retry later)
        └── SchemaMismatch      500  the stored index was built by another model / dimension

Redis being down (`redis.ConnectionError`, `redis.TimeoutError`) means 503 too. `describe(exc)` looks an
exception up in `ERRORS`, the one table the API's handlers, the page's messages and the HTTP client read.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import redis.exceptions

RANDOM = "random"  # MODEL_PRETRAINED for seeded random weights (offline demos and tests)


# --- exceptions -------------------------------------------------------------------------------------


class ProximaError(Exception):
    """Anything Proxima refuses or cannot do, with a message meant for the person who asked."""


class BadInput(ProximaError, ValueError):
    pass


class ImageError(BadInput):
    """Not an image we can use; the message says why (plain text, truncated, too large, ...)."""


class QueryError(BadInput):
    """A search text that is empty or too long."""


class AccessDenied(ProximaError):
    pass


class Forbidden(ProximaError):
    pass


class PathNotAllowed(Forbidden):
    """A path outside the allowed ingest roots (or a symlink leading out of them)."""


class NotFound(ProximaError):
    pass


class JobClosed(ProximaError):
    pass


class Conflict(ProximaError):
    """Not possible in the current state (retiring the active model, activating an incomplete index)."""


class NotSupported(ProximaError):
    """Something the loaded model cannot do (text search with an image-only extractor)."""


class TooLarge(ProximaError):
    pass


class ModelLoadError(ProximaError):
    """The configured model cannot be loaded; the message says what to change."""


class BackendError(ProximaError):
    pass


class BackendUnavailable(BackendError):
    pass


class SchemaMismatch(BackendError):
    pass


ErrorKind = Literal["bad_input", "forbidden", "not_found", "unavailable", "error"]  # what the page tells apart


@dataclass(frozen=True)
class ErrorInfo:
    kind: ErrorKind
    status: int
    prefix: str = ""  # put before the exception's own message
    headers: dict[str, str] = field(default_factory=dict)


_RETRY = {"Retry-After": "5"}

# Most specific first: the first entry an exception is an instance of applies.
ERRORS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], ErrorInfo], ...] = (
    (ImageError, ErrorInfo("bad_input", 422, "not a usable image: ")),
    (BadInput, ErrorInfo("bad_input", 422)),
    (AccessDenied, ErrorInfo("forbidden", 401, headers={"WWW-Authenticate": "X-API-Key"})),
    (Forbidden, ErrorInfo("forbidden", 403)),
    (NotFound, ErrorInfo("not_found", 404)),
    (JobClosed, ErrorInfo("bad_input", 409)),
    (Conflict, ErrorInfo("bad_input", 409)),
    (NotSupported, ErrorInfo("bad_input", 409)),
    (TooLarge, ErrorInfo("bad_input", 413)),
    (BackendUnavailable, ErrorInfo("unavailable", 503, "vector database unavailable, try again shortly: ", _RETRY)),
    ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
     ErrorInfo("unavailable", 503, "job queue (Redis) unavailable, try again shortly: ", _RETRY)),
    (BackendError, ErrorInfo("error", 500, "vector database error: ")),
    (ModelLoadError, ErrorInfo("error", 500, "model: ")),
    (ProximaError, ErrorInfo("error", 500)),
)


def describe(exc: BaseException) -> tuple[ErrorInfo, str] | None:
    """(what it means, the message to show) for one of our errors; None for anything else (a bug)."""
    for types, info in ERRORS:
        if isinstance(exc, types):
            return info, f"{info.prefix}{exc}"
    return None


def kind_of_status(status: int) -> ErrorKind:
    """The kind of an HTTP error answer (for clients of the API): the table's, else by its class."""
    for _, info in ERRORS:
        if info.status == status:
            return info.kind
    return "bad_input" if 400 <= status < 500 else "error"


class ServiceError(ProximaError):
    """What a client of Proxima (the page, the scripts) gets for any failure: a kind and a readable detail."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: ErrorKind = kind
        self.detail = detail


# --- models and stage times ----------------------------------------------------------------------------


DEFAULT_EXTRACTOR = "open_clip"


@dataclass(frozen=True)
class ModelInfo:
    """What produced a vector: stored beside the index, so vectors of two models are never mixed.

    `extractor` is the family that loads the model (shared/extractors/). `precision` is empty for the
    model's own vectors (fp32, and fp16/bf16, which stay within a cosine of 0.999 of them); `int8` marks
    quantized weights, whose vectors count as another model's."""

    name: str
    pretrained: str
    dim: int
    precision: str = ""
    extractor: str = DEFAULT_EXTRACTOR
    config: str = field(default="", compare=False)  # a model config file the name came from (how to load it)

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM

    def label(self) -> str:
        """`[extractor:]name/pretrained[/int8]`, a checkpoint path shortened to its file name (moving the file
        is fine); open_clip, the first extractor, is implied (indexes built before extractors keep their label)."""
        pretrained = Path(self.pretrained).name if "/" in self.pretrained else self.pretrained
        prefix = "" if self.extractor == DEFAULT_EXTRACTOR else f"{self.extractor}:"
        return f"{prefix}{self.name}/{pretrained}" + (f"/{self.precision}" if self.precision else "")

    @property
    def slug(self) -> str:
        """A short stable name of this identity for index names: the model name made safe, then 8 hex digits of
        a hash of `label()` (extractor, name, weights file name, precision; the dimension follows from them)."""
        safe = re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")[:20].strip("_") or "model"
        return f"{safe}_{hashlib.sha256(self.label().encode()).hexdigest()[:8]}"

    def to_json(self) -> str:
        data: dict[str, str | int] = {"name": self.name, "pretrained": self.pretrained, "dim": int(self.dim)}
        if self.precision:
            data["precision"] = self.precision
        if self.extractor != DEFAULT_EXTRACTOR:
            data["extractor"] = self.extractor
        if self.config:
            data["config"] = self.config
        return json.dumps(data)

    @classmethod
    def from_label(cls, label: str, dim: int) -> ModelInfo:
        """The identity a record's `model` label names (`label()` read back)."""
        extractor, colon, rest = label.partition(":")
        if not colon or "/" in extractor:  # no extractor prefix (a ':' further on belongs to the name)
            extractor, rest = DEFAULT_EXTRACTOR, label
        name, _, pretrained = rest.partition("/")
        pretrained, _, precision = pretrained.partition("/")
        return cls(name=name, pretrained=pretrained, dim=dim, precision=precision, extractor=extractor)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelInfo:
        data = json.loads(text)
        return cls(name=str(data.get("name", "?")), pretrained=str(data.get("pretrained", "?")),
                   dim=int(data.get("dim", 0)), precision=str(data.get("precision", "")),
                   extractor=str(data.get("extractor", DEFAULT_EXTRACTOR)), config=str(data.get("config", "")))


class Encoder(Protocol):
    """A loaded model as the pipeline uses it (`shared.embedder.Embedder`, or the API's `BatchingEmbedder`)."""

    info: ModelInfo
    image_size: int
    runtime: str  # torch, openvino or onnxruntime (shared/runtime.py)
    precision: str  # fp16, f32, bf16 or int8
    has_text: bool  # False for an image-only extractor: encode_text raises NotSupported

    def encode_images(self, pixels: Sequence[Any]) -> np.ndarray: ...
    def encode_text(self, texts: list[str]) -> np.ndarray: ...


STAGES = ("read", "decode", "transfer", "encode", "upsert")


@dataclass
class StageTimes:
    """Seconds spent per stage of a batch. read and decode are summed over the pool's threads."""

    read: float = 0.0
    decode: float = 0.0
    transfer: float = 0.0
    encode: float = 0.0
    upsert: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                setattr(self, stage, getattr(self, stage) + elapsed)

    def as_dict(self) -> dict[str, float]:
        return {stage: round(getattr(self, stage), 4) for stage in STAGES}


# --- uploads and batches --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes

    @classmethod
    def from_path(cls, path: Path) -> Upload:
        return cls(filename=path.name, data=path.read_bytes())


@dataclass(frozen=True)
class Accepted:
    """What happened to one upload: queued for embedding, a duplicate of an indexed image, or rejected."""

    id: str | None
    filename: str
    status: Literal["queued", "duplicate", "rejected"]
    error: str | None = None


@dataclass(frozen=True)
class FileError:
    id: str | None
    filename: str
    message: str


@dataclass(frozen=True)
class BatchResult:
    done: int  # embedded, or already indexed (duplicates are part of done)
    errors: list[FileError]
    duplicates: int = 0
    embedded: tuple[str, ...] = ()  # ids embedded by this batch (written to an index being built too)


@dataclass(frozen=True)
class ClientCounts:
    """What a client walking its own folder found without uploading (`POST /jobs/{id}/seal`)."""

    seen: int = 0  # files walked but not uploaded
    skipped: int = 0  # not images
    duplicates: int = 0  # indexed by an earlier run: counted as done
    skipped_reasons: dict[str, int] = field(default_factory=dict)


# --- jobs -----------------------------------------------------------------------------------------------


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"  # some images failed; duplicates count as done
    FAILED = "failed"  # every image failed (nothing done, not even a duplicate)
    PAUSED = "paused"  # no new batch starts until it is resumed (POST /jobs/{id}/pause, /resume)
    CANCELLED = "cancelled"  # its remaining batches were dropped; the counters say what was done


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED})


def final_state(*, done: int, failed: int) -> JobState:
    """The state of a job whose images are all processed (the rule `shared/jobs.py` applies in Redis)."""
    if failed == 0:
        return JobState.COMPLETED
    return JobState.FAILED if done == 0 else JobState.COMPLETED_WITH_ERRORS


@dataclass(frozen=True)
class Job:
    """One job (an upload, a folder ingest, a re-embed, a duplicates run), as `GET /jobs/{id}` shows it."""

    job_id: str
    kind: str  # upload | folder | reembed | duplicates
    state: JobState
    total: int = 0
    done: int = 0
    failed: int = 0
    seen: int = 0
    skipped: int = 0
    duplicates: int = 0
    errors: tuple[FileError, ...] = ()
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    rate_per_s: float | None = None
    eta_s: float | None = None
    path: str | None = None
    walking: bool = False  # open: more images may still be added
    interrupted: bool = False  # open, but whoever was adding to it went silent
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] | None = None

    @property
    def remaining(self) -> int:
        """Images queued and not processed (for a cancelled job: those dropped)."""
        return max(0, self.total - self.done - self.failed)

    @property
    def finished(self) -> bool:
        """Nothing more will happen: a final state and no walk still adding, or a dead walk whose queued
        images are all processed."""
        if self.walking:
            return False
        return self.state in FINAL_STATES or (self.interrupted and self.done + self.failed >= self.total)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "kind": self.kind, "state": self.state.value,
                               "total": self.total, "done": self.done, "failed": self.failed, "seen": self.seen,
                               "skipped": self.skipped, "duplicates": self.duplicates,
                               "errors": [asdict(e) for e in self.errors]}
        if self.kind != "upload":
            out.update(path=self.path, walking=self.walking, skipped_reasons=dict(self.skipped_reasons))
            if self.interrupted:
                out["interrupted"] = True
        if self.state is JobState.CANCELLED:
            out["dropped"] = self.remaining
        out.update(rate_per_s=self.rate_per_s, eta_s=self.eta_s, created_at=self.created_at,
                   started_at=self.started_at, updated_at=self.updated_at)
        if self.stage_s is not None:
            out["stage_s"] = dict(self.stage_s)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """A job read back from the API's JSON."""
        names = {f for f in cls.__dataclass_fields__ if f not in ("state", "errors")}
        return cls(state=JobState(data["state"]), errors=tuple(FileError(**e) for e in data.get("errors", [])),
                   **{k: v for k, v in data.items() if k in names})
