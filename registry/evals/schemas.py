"""Shapes of eval requests (`eval record`, `suite add/attach`); a score itself is part of the
version object (registry.adapters.schemas.ScoreOut)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

from registry.db.enums import SuiteKind
from registry.evals.metrics import METRIC_RE, SUITE_RE
from registry.refs import NAME_PATTERN


class RecordScoresIn(BaseModel):
    """Body of ``POST /api/v1/adapters/{name}/versions/{version}/evals``: scores computed
    elsewhere (a CI job's own eval). A suite that was never added is accepted (record-only)."""

    model_config = ConfigDict(extra="forbid")

    # Patterns are documented, not validated here: the registry's own checks name the problem.
    suite: str = Field(max_length=100, json_schema_extra={"pattern": SUITE_RE.pattern})
    scores: dict[Annotated[str, Field(json_schema_extra={"pattern": METRIC_RE.pattern})],
                 Annotated[float, Strict()]] = Field(
        description="metric -> value: a finite JSON number",
        json_schema_extra={"minProperties": 1, "additionalProperties": False})
    base: str | None = Field(default=None, max_length=200,
                             description="default: the version's linked base model",
                             json_schema_extra={"pattern": NAME_PATTERN})
    n: int | None = Field(default=None, ge=0, le=2**31 - 1,
                          description="items the scores were computed on")
    created_by: str | None = Field(default=None, max_length=200)


class CreateSuiteIn(BaseModel):
    """Body of ``POST /api/v1/suites``: the suite's files, already uploaded as blobs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, json_schema_extra={"pattern": SUITE_RE.pattern})
    kind: str = Field(max_length=32, description="perplexity, generate, classify or lm-eval",
                      json_schema_extra={"enum": [k.value for k in SuiteKind]})
    files: dict[str, str] = Field(description="path -> sha256 digest")
    options: dict[str, int | str] = Field(default_factory=dict)
    created_by: str | None = Field(default=None, max_length=200)


class SuiteFileOut(BaseModel):
    path: str
    digest: str
    size: int


class SuiteOut(BaseModel):
    """One version of an eval suite (``suite add --json`` prints at least name, version, kind)."""

    name: str
    version: int
    kind: str
    options: dict[str, int]
    item_count: int
    content_digest: str
    files: list[SuiteFileOut]
    created_at: datetime
    created_by: str | None = None


class AttachSuiteIn(BaseModel):
    """Body of ``POST /api/v1/suites/{name}/attachments``."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(max_length=200)
    created_by: str | None = Field(default=None, max_length=200)


class AttachmentOut(BaseModel):
    """Suite ``suite`` (its latest version) runs on every validation of ``adapter``."""

    suite: str
    adapter: str
    kind: str
    version: int = Field(description="the suite's latest version (the one validations run)")
    created: bool = Field(description="false when it was attached already")
