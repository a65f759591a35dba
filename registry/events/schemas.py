"""Shapes of events (`GET /api/v1/events`, `audit --json`, webhook bodies' data)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class EventOut(BaseModel):
    id: int
    type: str
    adapter: str | None
    version: int | None
    alias: str | None
    actor: str | None
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class EventPageOut(BaseModel):
    """One page of events after a cursor; pass ``next_after`` as ``after`` for the next page."""

    events: list[EventOut]
    next_after: int | None = Field(description="the last id of this page; null when empty")
