"""Which model's index serves searches: one index per model identity, and a catalogue in the database.

Vectors of two models never share an index. Each model identity (`ModelInfo`: extractor, name, weights,
precision) has its own index, named `<base>_<slug>` (`ModelInfo.slug`), in the database the operator chose.
The database's catalogue (`VectorBackend.read_catalog`) holds one entry per identity and a pointer to the
active one:

    active          → slug of the index that serves searches and takes new images
    model:<slug>    → {"model": …, "index": …, "state": "building" | "retired", "job_id": …, …}

    building  a re-embed job is filling it; new images are written to it too (dual write)
    active    serves searches; exactly one (the pointer, one atomic write, switches it)
    retired   was active; no longer searched or written, its index kept until it is deleted (`remove`)

An index made before this catalogue (the bare `<base>` table or collection) is adopted as it is, under its
recorded identity, the first time a process starts (`bootstrap`). Processes read the catalogue at most every
`ttl_s` seconds, so an activation reaches every API process and worker within a few seconds, without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from shared.backends.base import Hit, ImageRecord, Neighbours, SearchFilter, VectorBackend
from shared.types import BackendUnavailable, Conflict, ModelInfo, NotFound, SchemaMismatch

log = logging.getLogger(__name__)

ACTIVE, BUILDING, RETIRED = "active", "building", "retired"
POINTER = "active"
ENTRY = "model:"


def index_name(base: str, slug: str) -> str:
    """The table / collection of identity `slug` in a database whose first index was `base`."""
    return f"{base}_{slug}"


@dataclass(frozen=True)
class IndexEntry:
    """One model identity and its index."""

    slug: str
    model: ModelInfo  # dim 0 until a worker has loaded the model and made the index
    index: str
    state: str  # active, building or retired
    created_at: float
    job_id: str = ""  # the re-embed job filling a building index
    activate_when_done: bool = False
    activated_at: float | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["model"] = json.loads(self.model.to_json())
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> IndexEntry:
        data: dict[str, Any] = json.loads(text)
        data["model"] = ModelInfo.from_json(json.dumps(data["model"]))
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


class ModelCatalog:
    """The catalogue of one database, cached for `ttl_s` seconds, with views on each index."""

    def __init__(self, backend: VectorBackend, *, ttl_s: float = 2.0) -> None:
        self.root = backend  # bound to the base index; its catalogue is the database's
        self.base = backend.index
        self.ttl_s = ttl_s
        self._entries: dict[str, IndexEntry] = {}
        self._read_at = -float("inf")
        self._views: dict[str, VectorBackend] = {}
        self._lock = threading.Lock()

    # --- reading ------------------------------------------------------------------------------------

    def entries(self, *, fresh: bool = False) -> list[IndexEntry]:
        """Every identity, the active one first, then by creation time."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at > self.ttl_s:
                try:
                    self._entries = self._read()
                except BackendUnavailable:
                    if fresh or self._read_at == -float("inf"):
                        raise
                    log.warning("catalogue unreadable (database down): going on with the last one read")
                self._read_at = time.monotonic()
            entries = list(self._entries.values())
        return sorted(entries, key=lambda e: (e.state != ACTIVE, e.created_at))

    def _read(self) -> dict[str, IndexEntry]:
        raw = self.root.read_catalog()
        pointer = raw.get(POINTER, "")
        entries: dict[str, IndexEntry] = {}
        for key, value in raw.items():
            if not key.startswith(ENTRY):
                continue
            entry = IndexEntry.from_json(value)
            if entry.slug == pointer:
                entry = replace(entry, state=ACTIVE)
            elif entry.state == ACTIVE:  # the pointer moved on and the old entry was not rewritten yet
                entry = replace(entry, state=RETIRED)
            entries[entry.slug] = entry
        return entries

    def active(self, *, fresh: bool = False) -> IndexEntry | None:
        return next((e for e in self.entries(fresh=fresh) if e.state == ACTIVE), None)

    def building(self) -> list[IndexEntry]:
        return [e for e in self.entries() if e.state == BUILDING]

    def snapshot(self) -> tuple[IndexEntry | None, list[IndexEntry]]:
        """(the active identity, those being built) from one read of the catalogue."""
        entries = self.entries()
        return next((e for e in entries if e.state == ACTIVE), None), [e for e in entries if e.state == BUILDING]

    def writable(self, active: IndexEntry, building: list[IndexEntry]) -> VectorBackend:
        """`active`'s index, with label changes and deletes mirrored to the `building` ones."""
        view = self.view(active)
        return Mirrored(view, [self.view(e) for e in building]) if building else view

    def get(self, slug: str, *, fresh: bool = True) -> IndexEntry:
        for entry in self.entries(fresh=fresh):
            if entry.slug == slug:
                return entry
        known = ", ".join(e.slug for e in self.entries()) or "none"
        raise NotFound(f"no model index {slug[:80]!r} (known: {known})")

    def find(self, model: ModelInfo) -> IndexEntry | None:
        return next((e for e in self.entries(fresh=True) if e.slug == model.slug), None)

    def view(self, entry: IndexEntry) -> VectorBackend:
        """The backend bound to `entry`'s index (one view per index, kept)."""
        with self._lock:
            if entry.index not in self._views:
                self._views[entry.index] = (self.root if entry.index == self.root.index
                                            else self.root.for_index(entry.index))
            return self._views[entry.index]

    # --- changing -----------------------------------------------------------------------------------

    def _write(self, entry: IndexEntry) -> IndexEntry:
        self.root.write_catalog(ENTRY + entry.slug, entry.to_json())
        self._read_at = -float("inf")
        return entry

    def bootstrap(self, model: ModelInfo) -> IndexEntry:
        """The active identity, making one on the first start: the index an earlier release made (the bare
        base index) is adopted under its recorded identity; otherwise a new index for `model` is created."""
        active = self.active(fresh=True)
        if active is not None:
            return active
        legacy = self.root.stored_model()
        if legacy is not None:
            entry = IndexEntry(slug=legacy.slug, model=legacy, index=self.base, state=ACTIVE, created_at=time.time())
        else:
            entry = IndexEntry(slug=model.slug, model=model, index=index_name(self.base, model.slug), state=ACTIVE,
                               created_at=time.time())
            self.view(entry).ensure_schema(model)
        self._write(replace(entry, activated_at=time.time()))
        self.root.write_catalog(POINTER, entry.slug)
        return self.active(fresh=True) or entry

    def add_building(self, model: ModelInfo, *, job_id: str, activate_when_done: bool) -> IndexEntry:
        """Register `model` as building (a new index, or a retired one to catch up), filled by `job_id`."""
        current = self.find(model)
        if current is not None and current.state == ACTIVE:
            raise Conflict(f"{model.label()} is already the active model ({current.slug})")
        entry = IndexEntry(slug=model.slug, model=current.model if current and current.model.dim else model,
                           index=current.index if current else index_name(self.base, model.slug),
                           state=BUILDING, created_at=current.created_at if current else time.time(),
                           job_id=job_id, activate_when_done=activate_when_done)
        return self._write(entry)

    def set_model(self, slug: str, model: ModelInfo) -> IndexEntry:
        """Record the full identity (with its dimension) once a worker has loaded the model."""
        entry = self.get(slug)
        if entry.model.dim and entry.model.dim != model.dim:
            raise SchemaMismatch(f"{slug} was recorded with dimension {entry.model.dim}, the model gives {model.dim}")
        return self._write(replace(entry, model=model)) if entry.model != model else entry

    def activate(self, slug: str) -> IndexEntry:
        """Make `slug` the active identity: one atomic write of the pointer; the previous one is retired.
        Completeness is the caller's to check (`shared.reembed.check_complete`)."""
        entry = self.get(slug)
        if entry.state == ACTIVE:
            return entry
        if not entry.model.dim:
            raise Conflict(f"{slug} has no vectors yet: its re-embed has not started")
        previous = self.active(fresh=True)
        self.root.write_catalog(POINTER, slug)
        now = time.time()
        self._write(replace(entry, state=ACTIVE, activated_at=now, activate_when_done=False))
        if previous is not None:
            self._write(replace(previous, state=RETIRED))
        return self.get(slug)

    def remove(self, slug: str) -> IndexEntry:
        """Delete the index of a building or retired identity and forget it; the active one cannot be."""
        entry = self.get(slug)
        if entry.state == ACTIVE:
            raise Conflict(f"{slug} is the active model: activate another one before retiring it")
        self.view(entry).drop()
        self.root.write_catalog(ENTRY + slug, None)
        with self._lock:
            self._views.pop(entry.index, None)
        self._read_at = -float("inf")
        return entry


def model_change_message(active: IndexEntry, wanted: ModelInfo, known: IndexEntry | None) -> str:
    """Why a process whose settings name another model than the active one does not start, and what to run."""
    name = wanted.config or wanted.name  # a custom architecture is named by its config file
    head = (f"the index serves model {active.model.label()} ({active.slug}), but the settings name "
            f"{wanted.label()}: vectors of two models are never mixed. Either set "
            f"MODEL_NAME={active.model.config or active.model.name} MODEL_PRETRAINED={active.model.pretrained} back")
    if active.model.extractor != wanted.extractor:
        head += f" EXTRACTOR={active.model.extractor}"
    if known is not None and known.state != ACTIVE:
        return (f"{head}, or switch to {wanted.slug} ({known.state}): `python scripts/reembed.py --activate "
                f"{wanted.slug}` once it is complete (`python scripts/reembed.py --list` shows it; run "
                f"`python scripts/reembed.py --name {name} --pretrained {wanted.pretrained}` to finish "
                "its re-embed).")
    return (f"{head}, or re-embed every image with the new model while the old one keeps serving: "
            f"`python scripts/reembed.py --name {name} --pretrained {wanted.pretrained} --activate-when-done` "
            "(or POST /admin/models), or set MODEL_CHANGE=reembed to have the API start that re-embed.")


class Mirrored:
    """The active index, whose label changes and deletes also reach the indexes being built (their vectors
    come from another model, so upserts do not: the workers write those with each model)."""

    def __init__(self, active: VectorBackend, building: Sequence[VectorBackend]) -> None:
        self.active, self.building = active, list(building)
        self.name, self.index = active.name, active.index

    def set_labels(self, labels: dict[str, tuple[Sequence[str], Sequence[str]]]) -> int:
        found = self.active.set_labels(labels)
        for view in self.building:
            view.set_labels(labels)
        return found

    def delete(self, ids: Sequence[str]) -> int:
        removed = self.active.delete(ids)
        for view in self.building:
            view.delete(ids)
        return removed

    def ensure_schema(self, model: ModelInfo) -> None:
        self.active.ensure_schema(model)

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        self.active.upsert(records, vectors)

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = (),
               where: SearchFilter | None = None) -> list[Hit]:
        return self.active.search(vector, k, exclude=exclude, where=where)

    def neighbours(self, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
        return self.active.neighbours(ids, vectors, k)

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        return self.active.get(ids)

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self.active.get_vectors(ids)

    def count(self, where: SearchFilter | None = None) -> int:
        return self.active.count(where)

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        return self.active.scan(batch_size)

    def for_index(self, index: str) -> VectorBackend:
        return self.active.for_index(index)

    def stored_model(self) -> ModelInfo | None:
        return self.active.stored_model()

    def drop(self) -> None:
        self.active.drop()

    def read_catalog(self) -> dict[str, str]:
        return self.active.read_catalog()

    def write_catalog(self, key: str, value: str | None) -> None:
        self.active.write_catalog(key, value)

    def close(self) -> None:
        """Views release nothing (the database object they came from does)."""
