"""Shapes of export records (`export --json`, the exports endpoints)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from registry.adapters.schemas import FileOut

DTYPES = ("float32", "float16", "bfloat16")


class ExportOut(BaseModel):
    name: str
    version: int
    base: str
    base_revision: str
    dtype: str
    total_size: int
    files: list[FileOut]
    created_at: datetime
    created_by: str | None


class CreateExportIn(BaseModel):
    """Body of ``POST /api/v1/exports``: merged files already uploaded as blobs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    base: str
    base_revision: str = Field(max_length=200)
    dtype: str = Field(pattern=r"^(float32|float16|bfloat16|mixed)$",
                       description="'mixed' when the base's own dtypes were kept and differ")
    files: dict[str, str]
    created_by: str | None = Field(default=None, max_length=200)
