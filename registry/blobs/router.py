"""Blob routes: HEAD (dedupe), PUT (streamed, verified), GET (streamed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from registry.api.deps import ContextDep, Digest, SessionDep, StoreDep
from registry.blobs import service
from registry.db.engine import session_scope
from registry.errors import BlobNotFound, InvalidInput, TooLarge
from registry.storage import parse_digest

router = APIRouter(prefix="/api/v1/blobs", tags=["blobs"])

# Chunks from the socket are small; writing in ~1 MiB batches keeps thread hops cheap.
_WRITE_BATCH = 1024 * 1024


def _headers(digest: str, size: int) -> dict[str, str]:
    return {"Content-Length": str(size), "Docker-Content-Digest": digest}


@router.head("/{digest}", responses={404: {"description": "not stored: upload it"}})
def head_blob(digest: Digest, session: SessionDep) -> Response:
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    return Response(status_code=200, headers=_headers(digest, blob.size))


@router.get("/{digest}", response_class=StreamingResponse)
def get_blob(digest: Digest, session: SessionDep, store: StoreDep) -> StreamingResponse:
    blob = service.get_blob(session, digest=digest)
    if blob is None:
        raise BlobNotFound(f"blob {digest} is not stored")
    return StreamingResponse(
        store.iter_chunks(digest),
        media_type="application/octet-stream",
        headers=_headers(digest, blob.size),
    )


@router.put("/{digest}", status_code=201)
async def put_blob(digest: Digest, request: Request, ctx: ContextDep) -> Response:
    """Stream the body into the store; it becomes visible only if its sha256 equals ``digest``."""
    parse_digest(digest)
    limit = ctx.settings.max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("invalid Content-Length")
        if int(declared) > limit:
            raise TooLarge(f"blob of {declared} bytes exceeds the limit of {limit} bytes")
    writer = await run_in_threadpool(ctx.store.writer, digest, max_size=limit)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= _WRITE_BATCH:
                await run_in_threadpool(writer.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(writer.write, bytes(pending))
        size = await run_in_threadpool(writer.commit)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise

    def _record() -> None:
        with session_scope(ctx.sessions) as session:
            service.record_blob(session, digest=digest, size=size)

    await run_in_threadpool(_record)
    return Response(
        status_code=201,
        headers={"Location": f"/api/v1/blobs/{digest}", "Docker-Content-Digest": digest},
    )
