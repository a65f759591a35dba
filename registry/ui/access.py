"""The web UI's one seam to access control: whether auth is on, who the browser's token names,
what a visitor may do, and the CSRF token every form carries.

The token entered at ``/ui/login`` lives in an HttpOnly, SameSite=Strict session cookie; each
request's principal is the one that token names (``request.state.principal``, which the
route's ``require(scope)`` then decides on exactly as for an API bearer token). When auth is
off (the default, as in the API) everyone may act, and a valid token still names the actor.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session

from registry.auth import service as auth_service
from registry.auth.scopes import Principal, Scope
from registry.config import Settings
from registry.errors import Unauthenticated

TOKEN_COOKIE = "registry_ui_token"
CSRF_COOKIE = "registry_ui_csrf"
CSRF_FIELD = "csrf"
MAX_TOKEN = 500


def auth_required(settings: Settings) -> bool:
    """REGISTRY_AUTH=required; ``off``: everyone may act."""
    return settings.auth_required


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal a token secret names, or None when it names none (unknown, expired,
    revoked or malformed)."""
    if not secret or len(secret) > MAX_TOKEN:
        return None
    try:
        return auth_service.authenticate(session, secret)
    except Unauthenticated:
        return None


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
