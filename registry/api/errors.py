"""Error handlers: every error becomes {"error": CODE, "detail": MESSAGE} with its status."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.db.faults import translate as translate_db_error
from registry.errors import RegistryError, StorageError

log = logging.getLogger("registry.api")

_STORAGE_DOWN = "the blob store is unavailable; try again later"

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _error(status: int, code: str, detail: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def _registry_error(req: Request, exc: RegistryError) -> JSONResponse:
        if exc.status_code == 503 and isinstance(exc, StorageError):
            # A store's reason can name its endpoint, bucket, paths or an upload id: it goes
            # to the log; the client learns only that the store failed and to retry.
            log.error("blob store error on %s %s: %s (%r)", req.method, req.url.path,
                      exc.detail, exc.__cause__)
            return _error(503, exc.code, _STORAGE_DOWN, exc.headers)
        return _error(exc.status_code, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_input", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's JSON parsing answers 400 for bytes that are not UTF-8 and 422 for any
            # other malformed JSON: both are one kind of bad input here.
            return _error(422, "invalid_input", "the request body is not valid JSON (UTF-8)")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(req)
        return _error(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(req: Request, exc: SQLAlchemyError) -> JSONResponse:
        mapped = translate_db_error(exc)
        if mapped is None:
            return _internal_error(req, exc)
        # The reason (host, port, SQL) stays in the server log; the client learns what to do.
        log.error("database error on %s %s: %s: %s", req.method, req.url.path,
                  type(exc).__name__, getattr(exc, "orig", None) or exc)
        return _error(mapped.status_code, mapped.code, mapped.detail)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        return _internal_error(req, exc)


def _allowed_methods(req: Request) -> str:
    """Every method some route serves at this path (RFC 9110: a 405 carries Allow).

    Starlette answers 405 from the first route whose path matched and lists that route's
    methods only; a path served by several routes (GET and POST on .../versions) needs all.
    """
    path = req.scope["path"]
    methods: set[str] = set()
    for regex, route_methods in _routes(req.app.router.routes):
        if regex.match(path):
            methods |= route_methods
    return ", ".join(sorted(methods))


def _routes(routes: Iterable[Any]) -> Iterator[tuple[re.Pattern[str], set[str]]]:
    for route in routes:
        # Recent FastAPI wraps each included router; the app includes them without a prefix,
        # so their routes' patterns are the full paths.
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from _routes(nested.routes)
            continue
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods:
            yield regex, set(methods)


def _internal_error(req: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: log it whole, tell the client only that it happened.
    rid = getattr(req.state, "request_id", None)
    log.error("unhandled error on %s %s (request id %s)", req.method, req.url.path, rid,
              exc_info=exc)
    # Sent by Starlette's outermost middleware, past the one that tags responses with the id.
    return _error(500, "internal_error", "internal error; see the server log",
                  headers={"X-Request-ID": rid} if rid else None)
