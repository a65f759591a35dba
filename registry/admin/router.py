"""Admin routes: garbage collection of unreferenced blobs."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from starlette.concurrency import run_in_threadpool

from registry.api.deps import ContextDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.blobs.service import collect_garbage

router = APIRouter(prefix="/api/v1/admin", tags=["admin"],
                   dependencies=[require(Scope.ADMIN, adapter_param=None)])
MAX_GRACE_SECONDS = 100 * 365 * 24 * 3600


class GcIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounded: a larger grace overflows the timestamp arithmetic (it was a 500).
    grace_seconds: int | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS,
                                      description="default: server setting")
    # Strict: the schema says boolean, so 0 or "yes" is refused rather than guessed at.
    dry_run: StrictBool = False

    @field_validator("grace_seconds", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # JSON Schema's integer takes 60.0 (as pydantic does) but neither false nor "60".
        if isinstance(value, bool | str):
            raise ValueError("must be an integer")
        return value


@router.post("/gc", responses=error_responses(413, 422, 503))
async def gc(body: GcIn, ctx: ContextDep) -> dict[str, object]:
    grace = ctx.settings.gc_grace_seconds if body.grace_seconds is None else body.grace_seconds
    report = await run_in_threadpool(
        collect_garbage, ctx.sessions, ctx.store, grace_seconds=grace, dry_run=body.dry_run
    )
    return report.to_json()
