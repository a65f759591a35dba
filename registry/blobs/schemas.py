"""Blob API bodies beyond the OCI-style HEAD/PUT/GET (which carry no JSON)."""

from __future__ import annotations

from pydantic import BaseModel


class BlobSizeOut(BaseModel):
    """``GET /api/v1/blobs/sizes/{size}``."""

    size: int
    stored: bool  # some blob has exactly this many bytes
    upload_without_digest: bool  # POST /api/v1/blobs/uploads is accepted


class BlobUploadOut(BaseModel):
    """``POST /api/v1/blobs/uploads``: the digest the server computed."""

    digest: str
    size: int
