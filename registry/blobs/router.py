"""Blob routes: HEAD (dedupe), PUT (streamed, verified), GET (streamed), and for large new
files a size query plus POST uploads the server names by their content."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi import Path as FPath
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from registry.api.deps import ContextDep, Digest, SessionDep, StoreDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.blobs import service
from registry.blobs.schemas import BlobSizeOut, BlobUploadOut, PinIn, PinOut
from registry.context import RegistryContext
from registry.errors import BlobNotFound, InvalidInput, RangeNotSatisfiable, StorageError
from registry.storage import BlobStore, parse_digest


class _DigestSegment(Convertor[str]):
    """A {digest} path segment: any one segment but the name of another blob route, so that
    PUT /api/v1/blobs/uploads is a 405 (Allow: POST) rather than a 422 for the digest
    "uploads". The digest itself is checked by the routes (422 invalid_digest)."""

    regex = r"(?!(?:uploads|pins)$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("blob_digest", _DigestSegment())

router = APIRouter(prefix="/api/v1/blobs", tags=["blobs"])

# Chunks from the socket are small (~256 KiB); handing them to the writer thread ~4 MiB at a
# time keeps thread hops cheap.
_WRITE_BATCH = 4 * 1024 * 1024


def _headers(digest: str, size: int) -> dict[str, str]:
    return {"Content-Length": str(size), "Docker-Content-Digest": digest}


# A HEAD answer has no body: its statuses are documented without one.
@router.head("/{digest:blob_digest}", response_class=Response,
             responses={200: {"description": "stored; Content-Length is its size"},
                        404: {"description": "not stored: upload it"},
                        422: {"description": "invalid digest"},
                        503: {"description": "the database is unavailable"}},
             dependencies=[require(Scope.READ)])
def head_blob(digest: Digest, session: SessionDep) -> Response:
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    return Response(status_code=200, headers=_headers(digest, blob.size))


# The largest size a BIGINT column holds; anything larger cannot be stored (422, not a DB error).
MAX_SIZE = 2**63 - 1

# One range of RFC 9110's byte-range syntax: "a-b", "a-" (to the end) or "-n" (the last n).
_RANGE = re.compile(r"^(\d*)-(\d*)$")
# A range up to this size is read at once (safetensors headers: the common case); a larger one
# is streamed in pieces of this size, so memory stays bounded whatever the range.
_RANGE_PIECE = 8 * 1024 * 1024


def _byte_range(range_header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte positions a Range header asks for, or None to send everything.

    RFC 9110 lets a server ignore a Range it does not support: other units and several ranges
    get the whole blob (200). A single byte range that is malformed or starts past the end is
    refused (416 with ``Content-Range: bytes */SIZE``).

    Raises:
        RangeNotSatisfiable: the range is malformed or outside the blob.
    """
    unit, _, spec = range_header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.match(spec.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(f"invalid byte range {range_header!r}", size=size)
    first, last = match.group(1), match.group(2)
    if first == "":  # a suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(f"blob has {size} bytes", size=size)
        return max(size - length, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if start > end or start >= size:
        raise RangeNotSatisfiable(f"blob has {size} bytes", size=size)
    return start, min(end, size - 1)


def _pieces(store: BlobStore, digest: str, start: int, end: int, first: bytes) -> Iterator[bytes]:
    yield first
    offset = start + len(first)
    while offset <= end:
        piece = store.read_range(digest, offset, min(_RANGE_PIECE, end - offset + 1))
        if not piece:  # the stored object is shorter than its row says: never spin on it
            raise StorageError(f"blob {digest} ends before byte {offset}")
        offset += len(piece)
        yield piece


@router.get("/{digest:blob_digest}", response_class=StreamingResponse,
            responses={200: {"description": "the whole blob",
                             "content": {"application/octet-stream": {}}},
                       206: {"description": "the requested byte range (Content-Range)",
                             "content": {"application/octet-stream": {}}},
                       **error_responses(404, 416, 422, 503)},
            dependencies=[require(Scope.READ)])
def get_blob(digest: Digest, session: SessionDep, store: StoreDep,
             range_header: Annotated[str | None, Header(alias="range")] = None) -> Response:
    """Stream a blob. ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` returns those bytes
    (206); another unit or several ranges return the whole blob (200)."""
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    wanted = None if range_header is None else _byte_range(range_header, blob.size)
    if wanted is not None:
        start, end = wanted
        headers = {"Content-Range": f"bytes {start}-{end}/{blob.size}",
                   "Content-Length": str(end - start + 1), "Accept-Ranges": "bytes",
                   "Docker-Content-Digest": digest}
        # The first piece is read before answering, so a store failure is still an error
        # response rather than a body cut short.
        first = store.read_range(digest, start, min(_RANGE_PIECE, end - start + 1))
        if start + len(first) > end:
            return Response(first, status_code=206, media_type="application/octet-stream",
                            headers=headers)
        return StreamingResponse(_pieces(store, digest, start, end, first), status_code=206,
                                 media_type="application/octet-stream", headers=headers)
    return StreamingResponse(
        store.iter_chunks(digest),
        media_type="application/octet-stream",
        headers={**_headers(digest, blob.size), "Accept-Ranges": "bytes"},
    )


# Uploads read the raw body as a stream (no FastAPI body parameter): declared here by hand.
# Not required: an empty body is an empty blob (an empty file is a file).
_STREAMED_BODY = {"requestBody": {"required": False, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise InvalidInput("invalid Content-Length")
    return int(declared)


PIN_HEADER = "registry-pin-seconds"


def _pin_seconds(request: Request) -> int | None:
    value = request.headers.get(PIN_HEADER)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise InvalidInput(f"invalid {PIN_HEADER}: a number of seconds")
    return int(value)


async def _receive(request: Request, ctx: RegistryContext, digest: str | None) -> tuple[str, int]:
    """Stream the request body into a new upload, then publish and record it (pinned from gc
    for ``Registry-Pin-Seconds``, when a push sends that header)."""
    pin_seconds = _pin_seconds(request)
    writer = await run_in_threadpool(
        service.start_upload, ctx.store, digest=digest, max_size=ctx.settings.max_file_bytes,
        declared_size=_declared_length(request),
    )

    def write_all(chunks: list[bytes]) -> None:
        for chunk in chunks:
            writer.write(chunk)

    # Double buffering: the event loop keeps receiving the next batch of chunks while a worker
    # thread hashes and writes the previous one; at most two batches are held at a time. The
    # chunks are handed over as they came (no concatenation: each copy costs as much as a hash).
    inflight: asyncio.Future[None] | None = None
    try:
        pending: list[bytes] = []
        pending_bytes = 0
        async for chunk in request.stream():
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _WRITE_BATCH:
                if inflight is not None:
                    await inflight
                inflight = asyncio.ensure_future(run_in_threadpool(write_all, pending))
                pending, pending_bytes = [], 0
        if inflight is not None:
            await inflight
            inflight = None
        if pending:
            await run_in_threadpool(write_all, pending)
        stored = await run_in_threadpool(
            lambda: service.finish_upload(ctx.sessions, writer, pin_seconds=pin_seconds))
        metrics = getattr(request.app.state, "metrics", None)  # the app's ApiMetrics
        if metrics is not None:
            metrics.observe_blob_bytes("in", stored[1])
        return stored
    except BaseException:
        if inflight is not None:
            await asyncio.gather(inflight, return_exceptions=True)
        await run_in_threadpool(writer.abort)
        raise


@router.put("/{digest:blob_digest}", status_code=201, response_class=Response,
            openapi_extra=_STREAMED_BODY,
            responses={201: {"description": "stored (Location, Docker-Content-Digest); no body"},
                       **error_responses(400, 413, 422, 503, 507)},
            dependencies=[require(Scope.PUSH)])
async def put_blob(digest: Digest, request: Request, ctx: ContextDep) -> Response:
    """Stream the body into the store; it becomes visible only if its sha256 equals ``digest``."""
    parse_digest(digest)
    await _receive(request, ctx, digest)
    return Response(
        status_code=201,
        headers={"Location": f"/api/v1/blobs/{digest}", "Docker-Content-Digest": digest},
    )


@router.get("/sizes/{size}", response_model=BlobSizeOut, responses=error_responses(422, 503),
            dependencies=[require(Scope.READ)])
def blob_size(size: Annotated[int, FPath(ge=0, le=MAX_SIZE)], session: SessionDep,
              store: StoreDep) -> BlobSizeOut:
    """Whether any stored blob has exactly ``size`` bytes, and whether this registry accepts
    uploads named by their content (``POST /api/v1/blobs/uploads``). A file whose size no blob
    has cannot be a duplicate, so a client may send it without hashing it first."""
    return BlobSizeOut(size=size, stored=service.size_stored(session, size=size),
                       upload_without_digest=store.digest_after_upload)


@router.post("/uploads", status_code=201, response_model=BlobUploadOut,
             openapi_extra=_STREAMED_BODY,
             responses=error_responses(413, 422, 503, 507),
             dependencies=[require(Scope.PUSH)])
async def upload_new_blob(request: Request, ctx: ContextDep) -> JSONResponse:
    """Stream a body whose digest the server computes (one hashing pass for the client, which
    hashes while sending and compares with the digest returned). Only where the blob store can
    name a blob after its upload (the local store); elsewhere 422 (S3's new_blob_writer refuses
    before a byte is read): PUT by digest instead."""
    digest, size = await _receive(request, ctx, None)
    return JSONResponse(
        BlobUploadOut(digest=digest, size=size).model_dump(),
        status_code=201,
        headers={"Location": f"/api/v1/blobs/{digest}", "Docker-Content-Digest": digest},
    )


@router.post("/pins", response_model=PinOut, responses=error_responses(413, 422, 503),
             dependencies=[require(Scope.PUSH)])
def pin_blobs(body: PinIn, session: SessionDep) -> PinOut:
    """Keep stored blobs from gc for ``seconds`` while a push uploads the rest and creates its
    version (gc at any grace period leaves them alone); answers which are not stored. A push
    then uploads those with the ``Registry-Pin-Seconds`` header, pinned too."""
    return PinOut(missing=service.pin_blobs(session, digests=body.digests, seconds=body.seconds))
