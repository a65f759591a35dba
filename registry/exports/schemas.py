"""Shapes of export records (`export --json`, the exports endpoints)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from registry.adapters.schemas import FileOut

DTYPES = ("float32", "float16", "bfloat16")

# Provenance values (see registry.db.models.Export): who recorded an export.
ANONYMOUS = "anonymous"
EMBEDDED = "embedded"
TOKEN_PREFIX = "token:"
JOB_PREFIX = "job:"


class ExportOut(BaseModel):
    name: str
    version: int
    base: str
    base_revision: str
    dtype: str
    total_size: int
    files: list[FileOut]
    created_at: datetime
    created_by: str | None = Field(
        description="the authenticated principal that recorded it; None when anonymous"
    )
    # The default is what a server from before provenance answers about: an unauthenticated
    # record, so a newer client reading it never takes it for its own.
    provenance: str = Field(
        default=ANONYMOUS,
        description="who recorded it, set by the registry: 'anonymous', 'token:NAME', "
                    "'embedded' (the embedded CLI) or 'job:ID' (a registry export job)",
    )


class CreateExportIn(BaseModel):
    """Body of ``POST /api/v1/exports``: merged files already uploaded as blobs.

    There is no ``created_by``: who recorded an export is the request's authenticated
    principal, never a value the client chooses (the field is refused, 422).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    version: int = Field(ge=1, le=2**31 - 1)
    base: str = Field(max_length=200)
    base_revision: str = Field(max_length=200)
    dtype: str = Field(pattern=r"^(float32|float16|bfloat16|mixed)$",
                       description="'mixed' when the base's own dtypes were kept and differ")
    files: dict[str, str]
