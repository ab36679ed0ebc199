"""Collections (named albums, many per image) and free tags.

The labels themselves live beside each vector in the backend (`ImageRecord.collections` / `.tags`), so a
filter on them runs inside the vector search. This module keeps the list of collections (name, description,
creation time) in one Redis hash, so an album exists, with its description, before any image is in it;
the images of an album are always counted from the backend.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared.filters import label

COLLECTIONS_KEY = "proxima:collections"
MAX_DESCRIPTION_CHARS = 500


@dataclass(frozen=True)
class Collection:
    name: str
    description: str = ""
    created_at: float = 0.0


class CollectionRegistry:
    """The named collections, in Redis (`COLLECTIONS_KEY`: name → JSON)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, name: str, description: str = "") -> tuple[Collection, bool]:
        """(the collection, whether it is new); an existing one keeps its description unless one is given."""
        name = label(name, "collection name")
        description = description.strip()[:MAX_DESCRIPTION_CHARS]
        new = Collection(name, description, round(time.time(), 3))
        if self.redis.hsetnx(COLLECTIONS_KEY, name, json.dumps(vars(new))):
            return new, True
        existing = self.get(name) or new
        if description and description != existing.description:
            existing = Collection(name, description, existing.created_at)
            self.redis.hset(COLLECTIONS_KEY, name, json.dumps(vars(existing)))
        return existing, False

    def ensure(self, names: tuple[str, ...]) -> None:
        """Register collections named by an upload or an ingest (checked names; known ones are left as they
        are): one Redis call, made on every such request."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hsetnx(COLLECTIONS_KEY, name, json.dumps(vars(Collection(name, "", round(time.time(), 3)))))
            pipe.execute()

    def get(self, name: str) -> Collection | None:
        raw = self.redis.hget(COLLECTIONS_KEY, name)
        return Collection(**json.loads(raw)) if raw else None

    def all(self) -> list[Collection]:
        """Every collection, by name."""
        raw = self.redis.hgetall(COLLECTIONS_KEY)
        return sorted((Collection(**json.loads(v)) for v in raw.values()), key=lambda c: c.name.casefold())
