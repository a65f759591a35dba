"""The FastAPI app factory: routers, error handlers, health, readiness and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import registry
from registry.adapters.router import push_route
from registry.adapters.router import router as adapters_router
from registry.admin.router import router as admin_router
from registry.api.audit import router as audit_router
from registry.api.deps import document_access, get_context, require
from registry.api.errors import install_error_handlers
from registry.auth.router import router as auth_router
from registry.base_models.router import compat_router
from registry.base_models.router import router as base_models_router
from registry.blobs.router import router as blobs_router
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import current_revision, session_scope
from registry.errors import RegistryError
from registry.evals.router import router as evals_router
from registry.evals.router import suites_router
from registry.events.dispatcher import Dispatcher
from registry.events.router import router as events_router
from registry.events.webhook_router import router as webhooks_router
from registry.exports.router import router as exports_router
from registry.jobs.queries import job_stats
from registry.jobs.router import router as jobs_router
from registry.lifecycle.router import policies_router
from registry.lifecycle.router import router as lifecycle_router
from registry.observability.logs import REQUEST_ID_HEADER, request_id
from registry.observability.metrics import CONTENT_TYPE_LATEST, ApiMetrics, JobStats
from registry.ui.router import router as ui_router
from registry.validation.router import router as validation_router
from registry.validation.service import handlers as job_handlers

log = logging.getLogger("registry.api")
access_log = logging.getLogger("registry.access")
# Open on purpose (probes and scrapers carry no token): require(None) records the decision.
health = APIRouter(tags=["health"], dependencies=[require(None)])
MAX_JSON_BODY = 8 * 1024 * 1024


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    # async: answered on the event loop, so liveness holds while every worker thread of the
    # threadpool waits on a database that does not answer (a sync route would queue for one).
    return {"status": "ok"}


def _check_database(ctx: RegistryContext) -> dict[str, str]:
    try:
        revision = current_revision(ctx.engine)
    except Exception as exc:  # readiness reports any failure instead of raising it
        log.warning("readiness: database check failed: %s: %s", type(exc).__name__, exc)
        return {"database": f"error: {type(exc).__name__}"}
    if revision != ctx.schema_head:
        # Reachable but without the tables this code uses (dropped, restored from an old dump,
        # not migrated yet): every call would fail, so the replica is not ready.
        return {"database": "ok", "schema": f"error: at revision {revision}, expected "
                f"{ctx.schema_head}; run `adapter-registry db upgrade`"}
    return {"database": "ok", "schema": "ok"}


def _check_store(ctx: RegistryContext) -> dict[str, str]:
    try:
        ctx.store.check()
    except RegistryError as exc:
        # The reason may name endpoints, buckets or paths: it goes to the log, not the probe.
        log.warning("readiness: blob store check failed: %s", exc.detail)
        return {"blob_store": f"error: {exc.code}"}
    except Exception as exc:  # readiness reports any failure instead of raising it
        log.warning("readiness: blob store check failed: %s: %s", type(exc).__name__, exc)
        return {"blob_store": f"error: {type(exc).__name__}"}
    return {"blob_store": "ok"}


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="database, schema, blob_store: ok or error: …")


@health.get("/readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "not ready: see checks"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers at the schema revision this code expects and the blob
    store is reachable; 503 otherwise, within the database's connect + pool timeouts."""
    ctx = get_context(request)
    state = request.app.state
    if getattr(state, "readiness_limiter", None) is None:
        # Its own threads: the probe must answer while the shared threadpool is exhausted.
        state.readiness_limiter = anyio.CapacityLimiter(4)
    settings = ctx.settings
    limit = settings.db_connect_timeout_seconds + settings.db_pool_timeout_seconds
    checks: dict[str, str] = {"database": f"error: no answer within {limit:g} s",
                              "blob_store": f"error: no answer within {limit:g} s"}

    async def run(check: Callable[[RegistryContext], dict[str, str]]) -> None:
        checks.update(await anyio.to_thread.run_sync(
            check, ctx, limiter=state.readiness_limiter, abandon_on_cancel=True))

    with anyio.move_on_after(limit):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, _check_database)
            tasks.start_soon(run, _check_store)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _job_stats(app: FastAPI) -> JobStats:
    """The queue as the metrics show it, read at scrape time (one short transaction)."""
    ctx: RegistryContext | None = app.state.registry
    if ctx is None:
        raise RuntimeError("the registry is not open yet")
    now = datetime.now(UTC)
    with session_scope(ctx.sessions) as session:
        counts, oldest = job_stats(session, now=now)
    queued = {kind: n for (kind, status), n in counts.items() if status == "queued"}
    return JobStats(counts=counts, queued=queued,
                    oldest_queued_age={k: max((now - t).total_seconds(), 0.0)
                                       for k, t in oldest.items()})


def _job_stats_failed(exc: Exception) -> None:
    log.warning("metrics: jobs table not readable: %s: %s", type(exc).__name__, exc)


# The one blob download route: its response bodies are counted as blob bytes out.
_BLOB_GET = "/api/v1/blobs/{digest}"


class BodyTooLarge(StarletteHTTPException):
    """A JSON request body passed MAX_JSON_BODY while it was being read.

    An HTTPException so that FastAPI's body parsing re-raises it as it is (it turns any other
    error raised while reading into a 400) and the error handlers render it as a 413.
    """

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_JSON_BODY} bytes")


def _streams_a_blob(scope: Scope) -> bool:
    """A blob upload (PUT /api/v1/blobs/{digest}, POST /api/v1/blobs/uploads): the only bodies
    streamed to the store instead of parsed in memory (JSON blob routes such as /pins are
    limited like every other)."""
    path, method = scope["path"], scope["method"]
    if not path.startswith("/api/v1/blobs/"):
        return False
    return method == "PUT" or (method == "POST" and path == "/api/v1/blobs/uploads")


class RequestMiddleware:
    """Per request: an id, JSON bodies held to MAX_JSON_BODY, metrics, and one log line.

    The request id is the client's ``X-Request-ID`` when it is safe to echo
    (`registry.observability.logs.request_id`), a new one otherwise; every response carries it
    back (errors too: the 500 handler reads it from the request's state) and so does the
    request's log line (``registry.access``: method, route template, path, status, duration).

    The limit is checked on the declared ``Content-Length`` up front and on the bytes actually
    received (a chunked body declares none): reading stops at the first chunk past the limit,
    so a request holds at most the limit plus one chunk whatever the client sends; uvicorn
    discards the rest of the body as it arrives once the 413 has been sent.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware passes every request and response chunk through extra tasks and memory
    streams: measured, that alone cost a quarter of the upload throughput and half of the
    download throughput through httpx.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        rid = request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = False
        blob_out: int | None = None  # bytes sent, counted for blob downloads only

        async def send_tagged(message: Message) -> None:
            nonlocal status, started, blob_out
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
                if scope["method"] == "GET" and _route_template(scope) == _BLOB_GET:
                    blob_out = 0
            elif blob_out is not None and message["type"] == "http.response.body":
                blob_out += len(message.get("body", b""))
            await send(message)

        # Blob uploads stream into the store with their own limit (max_file_bytes) and their
        # receive is left as it is (a wrapper per chunk costs upload throughput); every other
        # body is parsed in memory.
        limited = not _streams_a_blob(scope)
        declared = headers.get("content-length")
        try:
            if limited and declared is not None and (
                not declared.isdigit() or int(declared) > MAX_JSON_BODY
            ):
                await self._too_large(scope, receive, send_tagged)
                return

            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_JSON_BODY:
                        raise BodyTooLarge()
                return message

            try:
                await self.app(scope, receive_limited if limited else receive, send_tagged)
            except BodyTooLarge:
                # Normally rendered by the error handlers; this catches a read outside a route
                # (or one whose error was wrapped), so the client still gets the 413.
                if started:
                    raise
                await self._too_large(scope, receive, send_tagged)
        finally:
            self._observe(scope, status, start, rid, blob_out)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": "too_large", "detail": f"request body over {MAX_JSON_BODY} bytes"},
            status_code=413,
        )
        await response(scope, receive, send)

    def _observe(self, scope: Scope, status: int, start: float, rid: str,
                 blob_out: int | None) -> None:
        seconds = time.perf_counter() - start
        route = _route_template(scope)
        method = scope["method"]
        self.metrics.observe_request(route=route, method=method, status=status,
                                     seconds=seconds)
        if blob_out:
            self.metrics.observe_blob_bytes("out", blob_out)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %d %.1f ms", method, route, status, seconds * 1000,
                extra={"fields": {"event": "request", "request_id": rid, "method": method,
                                  "route": route, "path": scope["path"], "status": status,
                                  "duration_ms": round(seconds * 1000, 3)}})


def _route_template(scope: Scope) -> str:
    # The route's template as OpenAPI spells it ("/api/v1/blobs/{digest}"), without path
    # convertors ("{digest:blob_digest}", "{name:path}"): a bounded label, unlike the path.
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else "unmatched"


def create_app(
    settings: Settings | None = None, *, context: RegistryContext | None = None,
    hot_routes: bool = True,
) -> FastAPI:
    """Build the API.

    Args:
        settings: configuration (defaults to the environment); ignored when ``context`` is given.
        context: an already opened registry (tests and the embedded server share one).
        hot_routes: serve the push through its plain Starlette route
            (``registry.adapters.router.push_route``); False leaves it to the FastAPI route it
            shadows, so a test can compare the two.

    Returns:
        The app; the registry context opens on startup and closes on shutdown.
    """
    owned = context is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.registry is None:
            app.state.registry = await run_in_threadpool(
                RegistryContext.open, settings or Settings()
            )
        # Webhook deliveries are sent from the server process (every replica; claims are safe).
        dispatcher = Dispatcher(app.state.registry.sessions, app.state.registry.settings)
        dispatcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(dispatcher.stop)
            if owned and app.state.registry is not None:
                app.state.registry.close()
                app.state.registry = None

    app = FastAPI(
        title="adapter-registry",
        version=registry.__version__,
        description="Registry for LLM fine-tuning adapters (LoRA and other PEFT methods).",
        lifespan=lifespan,
    )
    app.state.registry = context
    app.state.job_handlers = job_handlers()
    metrics = ApiMetrics()
    metrics.watch_jobs(lambda: _job_stats(app), _job_stats_failed)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health)
    # The hot routes first: FastAPI tries the included routers in order, route by route (a
    # push used to be tried against ~50 routes before its own). Resolve and push lead;
    # their paths end in suffixes no router before them had (aliases, history, archive,
    # policies; versions, versions/{version}[/tensors|lineage|compat]), so no request
    # matches another route than before; lifecycle stays before adapters.
    app.include_router(lifecycle_router)
    app.include_router(adapters_router)
    app.include_router(blobs_router)
    app.include_router(compat_router)
    app.include_router(exports_router)
    app.include_router(evals_router)
    app.include_router(suites_router)
    app.include_router(validation_router)
    app.include_router(jobs_router)
    app.include_router(events_router)
    app.include_router(webhooks_router)
    app.include_router(policies_router)
    app.include_router(base_models_router)
    app.include_router(admin_router)
    app.include_router(auth_router)
    app.include_router(audit_router)
    app.include_router(ui_router)  # the web UI under /ui (HTML; not in the OpenAPI schema)

    @app.get("/metrics", tags=["health"], include_in_schema=False,
             dependencies=[require(None)])
    def prometheus_metrics() -> Response:
        # A sync route: the queue families query the database on a threadpool thread.
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    if hot_routes:
        # First of all: FastAPI's POST route at the same path stays, for the schema only.
        app.router.routes.insert(0, push_route)
    app.add_middleware(RequestMiddleware, metrics=metrics)
    document_access(app.routes)

    return app
