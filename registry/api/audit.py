"""The audit log route (`GET /api/v1/audit`, admin): every recorded action with its actor.

Here, in the composition root, because it joins two packages that may not import each other:
registry.events (the log) and registry.auth (the scope it needs).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from registry.api.deps import SessionDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.errors import InvalidInput
from registry.events import service as events
from registry.events.schemas import EventPageOut

RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

router = APIRouter(prefix="/api/v1", tags=["access"])


@router.get("/audit", response_model=EventPageOut,
            dependencies=[require(Scope.ADMIN, adapter_param=None)],
            responses=error_responses(422, 503))
def audit(
    session: SessionDep,
    since: Annotated[str | None, Query(max_length=40, description="ISO 8601, with a timezone",
                                       json_schema_extra={"format": "date-time"})] = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="the last id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_PAGE)] = 100,
) -> EventPageOut:
    """Every recorded action (versions, promotions, rollbacks, forced moves, archives,
    validations, exports, token create/revoke), oldest first, from ``since``."""
    return events.page(session, after=after, limit=limit, since=_aware(since))


def _aware(since: str | None) -> datetime | None:
    """An RFC 3339 date-time with its timezone (a bare number or date is not one)."""
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since) if RFC3339_RE.match(since) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidInput(f"since {since[:40]!r} is not a date-time with a timezone, e.g. "
                           "2026-01-01T00:00:00Z")
    return when
