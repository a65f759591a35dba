"""Webhooks: add, list, remove, test; their deliveries. Adding sends nothing; the server's
dispatcher (registry/events/dispatcher.py) sends what the outbox queued."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from registry.db.base import utcnow
from registry.db.models import DeliveryStatus, Webhook, WebhookDelivery
from registry.errors import InvalidInput, WebhookNotFound
from registry.events import service as events
from registry.events import types as event_types
from registry.events.destinations import check_url, resolve
from registry.events.outbox import wake_after_commit
from registry.events.signing import generate_secret, secret_key
from registry.events.webhook_schemas import (
    CreatedWebhookOut,
    CreateWebhookIn,
    DeliveryOut,
    WebhookOut,
)
from registry.refs import validate_name

MAX_DELIVERIES_PAGE = 1000


def check_event_types(types: list[str]) -> list[str]:
    """The event types, deduplicated in their order.

    Raises:
        InvalidInput: none, or one a webhook cannot subscribe to.
    """
    unknown = [t for t in types if t not in event_types.DELIVERABLE]
    if unknown or not types:
        raise InvalidInput(f"unknown event type(s) {', '.join(map(repr, unknown))}; webhooks "
                           f"deliver {', '.join(event_types.DELIVERABLE)}" if unknown else
                           "a webhook needs at least one event type")
    return list(dict.fromkeys(types))


def add(session: Session, *, body: CreateWebhookIn, actor: str | None,
        allow_private: bool) -> tuple[Webhook, str]:
    """Add a webhook; nothing is sent.

    Args:
        body: URL, event types, optional adapter and secret.
        actor: who adds it (recorded on the row and in the ``webhook.added`` event).
        allow_private: accept destinations that resolve to non-global addresses.

    Returns:
        The webhook and its secret (given, or generated), which is never shown again.

    Raises:
        InvalidInput: a malformed URL or secret, an unknown event type, an invalid adapter
            name, or a host that does not resolve.
        DestinationNotAllowed: the host resolves to a private address and that is not allowed.
    """
    types = check_event_types(body.events)
    if body.adapter is not None:
        validate_name(body.adapter)
    secret = body.secret if body.secret is not None else generate_secret()
    secret_key(secret)
    check_url(body.url)
    resolve(body.url, allow_private=allow_private)
    hook = Webhook(url=body.url, event_types=types, adapter=body.adapter, secret=secret,
                   active=True, created_at=utcnow(), created_by=actor)
    session.add(hook)
    session.flush()
    events.record(session, type=event_types.WEBHOOK_ADDED, adapter=body.adapter, actor=actor,
                  payload={"webhook": hook.id, "url": hook.url, "events": types})
    return hook, secret


def get(session: Session, *, webhook_id: int, removed: bool = False) -> Webhook:
    """A webhook by id (a removed one only with ``removed``).

    Raises:
        WebhookNotFound
    """
    hook = session.get(Webhook, webhook_id)
    if hook is None or (not hook.active and not removed):
        raise WebhookNotFound(f"no webhook {webhook_id}")
    return hook


def list_webhooks(session: Session) -> list[Webhook]:
    """The active webhooks, oldest first."""
    return list(session.scalars(
        select(Webhook).where(Webhook.active.is_(True)).order_by(Webhook.id)))


def remove(session: Session, *, webhook_id: int, actor: str | None) -> Webhook:
    """Deactivate a webhook: nothing more is queued for it, and its deliveries not yet sent
    are failed (those being sent finish). Its delivery history stays readable.

    Raises:
        WebhookNotFound
    """
    hook = get(session, webhook_id=webhook_id)
    hook.active = False
    now = utcnow()
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id,
                                      WebhookDelivery.status == DeliveryStatus.pending)
    ):
        delivery.status = DeliveryStatus.failed
        delivery.last_error = "webhook removed"
        delivery.updated_at = now
    events.record(session, type=event_types.WEBHOOK_REMOVED, adapter=hook.adapter, actor=actor,
                  payload={"webhook": hook.id, "url": hook.url})
    session.flush()
    return hook


def enqueue_test(session: Session, *, webhook_id: int, actor: str | None) -> WebhookDelivery:
    """Record a ``webhook.test`` event and queue its delivery to this webhook alone.

    Raises:
        WebhookNotFound
    """
    hook = get(session, webhook_id=webhook_id)
    event = events.record(session, type=event_types.WEBHOOK_TEST, adapter=hook.adapter,
                          actor=actor, payload={"webhook": hook.id})
    now = utcnow()
    delivery = WebhookDelivery(webhook_id=hook.id, event_id=event.id,
                               status=DeliveryStatus.pending, attempts=0, next_attempt_at=now,
                               created_at=now, updated_at=now)
    delivery.event = event
    session.add(delivery)
    session.flush()
    wake_after_commit(session)
    return delivery


def list_deliveries(session: Session, *, webhook_id: int,
                    limit: int = 100) -> list[WebhookDelivery]:
    """A webhook's deliveries (removed webhooks' too), newest first.

    Raises:
        WebhookNotFound, InvalidInput (limit outside 1..1000).
    """
    if not 1 <= limit <= MAX_DELIVERIES_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_DELIVERIES_PAGE}")
    get(session, webhook_id=webhook_id, removed=True)
    return list(session.scalars(
        select(WebhookDelivery).options(selectinload(WebhookDelivery.event))
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc()).limit(limit)))


def to_out(hook: Webhook) -> WebhookOut:
    return WebhookOut(id=hook.id, url=hook.url, events=list(hook.event_types or ()),
                      adapter=hook.adapter, active=hook.active, created_at=hook.created_at,
                      created_by=hook.created_by)


def created_out(hook: Webhook, secret: str) -> CreatedWebhookOut:
    return CreatedWebhookOut(**to_out(hook).model_dump(), secret=secret)


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, webhook_id=d.webhook_id, event_id=d.event_id, event_type=d.event.type,
        status=d.status.value, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.pending else None,
        last_status_code=d.last_status_code, last_response=d.last_response,
        last_error=d.last_error, created_at=d.created_at, updated_at=d.updated_at,
        delivered_at=d.delivered_at,
    )
