"""Vector backends behind one interface (`base.VectorBackend`), chosen by `VECTOR_BACKEND`.

A backend module is imported only when it is chosen, so a pgvector deployment needs no Milvus client, and
importing this package loads neither Pillow nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shared.backends.base import Hit, ImageRecord, VectorBackend
from shared.types import BackendError, BackendUnavailable, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

_BACKENDS = {
    "pgvector": "shared.backends.pgvector:PgVectorBackend",
    "milvus": "shared.backends.milvus:MilvusBackend",
    "manticore": "shared.backends.manticore:ManticoreBackend",
}


def make_backend(settings: Settings) -> VectorBackend:
    """The backend named by `settings.vector_backend`, configured from the same settings."""
    try:
        target = _BACKENDS[settings.vector_backend]
    except KeyError:
        raise BackendError(
            f"VECTOR_BACKEND={settings.vector_backend!r} is not available yet "
            f"(available: {', '.join(sorted(_BACKENDS))})"
        ) from None
    module_name, class_name = target.split(":")
    backend_cls = getattr(importlib.import_module(module_name), class_name)
    return backend_cls.from_settings(settings)


__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Hit",
    "ImageRecord",
    "SchemaMismatch",
    "VectorBackend",
    "make_backend",
]
