"""Error handlers: every error becomes {"error": CODE, "detail": MESSAGE} with its status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.db.faults import translate as translate_db_error
from registry.errors import RegistryError

log = logging.getLogger("registry.api")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _error(status: int, code: str, detail: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def _registry_error(_req: Request, exc: RegistryError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_input", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

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


def _internal_error(req: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: log it whole, tell the client only that it happened.
    log.error("unhandled error on %s %s", req.method, req.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error; see the server log")
