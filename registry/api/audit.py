"""The audit log route (`GET /api/v1/audit`, admin): every recorded action with its actor.

Here, in the composition root, because it joins two packages that may not import each other:
registry.events (the log) and registry.auth (the scope it needs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from registry.api.deps import SessionDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.errors import InvalidInput
from registry.events import service as events
from registry.events.schemas import EventPageOut

router = APIRouter(prefix="/api/v1", tags=["access"])


@router.get("/audit", response_model=EventPageOut,
            dependencies=[require(Scope.ADMIN, adapter_param=None)],
            responses=error_responses(422, 503))
def audit(
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="ISO 8601, with a timezone")] = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="the last id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_PAGE)] = 100,
) -> EventPageOut:
    """Every recorded action (versions, promotions, rollbacks, forced moves, archives,
    validations, exports, token create/revoke), oldest first, from ``since``."""
    if since is not None and since.tzinfo is None:
        raise InvalidInput("since needs a timezone, e.g. 2026-01-01T00:00:00Z")
    return events.page(session, after=after, limit=limit, since=since)
