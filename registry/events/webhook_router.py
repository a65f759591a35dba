"""Webhook routes (admin): add, list, remove, test, deliveries (`/api/v1/webhooks`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from registry.api.deps import ActorDep, SessionDep, SettingsDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.events import webhooks as service
from registry.events.webhook_schemas import (
    CreatedWebhookOut,
    CreateWebhookIn,
    DeliveryOut,
    WebhookOut,
)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
WebhookId = Annotated[int, Path(ge=1, le=2**63 - 1, description="webhook id")]
ADMIN = [require(Scope.ADMIN)]


@router.post("", response_model=CreatedWebhookOut, status_code=201, dependencies=ADMIN,
             responses=error_responses(422, 503))
def add_webhook(body: CreateWebhookIn, session: SessionDep, settings: SettingsDep,
                actor: ActorDep) -> CreatedWebhookOut:
    """Add a webhook. Nothing is sent; the answer holds the signing secret, shown this once."""
    hook, secret = service.add(session, body=body, actor=actor.name if actor else None,
                               allow_private=settings.webhook_allow_private)
    return service.created_out(hook, secret)


@router.get("", response_model=list[WebhookOut], dependencies=ADMIN,
            responses=error_responses(422, 503))
def list_webhooks(session: SessionDep) -> list[WebhookOut]:
    """The active webhooks (never their secrets)."""
    return [service.to_out(h) for h in service.list_webhooks(session)]


@router.delete("/{webhook_id}", response_model=WebhookOut, dependencies=ADMIN,
               responses=error_responses(404, 422, 503))
def remove_webhook(webhook_id: WebhookId, session: SessionDep,
                   actor: ActorDep) -> WebhookOut:
    """Remove a webhook: its deliveries not yet sent are failed; their history stays."""
    return service.to_out(service.remove(session, webhook_id=webhook_id,
                                         actor=actor.name if actor else None))


@router.post("/{webhook_id}/test", response_model=DeliveryOut, status_code=202,
             dependencies=ADMIN, responses=error_responses(404, 422, 503))
def test_webhook(webhook_id: WebhookId, session: SessionDep, actor: ActorDep) -> DeliveryOut:
    """Queue a ``webhook.test`` event for this webhook; the dispatcher sends it."""
    delivery = service.enqueue_test(session, webhook_id=webhook_id,
                                    actor=actor.name if actor else None)
    return service.delivery_out(delivery)


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryOut], dependencies=ADMIN,
            responses=error_responses(404, 422, 503))
def list_deliveries(
    webhook_id: WebhookId, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_DELIVERIES_PAGE)] = 100,
) -> list[DeliveryOut]:
    """A webhook's deliveries, newest first: status, attempts, last status code, next retry."""
    return [service.delivery_out(d)
            for d in service.list_deliveries(session, webhook_id=webhook_id, limit=limit)]
