"""The outbox's fan-out: an event's delivery rows for every matching webhook, written in the
event's own transaction, and the in-process wake-up of dispatchers once that commits."""

from __future__ import annotations

import functools
import threading
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.models import DeliveryStatus, Event, Webhook, WebhookDelivery
from registry.events.types import DELIVERABLE

_WAKE_KEY = "webhook_deliveries_added"
_waiters: set[threading.Event] = set()
_waiters_lock = threading.Lock()


def add_waiter(flag: threading.Event) -> None:
    """Have ``flag`` set whenever a transaction of this process commits new deliveries."""
    with _waiters_lock:
        _waiters.add(flag)


def remove_waiter(flag: threading.Event) -> None:
    with _waiters_lock:
        _waiters.discard(flag)


def wake_after_commit(session: Session) -> None:
    """Wake this process's dispatchers when ``session`` commits (not before: they would not
    see the rows yet)."""
    session.info[_WAKE_KEY] = True


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_WAKE_KEY, False):
        with _waiters_lock:
            for flag in _waiters:
                flag.set()


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_WAKE_KEY, None)


def fan_out(session: Session, event: Event) -> int:
    """Add a pending delivery of ``event`` (flushed: it has its id) for every active webhook
    subscribed to its type (and its adapter, when the webhook names one): one
    ``INSERT … SELECT`` of :func:`deliveries_select`, the rule a push's own statement uses.

    Returns:
        How many deliveries were added.
    """
    if event.type not in DELIVERABLE:
        return 0
    added = len(session.execute(_fan_out_statement(session.get_bind().dialect.name), {
        "event_id": event.id, "event_type": event.type, "event_adapter": event.adapter,
        "now": utcnow()}).all())
    if added:
        wake_after_commit(session)
    return added


@functools.cache
def _fan_out_statement(dialect: str) -> Insert:
    event_id = bindparam("event_id", type_=WebhookDelivery.__table__.c.event_id.type)
    table: Any = WebhookDelivery.__table__
    return (insert(table).from_select(list(DELIVERY_COLUMNS),
                                      deliveries_select(event_id, dialect=dialect))
            .returning(table.c.id))


def deliveries_select(event_id: ColumnElement[Any], *, dialect: str) -> Select[Any]:
    """The delivery rows of the event ``event_id`` names, as SQL (:func:`fan_out`'s insert, and
    a push's own statement in registry.adapters.writes): one per active webhook subscribed to
    the event's type (bound as ``event_type``) and to its adapter (``event_adapter``) or to
    every adapter; timestamps are the bound ``now``. Columns in the order of
    :data:`DELIVERY_COLUMNS`."""
    w = Webhook.__table__.c
    event_type = bindparam("event_type", type_=w.url.type)
    if dialect == "postgresql":
        subscribed: ColumnElement[bool] = w.event_types.cast(JSONB).has_key(event_type)
    else:
        listed = func.json_each(w.event_types).table_valued("value")
        subscribed = exists().select_from(listed).where(listed.c.value == event_type)
    now = bindparam("now", type_=WebhookDelivery.__table__.c.created_at.type)
    status = bindparam("delivery_status", DeliveryStatus.pending,
                       type_=WebhookDelivery.__table__.c.status.type)
    return (select(w.id, event_id, status, literal(0), now, now, now)
            .where(w.active.is_(True),
                   or_(w.adapter.is_(None), w.adapter == bindparam("event_adapter",
                                                                     type_=w.adapter.type)),
                   subscribed)
            .order_by(w.id))


DELIVERY_COLUMNS = ("webhook_id", "event_id", "status", "attempts", "next_attempt_at",
                    "created_at", "updated_at")
