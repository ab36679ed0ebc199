"""What a route needs, in one word: `ProximaDep`, the process's `shared.services.Proxima` (built in the
lifespan, kept on `app.state`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shared.services import Proxima


def get_proxima(request: Request) -> Proxima:
    return request.app.state.proxima


ProximaDep = Annotated[Proxima, Depends(get_proxima)]
