"""Optional API key (API_KEY, sent as X-API-Key): writes and admin always need it once set, searches and
image reads too unless PUBLIC_SEARCH=true. `/health` stays open for health checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header

from api.deps import ProximaDep
from shared.config import Settings
from shared.types import AccessDenied


def key_matches(settings: Settings, given: str | None) -> bool:
    """True when no key is configured, or `given` is it (constant-time comparison)."""
    expected = settings.api_key.get_secret_value()
    return not expected or (given is not None and secrets.compare_digest(given.encode(), expected.encode()))


def require_key(proxima: ProximaDep,
                x_api_key: Annotated[str | None, Header(description="the API key, when API_KEY is set")] = None,
                ) -> None:
    if not key_matches(proxima.settings, x_api_key):
        raise AccessDenied("missing or wrong API key: send it in the X-API-Key header")


def require_search_key(proxima: ProximaDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    if not proxima.settings.public_search:
        require_key(proxima, x_api_key)


WriteAccess = [Depends(require_key)]
SearchAccess = [Depends(require_search_key)]
