"""Request and response shapes for base models (the `base show --json` contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BaseFileOut(BaseModel):
    path: str
    size: int
    digest: str | None = None
    etag: str | None = None


class BaseModelOut(BaseModel):
    name: str
    revision: str
    source: str
    source_kind: str
    architectures: list[str]
    model_type: str | None
    hidden_size: int | None
    vocab_size: int | None
    num_hidden_layers: int | None
    tie_word_embeddings: bool | None
    fingerprint: str
    tensor_count: int
    total_size: int
    created_at: datetime
    created_by: str | None
    files: list[BaseFileOut]
    config: dict[str, Any]


class RegisterBaseIn(BaseModel):
    """Body of ``POST /api/v1/base-models``.

    A local directory is uploaded as blobs first and named by ``files``; ``hf://`` and ``s3://``
    sources are resolved and read by the server.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(max_length=1000)
    revision: str | None = Field(default=None, max_length=200, pattern=r"^[\x21-\x7e]+$")
    files: dict[str, str] | None = Field(
        default=None, description="path -> sha256 digest, for an uploaded local directory"
    )
    created_by: str | None = Field(default=None, max_length=200)
