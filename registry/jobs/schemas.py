"""Shapes of jobs (`jobs list/show --json`, the /api/v1/jobs routes and the worker endpoints)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from registry.db.enums import JobKind

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


class JobOut(BaseModel):
    """One job: what `jobs show --json` prints (`jobs list --json` prints a list of these)."""

    id: int
    kind: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    name: str | None = Field(description="the adapter, for a job about a version")
    version: int | None
    ref: str | None
    base: str | None
    base_revision: str | None
    payload: dict[str, Any] = Field(default_factory=dict)
    verdict: str | None = Field(
        default=None, description="validate jobs: 'validated' or 'failed' once the checks ran; "
                                  "null while running or when the job failed before a verdict")
    reasons: list[str] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    timings: dict[str, float] | None = Field(
        default=None, description="fetch_s, base_load_s, attach_s, eval_s, detach_s")
    base_cache_hit: bool | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    run_after: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_by: str | None = None


class ClaimIn(BaseModel):
    """Body of ``POST /api/v1/jobs/claim``."""

    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=200, description="the worker's unique id")
    kinds: list[Annotated[str, Field(json_schema_extra={"enum": [k.value for k in JobKind]})]] = (
        Field(default_factory=lambda: ["validate"], min_length=1, max_length=10))


class ClaimedJobOut(BaseModel):
    """A claimed job: the lease to renew and what the worker needs to run it (``spec``)."""

    job: JobOut
    attempt: int = Field(description="fences every report: send it back with each call")
    worker: str
    lease_seconds: int
    lease_expires_at: datetime
    spec: dict[str, Any] = Field(description="kind-specific (validate: ValidationSpec)")


class LeaseIn(BaseModel):
    """Who is reporting: the worker and the attempt it was handed at claim time."""

    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=200)
    attempt: int = Field(ge=1, le=2**31 - 1)


class LeaseOut(BaseModel):
    id: int
    status: str
    attempt: int
    lease_expires_at: datetime | None


class CompleteJobIn(LeaseIn):
    """The worker ran the job to its end: its report (kind-specific; validate: a
    ValidationReport)."""

    report: dict[str, Any]


class FailJobIn(LeaseIn):
    """The worker could not run the job (its base cannot be fetched, the device ran out of
    memory, ...): the job fails with ``error`` and no verdict."""

    error: str = Field(min_length=1, max_length=10_000)
    result: dict[str, Any] | None = None
