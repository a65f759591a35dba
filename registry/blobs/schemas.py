"""Blob API bodies beyond the OCI-style HEAD/PUT/GET (which carry no JSON)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from registry.storage.base import DIGEST_PATTERN


class BlobSizeOut(BaseModel):
    """``GET /api/v1/blobs/sizes/{size}``."""

    size: int
    stored: bool  # some blob has exactly this many bytes
    upload_without_digest: bool  # POST /api/v1/blobs/uploads is accepted


class BlobUploadOut(BaseModel):
    """``POST /api/v1/blobs/uploads``: the digest the server computed."""

    digest: str
    size: int


class PinIn(BaseModel):
    """``POST /api/v1/blobs/pins``: keep these blobs from gc while a push runs."""

    model_config = ConfigDict(extra="forbid")

    # The pattern is documented, not validated here: a bad digest gets invalid_digest.
    digests: list[Annotated[str, Field(json_schema_extra={"pattern": DIGEST_PATTERN})]] = Field(
        max_length=10_000)
    seconds: int = Field(ge=1, le=3600, description="how long gc leaves them alone")


class PinOut(BaseModel):
    """The digests that are not stored (upload them, pinned)."""

    missing: list[str]
