"""Request and response shapes for adapters and their versions (the `show --json` contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.compat.schemas import LinkedVerdictOut


class FileOut(BaseModel):
    path: str
    digest: str
    size: int


class VersionRefOut(BaseModel):
    name: str
    version: int


class ExportSummaryOut(BaseModel):
    """A merged checkpoint recorded for a version, as the version object lists it."""

    base: str
    base_revision: str
    dtype: str
    total_size: int


class ScoreOut(BaseModel):
    """One score: ``suite.metric`` of a version on a base."""

    suite: str
    metric: str
    value: float
    base: str | None
    base_revision: str | None = None
    suite_version: int | None = None
    n: int | None = None
    source: str
    job: int | None = None
    created_at: datetime
    created_by: str | None = None


class LastValidationOut(BaseModel):
    """The version's newest validation job, as the version object shows it."""

    job: int
    status: str = Field(description="the job's status: queued, running, succeeded, failed, "
                                    "cancelled")
    verdict: str | None = Field(description="'validated' or 'failed' once the checks ran")
    base: str | None
    base_revision: str | None
    reasons: list[str] = Field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    gpu_name: str | None = None
    timings: dict[str, float] | None = None
    base_cache_hit: bool | None = None
    attempts: int
    created_at: datetime
    finished_at: datetime | None = None


class VersionOut(BaseModel):
    """One adapter version: what `show --json` prints and the versions endpoints return."""

    name: str
    version: int
    ref: str
    status: str
    peft_type: str
    task_type: str | None
    r: int | None
    lora_alpha: float | None
    target_modules: list[str] | str | None
    base_model: str | None
    base_model_revision: str | None
    declared_base_model: str | None
    parent: VersionRefOut | None
    metadata: dict[str, str]
    git_commit: str | None
    ci_run_url: str | None
    idempotency_key: str | None
    content_digest: str
    total_size: int
    tensor_count: int
    created_at: datetime
    created_by: str | None
    files: list[FileOut]
    adapter_config: dict[str, Any]
    compatibility: LinkedVerdictOut | None = Field(
        default=None, description="static verdict against the linked base model"
    )
    exports: list[ExportSummaryOut] = Field(
        default_factory=list, description="merged checkpoints recorded for this version"
    )
    scores: list[ScoreOut] = Field(
        default_factory=list,
        description="the newest score of each suite.metric on each base (workers, CI, people)",
    )
    aliases: list[str] = Field(
        default_factory=list, description="the aliases pointing at this version, sorted"
    )
    validation: LastValidationOut | None = Field(
        default=None, description="the newest validation job (queued, running or finished)")


class LineageNodeOut(BaseModel):
    """One version in a lineage: who it is, whose child, and its merged exports."""

    name: str
    version: int
    ref: str
    status: str
    peft_type: str
    base_model: str | None
    parent: VersionRefOut | None
    depth: int = Field(description="steps from the version asked about (0: itself)")
    created_at: datetime
    exports: list[ExportSummaryOut] = Field(
        default_factory=list, description="merged checkpoints recorded for this version"
    )


class LineageOut(BaseModel):
    """Where a version comes from and what came of it (``lineage REF --json``)."""

    ref: str
    version: LineageNodeOut
    ancestors: list[LineageNodeOut] = Field(description="parent first, then its parent, ...")
    descendants: list[LineageNodeOut] = Field(
        description="children first, then grandchildren, ...; oldest first within a generation"
    )
    truncated: bool = Field(description="true when the lineage had more versions than listed")


class AdapterOut(BaseModel):
    name: str
    description: str | None
    task_type: str | None
    latest_version: int | None
    version_count: int
    created_at: datetime
    aliases: dict[str, int] = Field(default_factory=dict,
                                    description="alias -> the version it points at")


class CreateVersionIn(BaseModel):
    """Body of ``POST /api/v1/adapters/{name}/versions``: files already uploaded as blobs."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(description="path inside the adapter -> sha256 digest")
    base_model: str | None = None
    parent: str | None = Field(default=None, description="NAME:VERSION of the parent version")
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=200)
    git_commit: str | None = Field(default=None, max_length=64)
    ci_run_url: str | None = Field(default=None, max_length=1000)
    created_by: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
