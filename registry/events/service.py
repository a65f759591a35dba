"""Write events in the caller's transaction (the outbox) and page through them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.models import Event
from registry.errors import InvalidInput
from registry.events.outbox import fan_out
from registry.events.schemas import EventOut, EventPageOut

MAX_PAGE = 1000


def record(session: Session, *, type: str, adapter: str | None = None,
           version: int | None = None, alias: str | None = None, actor: str | None = None,
           payload: dict[str, Any] | None = None) -> Event:
    """Add an event to the caller's unit of work: it commits (or not) with the change itself,
    and so do its deliveries to the webhooks subscribed to it (the outbox).

    Args:
        session: the change's session (flushed here so the event has its id).
        type: one of registry.events.types.
        adapter, version, alias: what the event is about, as plain values (history survives).
        actor: who made the change (token name, or the declared user when auth is off).
        payload: event-specific data (JSON).
    """
    event = Event(type=type, adapter=adapter, version=version, alias=alias, actor=actor,
                  payload=payload or {}, created_at=utcnow())
    session.add(event)
    session.flush()
    fan_out(session, event)
    return event


def page(session: Session, *, after: int = 0, limit: int = 100, types: Sequence[str] = (),
         adapter: str | None = None, since: datetime | None = None) -> EventPageOut:
    """Events with ``id > after``, oldest first, at most ``limit``.

    Raises:
        InvalidInput: ``after`` negative or ``limit`` outside 1..1000.
    """
    if after < 0:
        raise InvalidInput("after must be a non-negative event id")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    stmt = select(Event).where(Event.id > after)
    if types:
        stmt = stmt.where(Event.type.in_(list(types)))
    if adapter is not None:
        stmt = stmt.where(Event.adapter == adapter)
    if since is not None:
        stmt = stmt.where(Event.created_at >= since)
    rows = session.scalars(stmt.order_by(Event.id).limit(limit)).all()
    events = [to_out(e) for e in rows]
    return EventPageOut(events=events, next_after=events[-1].id if events else None)


def to_out(e: Event) -> EventOut:
    return EventOut(id=e.id, type=e.type, adapter=e.adapter, version=e.version, alias=e.alias,
                    actor=e.actor, payload=e.payload, created_at=e.created_at)
