"""Event routes: page through what happened (`GET /api/v1/events?after=ID`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from registry.api.deps import AccessDep, SessionDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.events import service
from registry.events.schemas import EventPageOut

router = APIRouter(prefix="/api/v1/events", tags=["events"])


@router.get("", response_model=EventPageOut, responses=error_responses(422, 503),
            dependencies=[require(Scope.READ, adapter_param=None)])
def list_events(
    session: SessionDep,
    access: AccessDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="the last id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    type: Annotated[list[str] | None, Query(max_length=20)] = None,
    adapter: Annotated[str | None, Query(max_length=200)] = None,
) -> EventPageOut:
    """Events with ``id > after``, oldest first (a token limited to namespaces sees the events
    of their adapters, and those about no adapter; ``next_after`` still moves past the rest)."""
    page = service.page(session, after=after, limit=limit, types=type or (), adapter=adapter)
    return page.model_copy(update={"events": [e for e in page.events if access.sees(e.adapter)]})
