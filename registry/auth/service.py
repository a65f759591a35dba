"""API tokens: create (the secret shown once, its hash kept), list, revoke, authenticate."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import errors
from registry.auth.names import validate_namespace, validate_token_name
from registry.auth.schemas import CreatedTokenOut, TokenOut, WhoamiOut
from registry.auth.scopes import Principal, Scope
from registry.db.base import utcnow
from registry.db.models import ApiToken, Event

# Recognisable by secret scanners (GitHub's, trufflehog's custom rules): arg_ + 43 characters
# of base64url (32 random bytes).
TOKEN_PREFIX = "arg_"
# Audit-log event types (never delivered to webhooks: registry.events.types.DELIVERABLE).
TOKEN_CREATED = "token.created"
TOKEN_REVOKED = "token.revoked"
_SECRET_RE = re.compile(r"^arg_[A-Za-z0-9_-]{43}$")


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a secret. A fast hash is enough for 256 random bits (no dictionary to
    try); a password would need a slow one."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _status(token: ApiToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def to_out(token: ApiToken, *, now: datetime | None = None) -> TokenOut:
    return TokenOut(name=token.name, scopes=list(token.scopes), namespaces=list(token.namespaces),
                    expires_at=token.expires_at, created_at=token.created_at,
                    created_by=token.created_by, revoked_at=token.revoked_at,
                    status=_status(token, now or utcnow()))


def whoami_out(principal: Principal) -> WhoamiOut:
    return WhoamiOut(name=principal.name, scopes=sorted(principal.scopes),
                     namespaces=sorted(principal.namespaces), expires_at=principal.expires_at)


def _record(session: Session, *, type: str, actor: str | None, payload: dict[str, Any]) -> None:
    # The events row written here rather than through registry.events.service: the events
    # package's routes import registry.auth (their scopes), so importing it back is a cycle.
    session.add(Event(type=type, actor=actor, payload=payload, created_at=utcnow()))
    session.flush()


def create_token(session: Session, *, name: str, scopes: Sequence[str],
                 namespaces: Sequence[str] = (), expires_in: timedelta | None = None,
                 created_by: str | None = None,
                 now: datetime | None = None) -> CreatedTokenOut:
    """Create a token and return its secret (the only time it exists outside the caller).

    Args:
        name: unique, never reused (a revoked token keeps its name).
        scopes: at least one of registry.auth.scopes.Scope.
        namespaces: limit the token to ``NS/*`` adapters; empty: every adapter.
        expires_in: lifetime from now; None: never expires.
        created_by: the principal creating it (None on the embedded CLI).

    Raises:
        InvalidInput: a bad name, scope, namespace or lifetime.
        TokenExists: the name is taken.
    """
    validate_token_name(name)
    if not scopes:
        raise errors.InvalidInput("a token needs at least one scope: "
                                  + ", ".join(s.value for s in Scope))
    valid = {s.value for s in Scope}
    for scope in scopes:
        if scope not in valid:
            raise errors.InvalidInput(f"unknown scope {scope!r}: use one of {', '.join(valid)}")
    for namespace in namespaces:
        validate_namespace(namespace)
    if expires_in is not None and expires_in.total_seconds() <= 0:
        raise errors.InvalidInput("a token's lifetime must be positive")
    now = now or utcnow()
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise errors.TokenExists(f"a token named {name!r} exists; pick another name")
    secret = new_secret()
    token = ApiToken(name=name, secret_sha256=hash_secret(secret),
                     scopes=sorted(set(scopes)), namespaces=sorted(set(namespaces)),
                     expires_at=now + expires_in if expires_in is not None else None,
                     created_at=now, created_by=created_by)
    try:
        with session.begin_nested():
            session.add(token)
            session.flush()
    except IntegrityError:  # a concurrent create of the same name won
        raise errors.TokenExists(f"a token named {name!r} exists; pick another name") from None
    _record(session, type=TOKEN_CREATED, actor=created_by,
            payload={"token": name, "scopes": token.scopes,
                           "namespaces": token.namespaces,
                           "expires_at": token.expires_at.isoformat()
                           if token.expires_at else None})
    return CreatedTokenOut(name=name, token=secret, scopes=token.scopes,
                           namespaces=token.namespaces, expires_at=token.expires_at)


def list_tokens(session: Session, *, now: datetime | None = None) -> list[TokenOut]:
    """Every token, oldest first (revoked and expired ones included), without secrets."""
    now = now or utcnow()
    return [to_out(t, now=now)
            for t in session.scalars(select(ApiToken).order_by(ApiToken.id)).all()]


def revoke_token(session: Session, *, name: str, actor: str | None = None,
                 now: datetime | None = None) -> TokenOut:
    """Revoke a token at once (idempotent: revoking a revoked token changes nothing).

    Raises:
        TokenNotFound: no token has this name.
    """
    now = now or utcnow()
    token = session.scalar(select(ApiToken).where(ApiToken.name == name).with_for_update())
    if token is None:
        raise errors.TokenNotFound(f"no token named {name[:100]!r}")
    if token.revoked_at is None:
        token.revoked_at = now
        _record(session, type=TOKEN_REVOKED, actor=actor, payload={"token": name})
    return to_out(token, now=now)


def authenticate(session: Session, secret: str, *, now: datetime | None = None) -> Principal:
    """The principal a token secret stands for.

    Args:
        secret: the token as the client sent it (``arg_…``).
        now: the time to check expiry against (default: now).

    Returns:
        The token's name, scopes, namespaces and expiry.

    Raises:
        Unauthenticated: unknown, malformed, expired or revoked (the reason is named; a wrong
            secret never says which token it resembled).
    """
    if not isinstance(secret, str) or not _SECRET_RE.match(secret):
        raise errors.Unauthenticated("invalid token: expected arg_ followed by 43 characters")
    digest = hash_secret(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.secret_sha256 == digest))
    # The lookup is by hash; the comparison again in constant time, so no code path depends
    # on how many leading characters of a guess matched.
    if token is None or not hmac.compare_digest(token.secret_sha256, digest):
        raise errors.Unauthenticated("invalid token")
    now = now or utcnow()
    if token.revoked_at is not None:
        raise errors.Unauthenticated(f"token {token.name!r} was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise errors.Unauthenticated(f"token {token.name!r} expired at "
                                     f"{token.expires_at.isoformat(timespec='seconds')}")
    return Principal(name=token.name, scopes=frozenset(token.scopes),
                     namespaces=frozenset(token.namespaces), expires_at=token.expires_at)
