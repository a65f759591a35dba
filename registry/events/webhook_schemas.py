"""Shapes of webhooks and their deliveries (`/api/v1/webhooks`, `webhook … --json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from registry.events.types import DELIVERABLE

EventTypeName = Annotated[str, Field(max_length=64, json_schema_extra={"enum": list(DELIVERABLE)})]


class CreateWebhookIn(BaseModel):
    """Body of ``POST /api/v1/webhooks``. Adding a webhook sends nothing (``…/test`` does)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http:// or https:// receiver")
    events: list[EventTypeName] = Field(min_length=1, max_length=32,
                                        description="the event types to deliver")
    adapter: str | None = Field(default=None, max_length=200,
                                description="only this adapter's events (default: all)")
    secret: str | None = Field(
        default=None, max_length=200,
        description="whsec_<base64 of 24-64 bytes>; generated when omitted. Returned only in "
                    "this answer.")


class WebhookOut(BaseModel):
    """A webhook; never its secret (only ``CreatedWebhookOut``, once, has it)."""

    id: int
    url: str
    events: list[str]
    adapter: str | None
    active: bool
    created_at: datetime
    created_by: str | None


class CreatedWebhookOut(WebhookOut):
    """The answer of ``webhook add``: the webhook and its signing secret, shown this once."""

    secret: str = Field(description="whsec_…: verify signatures with it; not shown again")


class DeliveryOut(BaseModel):
    """One event's delivery to one webhook and where it stands."""

    id: int
    webhook_id: int
    event_id: int
    event_type: str
    status: str = Field(description="pending, delivering, delivered or failed")
    attempts: int
    next_attempt_at: datetime | None = Field(description="the next retry (pending only)")
    last_status_code: int | None
    last_response: str | None = Field(description="a bounded prefix of the last response body")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
