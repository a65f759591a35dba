"""The error body every route answers with, and the error responses routes declare in OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: str = Field(description="stable error code, e.g. version_not_found")
    detail: str = Field(description="one line for a person")


_MEANING = {
    400: "the request is malformed (e.g. digest_mismatch: the body does not hash to the digest)",
    401: "unauthenticated: no token, or an invalid, expired or revoked one",
    403: "permission_denied: the token lacks the scope or namespace this needs",
    404: "something named does not exist",
    409: "the request conflicts with what is stored",
    413: "too_large: a body, file or range over its limit",
    416: "range_not_satisfiable: the range lies outside the blob (Content-Range: bytes */SIZE)",
    422: "invalid input",
    503: "the database or blob store is unavailable, or the schema is out of date; retry later",
    507: "insufficient_storage: the blob store is full; nothing was stored",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error statuses, each with the ``ErrorOut`` body.

    Every route may also answer 422 (its parameters) and 503 (the database); pass those too.
    """
    return {status: {"model": ErrorOut, "description": _MEANING[status]} for status in statuses}
