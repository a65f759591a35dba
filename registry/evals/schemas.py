"""Shapes of eval requests (`eval record`); a score itself is part of the version object
(registry.adapters.schemas.ScoreOut)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RecordScoresIn(BaseModel):
    """Body of ``POST /api/v1/adapters/{name}/versions/{version}/evals``: scores computed
    elsewhere (a CI job's own eval). A suite that was never added is accepted (record-only)."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field(max_length=100)
    scores: dict[str, float | int | str] = Field(description="metric -> value (finite)")
    base: str | None = Field(default=None, max_length=200,
                             description="default: the version's linked base model")
    n: int | None = Field(default=None, ge=0, description="items the scores were computed on")
    created_by: str | None = Field(default=None, max_length=200)
