"""Shapes of validation: the request (`validate`), the spec a worker runs, the report it sends.

Importable without SQLAlchemy or torch: the worker (client side) builds and reads these.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.adapters.schemas import FileOut
from registry.base_models.schemas import BaseModelOut
from registry.evals.metrics import SUITE_RE
from registry.evals.schemas import SuiteFileOut
from registry.refs import NAME_PATTERN

SMOKE = "smoke"
VERDICTS = ("validated", "failed")
TIMINGS = ("fetch_s", "base_load_s", "attach_s", "eval_s", "detach_s")


class ValidateIn(BaseModel):
    """Body of ``POST /api/v1/adapters/{name}/versions/{version}/validate``."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = Field(default=None, max_length=200,
                             description="default: the version's linked base model",
                             json_schema_extra={"pattern": NAME_PATTERN})
    base_revision: str | None = Field(default=None, max_length=200,
                                      json_schema_extra={"pattern": r"^[\x21-\x7e]+$"})
    suites: list[Annotated[str, Field(json_schema_extra={"pattern": SUITE_RE.pattern})]] = Field(
        default_factory=list, max_length=50,
        description="suites to run besides smoke and the attached ones")
    priority: int = Field(default=0, ge=-1000, le=1000)
    created_by: str | None = Field(default=None, max_length=200)


class SuiteSpec(BaseModel):
    """One suite a validation runs (its version at claim time)."""

    name: str
    version: int
    kind: str
    options: dict[str, int] = Field(default_factory=dict)
    item_count: int
    files: list[SuiteFileOut]


class SkippedSuite(BaseModel):
    name: str
    reason: str


class KnownScore(BaseModel):
    """A score already recorded (the base's own perplexity on a suite: computed once per base)."""

    suite: str
    suite_version: int | None
    metric: str
    value: float


class ValidationSpec(BaseModel):
    """What a worker needs to validate a version on a base (the ``spec`` of a claimed job)."""

    job: int
    name: str
    version: int
    ref: str
    peft_type: str
    task_type: str | None
    adapter_config: dict[str, Any]
    adapter_files: list[FileOut]
    base: BaseModelOut
    suites: list[SuiteSpec] = Field(default_factory=list)
    skipped_suites: list[SkippedSuite] = Field(default_factory=list)
    base_scores: list[KnownScore] = Field(default_factory=list)


class Finding(BaseModel):
    """Why a validation failed: a stable code and one line."""

    code: str = Field(max_length=64)
    message: str = Field(max_length=10_000)


class LoadReport(BaseModel):
    """What attaching the adapter showed: every tensor of its files applied, or which not."""

    loaded: bool
    file_tensors: int = Field(ge=0)
    applied_tensors: int = Field(ge=0)
    dropped: list[str] = Field(default_factory=list, description="in the files, never applied")
    missing: list[str] = Field(default_factory=list,
                               description="adapter parameters the files do not hold")
    error: str | None = None


class ReportScore(BaseModel):
    suite: str = Field(max_length=100)
    suite_version: int | None = None
    metric: str = Field(max_length=100)
    value: float
    n: int | None = Field(default=None, ge=0)


class SuiteRun(BaseModel):
    """How one suite went (its scores are in ``scores``)."""

    name: str
    version: int | None = None
    kind: str
    n: int = 0
    seconds: float = 0.0
    error: str | None = None


class ValidationReport(BaseModel):
    """What a worker found (the ``report`` of ``POST /api/v1/jobs/{id}/complete``)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["validated", "failed"]
    reasons: list[Finding] = Field(default_factory=list)
    load: LoadReport
    scores: list[ReportScore] = Field(default_factory=list, max_length=2000)
    base_scores: list[ReportScore] = Field(default_factory=list, max_length=200)
    suites: list[SuiteRun] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    base_cache_hit: bool = False
    device: str
    dtype: str
    gpu_name: str | None = None
    peak_memory_bytes: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    worker: str | None = None
