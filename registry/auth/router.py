"""Access-control routes: tokens (admin) and whoami (any valid token). The audit log's route is
registry/api/audit.py: it reads registry.events, whose routes import registry.auth's scopes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request

from registry.api.deps import ActorDep, SessionDep, bearer_token, require
from registry.api.responses import error_responses
from registry.auth import service
from registry.auth.schemas import CreatedTokenOut, CreateTokenIn, TokenOut, WhoamiOut
from registry.auth.scopes import Scope
from registry.errors import Unauthenticated

router = APIRouter(prefix="/api/v1", tags=["access"])
TokenName = Annotated[str, Path(max_length=100, description="token name")]


@router.post("/tokens", response_model=CreatedTokenOut, status_code=201,
             dependencies=[require(Scope.ADMIN, adapter_param=None)],
             responses=error_responses(409, 413, 422, 503))
def create_token(body: CreateTokenIn, session: SessionDep, actor: ActorDep) -> CreatedTokenOut:
    """Create a token; the answer holds its secret, the only time the registry shows it."""
    expires = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    return service.create_token(session, name=body.name, scopes=[s.value for s in body.scopes],
                                namespaces=body.namespaces, expires_in=expires,
                                created_by=actor.name if actor else None)


@router.get("/tokens", response_model=list[TokenOut],
            dependencies=[require(Scope.ADMIN, adapter_param=None)],
            responses=error_responses(503))
def list_tokens(session: SessionDep) -> list[TokenOut]:
    """Every token (revoked and expired included), never a secret."""
    return service.list_tokens(session)


@router.post("/tokens/{name}/revoke", response_model=TokenOut,
             dependencies=[require(Scope.ADMIN, adapter_param=None)],
             responses=error_responses(404, 422, 503))
def revoke_token(name: TokenName, session: SessionDep, actor: ActorDep) -> TokenOut:
    """Revoke a token at once; revoking it again changes nothing."""
    return service.revoke_token(session, name=name, actor=actor.name if actor else None)


@router.get("/auth/whoami", response_model=WhoamiOut, dependencies=[require(None)],
            responses=error_responses(401, 503))
def whoami(request: Request, session: SessionDep, actor: ActorDep) -> WhoamiOut:
    """The token this request carries: its name, scopes, namespaces and expiry (any valid
    token may ask, whatever its scopes; 401 without one)."""
    if actor is None:
        secret = bearer_token(request)
        if secret is None:
            raise Unauthenticated("no token: send Authorization: Bearer arg_…")
        actor = service.authenticate(session, secret)
    return service.whoami_out(actor)
