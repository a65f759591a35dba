"""Blob routes: HEAD (dedupe), PUT (streamed, verified), GET (streamed), and for large new
files a size query plus POST uploads the server names by their content."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi import Path as FPath
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from registry.api.deps import ContextDep, Digest, SessionDep, StoreDep
from registry.blobs import service
from registry.blobs.schemas import BlobSizeOut, BlobUploadOut, PinIn, PinOut
from registry.context import RegistryContext
from registry.errors import BlobNotFound, InvalidInput, RangeNotSatisfiable, TooLarge
from registry.storage import parse_digest

router = APIRouter(prefix="/api/v1/blobs", tags=["blobs"])

# Chunks from the socket are small (~256 KiB); handing them to the writer thread ~4 MiB at a
# time keeps thread hops cheap.
_WRITE_BATCH = 4 * 1024 * 1024


def _headers(digest: str, size: int) -> dict[str, str]:
    return {"Content-Length": str(size), "Docker-Content-Digest": digest}


@router.head("/{digest}", responses={404: {"description": "not stored: upload it"}})
def head_blob(digest: Digest, session: SessionDep) -> Response:
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    return Response(status_code=200, headers=_headers(digest, blob.size))


# The largest size a BIGINT column holds; anything larger cannot be stored (422, not a DB error).
MAX_SIZE = 2**63 - 1

_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
MAX_RANGE = 128 * 1024 * 1024


@router.get("/{digest}", response_class=StreamingResponse,
            responses={206: {"description": "the requested byte range"}})
def get_blob(digest: Digest, session: SessionDep, store: StoreDep,
             range_header: Annotated[str | None, Header(alias="range")] = None) -> Response:
    """Stream a blob; ``Range: bytes=a-b`` (one closed range) returns those bytes (206)."""
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    if range_header is not None:
        match = _RANGE.match(range_header)
        if not match:
            raise InvalidInput("unsupported Range: use a single 'bytes=START-END'")
        start, end = int(match.group(1)), int(match.group(2))
        if start > end or start >= blob.size:
            raise RangeNotSatisfiable(f"blob has {blob.size} bytes", size=blob.size)
        end = min(end, blob.size - 1)
        if end - start + 1 > MAX_RANGE:
            raise TooLarge(f"ranges are limited to {MAX_RANGE} bytes")
        data = store.read_range(digest, start, end - start + 1)
        return Response(data, status_code=206, media_type="application/octet-stream",
                        headers={"Content-Range": f"bytes {start}-{end}/{blob.size}",
                                 "Docker-Content-Digest": digest})
    return StreamingResponse(
        store.iter_chunks(digest),
        media_type="application/octet-stream",
        headers=_headers(digest, blob.size),
    )


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
        return await run_in_threadpool(
            lambda: service.finish_upload(ctx.sessions, writer, pin_seconds=pin_seconds))
    except BaseException:
        if inflight is not None:
            await asyncio.gather(inflight, return_exceptions=True)
        await run_in_threadpool(writer.abort)
        raise


@router.put("/{digest}", status_code=201)
async def put_blob(digest: Digest, request: Request, ctx: ContextDep) -> Response:
    """Stream the body into the store; it becomes visible only if its sha256 equals ``digest``."""
    parse_digest(digest)
    await _receive(request, ctx, digest)
    return Response(
        status_code=201,
        headers={"Location": f"/api/v1/blobs/{digest}", "Docker-Content-Digest": digest},
    )


@router.get("/sizes/{size}", response_model=BlobSizeOut)
def blob_size(size: Annotated[int, FPath(ge=0, le=MAX_SIZE)], session: SessionDep,
              store: StoreDep) -> BlobSizeOut:
    """Whether any stored blob has exactly ``size`` bytes, and whether this registry accepts
    uploads named by their content (``POST /api/v1/blobs/uploads``). A file whose size no blob
    has cannot be a duplicate, so a client may send it without hashing it first."""
    return BlobSizeOut(size=size, stored=service.size_stored(session, size=size),
                       upload_without_digest=store.digest_after_upload)


@router.post("/uploads", status_code=201, response_model=BlobUploadOut)
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


@router.post("/pins", response_model=PinOut)
def pin_blobs(body: PinIn, session: SessionDep) -> PinOut:
    """Keep stored blobs from gc for ``seconds`` while a push uploads the rest and creates its
    version (gc at any grace period leaves them alone); answers which are not stored. A push
    then uploads those with the ``Registry-Pin-Seconds`` header, pinned too."""
    return PinOut(missing=service.pin_blobs(session, digests=body.digests, seconds=body.seconds))
