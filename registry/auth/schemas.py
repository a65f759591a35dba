"""Shapes of API tokens (`token create|list|revoke --json`, `GET /api/v1/auth/whoami`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from registry.auth.names import TOKEN_NAME_PATTERN
from registry.auth.scopes import Scope

# Ten years: enough for any deliberate expiry, small enough for the timestamp arithmetic.
MAX_EXPIRES_SECONDS = 10 * 365 * 24 * 3600


class CreateTokenIn(BaseModel):
    """Body of ``POST /api/v1/tokens``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, description="lowercase letters, digits, '.', '_', '-'",
                      json_schema_extra={"pattern": TOKEN_NAME_PATTERN})
    scopes: list[Scope] = Field(min_length=1, max_length=5)
    namespaces: list[Annotated[str, Field(max_length=100, json_schema_extra={
        "pattern": TOKEN_NAME_PATTERN})]] = Field(default_factory=list, max_length=100,
                                  description="empty: every adapter; else only NS/* adapters")
    expires_in_seconds: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_SECONDS,
                                           description="null: never expires")


class TokenOut(BaseModel):
    """A token as ``token list`` shows it: never its secret."""

    name: str
    scopes: list[str]
    namespaces: list[str]
    expires_at: datetime | None
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    status: str = Field(description="active, expired or revoked")


class CreatedTokenOut(BaseModel):
    """What ``token create --json`` prints: the secret, this once."""

    name: str
    token: str = Field(description="the secret (arg_…): shown once, stored only as a hash")
    scopes: list[str]
    namespaces: list[str]
    expires_at: datetime | None


class WhoamiOut(BaseModel):
    """The token a request authenticated with (``GET /api/v1/auth/whoami``)."""

    name: str
    scopes: list[str]
    namespaces: list[str]
    expires_at: datetime | None
