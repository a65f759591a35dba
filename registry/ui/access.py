"""The web UI's one seam to access control: whether auth is on, who the browser's token names,
what a visitor may do, and the CSRF token every form carries.

The token entered at ``/ui/login`` lives in an HttpOnly, SameSite=Strict session cookie; each
request sends it on as the API's own ``Authorization: Bearer`` header, so the route's
``require(scope)`` decides exactly as it does for the API. When auth is off (the default, as
in the API) everyone may act.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session

from registry.auth.scopes import Principal, Scope
from registry.config import Settings
from registry.errors import RegistryError

TOKEN_COOKIE = "registry_ui_token"
CSRF_COOKIE = "registry_ui_csrf"
CSRF_FIELD = "csrf"
MAX_TOKEN = 500


def auth_required(settings: Settings) -> bool:
    """REGISTRY_AUTH=required (issue 13); absent or ``off``: everyone may act."""
    return str(getattr(settings, "auth", "off")).lower() == "required"


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal a token secret names, or None when it names none (unknown, expired,
    revoked or malformed)."""
    if not secret or len(secret) > MAX_TOKEN or not secret.isascii() or not secret.isprintable():
        return None
    # Function-local: registry.auth.service arrives with issue 13, and only auth-on needs it.
    from registry.auth import service as auth_service  # type: ignore[attr-defined]

    try:
        principal: Principal = auth_service.authenticate(session, secret)
    except RegistryError as exc:
        if exc.status_code in (401, 403):
            return None
        raise
    return principal


@dataclass(frozen=True)
class Visitor:
    """Who is looking at a page: the token's principal (None: no token), and whether auth is
    on at all."""

    principal: Principal | None
    auth_on: bool
    csrf: str

    def may(self, scope: Scope, adapter: str | None = None) -> bool:
        """Whether to show (and accept) an action needing ``scope`` on ``adapter``."""
        if not self.auth_on:
            return True
        p = self.principal
        return p is not None and p.has_scope(scope) and p.may_touch(adapter)

    @property
    def actor(self) -> str | None:
        return self.principal.name if self.principal is not None else None


def csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token and whether it is new (to be set as a cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """The form's token equals the browser's cookie (a SameSite=Strict cookie another site
    cannot send, so it cannot submit a matching form either)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def send_as_bearer(request: Request, secret: str) -> None:
    """Make the cookie's token the request's ``Authorization`` header (unless it has one), so
    the API's scope dependency sees the same credentials a CLI would send."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    if len(headers) != len(request.scope["headers"]):
        return
    request.scope["headers"] = [*headers, (b"authorization", f"Bearer {secret}".encode())]
    if hasattr(request, "_headers"):
        del request._headers  # Starlette caches the parsed headers on first access
