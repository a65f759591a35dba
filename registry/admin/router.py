"""Admin routes: garbage collection of unreferenced blobs."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from registry.api.deps import ContextDep
from registry.blobs.service import collect_garbage

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class GcIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(default=None, ge=0, description="default: server setting")
    dry_run: bool = False


@router.post("/gc")
async def gc(body: GcIn, ctx: ContextDep) -> dict[str, object]:
    grace = ctx.settings.gc_grace_seconds if body.grace_seconds is None else body.grace_seconds
    report = await run_in_threadpool(
        collect_garbage, ctx.sessions, ctx.store, grace_seconds=grace, dry_run=body.dry_run
    )
    return report.to_json()
