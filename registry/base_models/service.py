"""Base models: register (local upload, hf://, s3://), and the adapter versions that fit one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.base_models.queries import find_base, get_base
from registry.base_models.schemas import BaseFileOut, BaseModelOut, RegisterBaseIn
from registry.base_models.sources import open_remote
from registry.blobs.service import BlobFiles, blobs_for
from registry.compat import service as compat
from registry.compat.manifest import config_summary, shape_fingerprint
from registry.compat.schemas import CompatibleVersionOut
from registry.config import Settings
from registry.db.dialect import add_unless_exists
from registry.db.models import BaseModelFile, BaseModelRow, SourceKind
from registry.errors import (
    BaseModelConflict,
    InvalidInput,
    TooLarge,
    UnsafeFormat,
)
from registry.formats import PICKLE_SUFFIXES, check_paths
from registry.formats.checkpoint import Checkpoint, read_checkpoint
from registry.formats.sources import SourceAllowlist, check_revision
from registry.refs import validate_name
from registry.storage import BlobStore, manifest_digest, parse_digest

LOCAL_PREFIX = "file://"


def _check_files(files: dict[str, str], settings: Settings) -> None:
    if not files:
        raise InvalidInput("a local base model needs its files")
    if len(files) > settings.max_files_per_version:
        raise TooLarge(f"{len(files)} files exceed the limit of {settings.max_files_per_version}")
    check_paths(files)
    for path, digest in files.items():
        parse_digest(digest)
        if path.endswith(PICKLE_SUFFIXES):
            raise UnsafeFormat(f"{path} is a pickle file; base weights must be safetensors")


def _choose_revision(session: Session, *, name: str, requested: str | None, content_id: str,
                     pinned: str, kind: str) -> tuple[str, BaseModelRow | None]:
    """Apply the naming rules: same weights are idempotent; new weights need a new revision.

    Returns:
        ``(revision, existing)`` where ``existing`` is the row to return unchanged, if any.
    """
    rows = list(session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)))
    same = [r for r in rows if r.content_id == content_id]
    if requested is None:
        if same:
            return same[-1].revision, same[-1]
        # An hf:// source pins its own revision (the commit); files and S3 objects do not.
        if rows and kind != SourceKind.hf:
            latest = max(rows, key=lambda r: r.created_at)
            raise BaseModelConflict(
                f"base model {name!r} is already registered with different weights "
                f"(revision {latest.revision}); pass --revision to register a new revision"
            )
        revision = pinned
    else:
        revision = requested
    for row in rows:
        if row.revision == revision:
            if row.content_id == content_id:
                return revision, row
            raise BaseModelConflict(
                f"base model {name}@{revision} is already registered with different weights; "
                "use another --revision"
            )
    return revision, None


def register_base(
    session: Session, store: BlobStore, *, body: RegisterBaseIn, settings: Settings,
    sources: SourceAllowlist,
) -> tuple[BaseModelRow, bool]:
    """Register a base model revision and its header-only manifest.

    Args:
        session: the unit of work (flushed here).
        store: blob store holding an uploaded local checkpoint.
        body: name, source, optional revision, and ``files`` for an uploaded directory.
        settings: limits and Hugging Face options.
        sources: the referenced sources this process may read with its own credentials: the
            server's REGISTRY_BASE_SOURCES, or every source for the embedded CLI (it reads
            with its user's own credentials). Checked before anything is read.

    Returns:
        ``(base, created)``; ``created`` is False when the same weights were registered before.

    Raises:
        InvalidName, InvalidInput, InvalidBaseModel, UnsafeFormat, InvalidSafetensors,
        SourceNotAllowed, SourceUnavailable, BlobNotFound, BaseModelConflict.
    """
    validate_name(body.name, what="base model name")
    if body.revision is not None:
        check_revision(body.revision)
    if body.files is not None:
        _check_files(body.files, settings)
        blobs = blobs_for(session, body.files)
        checkpoint = read_checkpoint(
            sorted(blobs), BlobFiles(store, blobs),
            max_header_bytes=settings.max_header_bytes, max_config_bytes=settings.max_config_bytes,
        )
        content_id = manifest_digest(body.files)
        pinned = f"local-{content_id[7:19]}"
        source = body.source if body.source.startswith(LOCAL_PREFIX) else LOCAL_PREFIX + body.source
        kind = SourceKind.file
        records = [
            BaseModelFile(path=p, size=b.size, blob=b) for p, b in sorted(blobs.items())
        ]
    else:
        ref = sources.check(body.source)
        remote = open_remote(ref, revision=body.revision, cache_dir=settings.hf_cache_dir,
                             offline=settings.hf_offline)
        checkpoint = read_checkpoint(
            sorted(remote.sizes), remote.access,
            max_header_bytes=settings.max_header_bytes, max_config_bytes=settings.max_config_bytes,
        )
        content_id = remote.content_id
        pinned = remote.revision
        source, kind = remote.uri, remote.kind
        records = [
            BaseModelFile(path=p, size=s, etag=remote.etags.get(p))
            for p, s in sorted(remote.sizes.items())
        ]
    # An hf:// revision is the commit the source resolved to, whatever --revision named.
    requested = None if kind == SourceKind.hf else body.revision
    revision, existing = _choose_revision(
        session, name=body.name, requested=requested, content_id=content_id, pinned=pinned,
        kind=kind,
    )
    if existing is not None:
        return existing, False
    base = _new_base(body, checkpoint, revision=revision, source=source, kind=kind,
                     content_id=content_id)
    base.files = records
    if not add_unless_exists(session, base):
        # A concurrent registration of the same name and revision committed first: apply the
        # rules again against it (same weights: return it; other weights: conflict).
        _, existing = _choose_revision(
            session, name=body.name, requested=revision, content_id=content_id, pinned=pinned,
            kind=kind,
        )
        if existing is None:  # pragma: no cover - the unique row must be visible now
            raise BaseModelConflict(f"base model {body.name}@{revision} was registered "
                                    "concurrently; retry")
        return existing, False
    compat.refresh_for_base(session, base=base, find_base=find_base)
    return base, True


def _new_base(body: RegisterBaseIn, checkpoint: Checkpoint, *, revision: str, source: str,
              kind: str, content_id: str) -> BaseModelRow:
    summary = config_summary(checkpoint.config)
    tensors = checkpoint.tensors
    return BaseModelRow(
        name=body.name,
        revision=revision,
        source=source,
        source_kind=kind,
        content_id=content_id,
        architectures=summary["architectures"],
        model_type=summary["model_type"],
        hidden_size=summary["hidden_size"],
        vocab_size=summary["vocab_size"],
        num_hidden_layers=summary["num_hidden_layers"],
        tie_word_embeddings=summary["tie_word_embeddings"],
        config=checkpoint.config,
        tensor_manifest=checkpoint.manifest_json(),
        tensor_count=len(tensors),
        total_size=sum(t.nbytes for t in tensors.values()),
        fingerprint=shape_fingerprint(tensors),
        created_by=body.created_by,
    )


def to_out(b: BaseModelRow) -> BaseModelOut:
    return BaseModelOut(
        name=b.name,
        revision=b.revision,
        source=b.source,
        source_kind=b.source_kind,
        architectures=list(b.architectures or []),
        model_type=b.model_type,
        hidden_size=b.hidden_size,
        vocab_size=b.vocab_size,
        num_hidden_layers=b.num_hidden_layers,
        tie_word_embeddings=b.tie_word_embeddings,
        fingerprint=b.fingerprint,
        tensor_count=b.tensor_count,
        total_size=b.total_size,
        created_at=b.created_at,
        created_by=b.created_by,
        files=[
            BaseFileOut(path=f.path, size=f.size, digest=f.blob.digest if f.blob else None,
                        etag=f.etag)
            for f in b.files
        ],
        config=b.config,
    )


def compatible_versions(session: Session, *, base: str,
                        base_revision: str | None = None) -> list[CompatibleVersionOut]:
    """Every adapter version statically compatible with ``base`` (one indexed query).

    Raises:
        BaseModelNotFound.
    """
    return compat.compatible_versions(
        session, base=get_base(session, name=base, revision=base_revision)
    )
