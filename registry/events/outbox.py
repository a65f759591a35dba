"""The outbox's fan-out: an event's delivery rows for every matching webhook, written in the
event's own transaction, and the in-process wake-up of dispatchers once that commits."""

from __future__ import annotations

import threading

from sqlalchemy import event as sa_event
from sqlalchemy import or_, select
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
    """Add a pending delivery of ``event`` for every active webhook subscribed to its type
    (and its adapter, when the webhook names one).

    Returns:
        How many deliveries were added.
    """
    if event.type not in DELIVERABLE:
        return 0
    hooks = session.scalars(
        select(Webhook).where(Webhook.active.is_(True),
                              or_(Webhook.adapter.is_(None), Webhook.adapter == event.adapter))
        .order_by(Webhook.id)
    ).all()
    now = utcnow()
    added = 0
    for hook in hooks:
        if event.type in (hook.event_types or ()):
            session.add(WebhookDelivery(webhook_id=hook.id, event_id=event.id,
                                        status=DeliveryStatus.pending, attempts=0,
                                        next_attempt_at=now, created_at=now, updated_at=now))
            added += 1
    if added:
        session.flush()
        wake_after_commit(session)
    return added
