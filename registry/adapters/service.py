"""Adapter versions: create (static checks + one transaction), list, show, lineage, compat."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from registry.adapters import reads, writes
from registry.adapters.queries import get_version
from registry.adapters.schemas import (
    AdapterOut,
    CreateVersionIn,
    ExportSummaryOut,
    FileOut,
    LastValidationOut,
    LineageNodeOut,
    LineageOut,
    ScoreOut,
    VersionOut,
    VersionRefOut,
)
from registry.base_models import queries as base_queries
from registry.blobs.service import BlobFiles, BlobRow, blob_rows_for, save_parsed
from registry.compat import service as compat
from registry.compat.schemas import CompatibleBaseOut, LinkedVerdictOut, VerdictOut
from registry.config import Settings
from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.engine import autocommitting
from registry.db.enums import JobKind, JobStatus
from registry.db.models import (
    Adapter,
    AdapterVersion,
    Alias,
    BaseModelRow,
    EvalScore,
    Export,
    Job,
    VersionStatus,
)
from registry.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    InvalidReference,
    TooLarge,
)
from registry.events import types as event_types
from registry.formats import check_paths, inspect_adapter
from registry.refs import parse_ref, validate_name
from registry.storage import BlobStore, manifest_digest, parse_digest

_META_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_GIT_COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")
MAX_META_VALUE = 2000


def _check_request(body: CreateVersionIn, settings: Settings) -> None:
    if not body.files:
        raise InvalidInput("a version needs at least one file")
    if len(body.files) > settings.max_files_per_version:
        raise TooLarge(
            f"{len(body.files)} files exceed the limit of {settings.max_files_per_version}"
        )
    check_paths(body.files)
    for digest in body.files.values():
        parse_digest(digest)
    for key, value in body.metadata.items():
        if not _META_KEY.match(key):
            raise InvalidInput(
                f"invalid metadata key {key[:80]!r}: use letters, digits, '_', '.', '-' "
                "(at most 64 characters)"
            )
        if len(value) > MAX_META_VALUE:
            raise InvalidInput(f"metadata value for {key!r} exceeds {MAX_META_VALUE} characters")
    if len(json.dumps(body.metadata)) > settings.max_metadata_bytes:
        raise TooLarge(f"metadata exceeds {settings.max_metadata_bytes} bytes")
    if body.idempotency_key is not None and not _IDEMPOTENCY_KEY.match(body.idempotency_key):
        raise InvalidInput("invalid idempotency key: 1-200 printable ASCII characters, no spaces")
    if body.git_commit is not None and not _GIT_COMMIT.match(body.git_commit):
        raise InvalidInput(f"invalid git commit {body.git_commit[:80]!r}: expected a hex sha")
    if body.ci_run_url is not None and not body.ci_run_url.startswith(("https://", "http://")):
        raise InvalidInput("invalid CI run URL: expected http(s)://…")


def _resolve_parent(session: Session, parent: str | None) -> AdapterVersion | None:
    if parent is None:
        return None
    ref = parse_ref(parent)
    if ref.version is None:
        raise InvalidReference(f"parent must name a version as NAME:VERSION, got {parent!r}")
    return get_version(session, name=ref.name, version=ref.version)


def _latest(bases: Sequence[BaseModelRow], name: str | None) -> BaseModelRow | None:
    """The latest registered revision called ``name`` among ``bases`` (find_base, in memory)."""
    named = [b for b in bases if b.name == name]
    return max(named, key=lambda b: (b.created_at, b.id)) if named else None


def _resolve_base(session: Session, name: str | None, declared: str | None,
                  bases: Sequence[BaseModelRow]) -> BaseModelRow | None:
    if name is not None:
        # Not registered: get_base raises the error that says how to register it.
        return _latest(bases, name) or base_queries.get_base(session, name=name)
    # No --base: a registered base whose name is the config's base_model_name_or_path.
    return _latest(bases, declared)


def _locked_adapter(session: Session, name: str, body: CreateVersionIn,
                    task_type: str | None) -> Adapter:
    """The adapter row, created if new, locked until the transaction ends (``FOR UPDATE``):
    a push with an idempotency key checks the key under the lock, then takes its number
    (registry.adapters.writes increments the counter of the row it holds)."""
    def lock() -> Adapter | None:
        return session.scalars(
            select(Adapter).where(Adapter.name == name).with_for_update()
            .execution_options(populate_existing=True)).one_or_none()

    adapter = lock()
    if adapter is None:  # a new adapter (or one a concurrent push is creating): then lock it
        insert_ignore(
            session,
            Adapter,
            {"name": name, "version_counter": 0, "created_at": utcnow(),
             "description": body.description, "task_type": task_type},
            keys=["name"],
        )
        adapter = lock()
        assert adapter is not None  # inserted above, or by the push that won the race
    return adapter


def _same_request(existing: AdapterVersion, digest: str, base: BaseModelRow | None,
                  parent: AdapterVersion | None) -> bool:
    return (
        existing.content_digest == digest
        and existing.base_model_id == (base.id if base else None)
        and existing.parent_id == (parent.id if parent else None)
    )


def writes_in_one_statement(body: CreateVersionIn) -> bool:
    """Whether ``create_version`` writes ``body``'s version in one statement that needs no
    lock held before it (``registry.db.engine.write_scope`` may then run it outside a
    transaction): yes, unless an idempotency key must be checked under the adapter's lock."""
    return body.idempotency_key is None


def create_version(
    session: Session, store: BlobStore, *, name: str, body: CreateVersionIn, settings: Settings
) -> tuple[VersionOut, bool]:
    """Register a new version from files already in the blob store.

    Every static check runs before anything is written; the version, its files and the adapter
    row are written in the caller's transaction, so a rejected push leaves nothing behind.

    Args:
        session: the unit of work (flushed here, committed by the caller).
        store: where the files' blobs live; only configs and safetensors headers are read.
        name: the adapter name.
        body: file manifest and metadata.
        settings: limits.

    Returns:
        ``(version, created)``, the version as ``show`` answers it; ``created`` is False when
        an idempotency key matched an existing version with the same content.

    Raises:
        InvalidName, InvalidInput, InvalidAdapter (and subclasses), BlobNotFound,
        VersionNotFound (parent), IdempotencyConflict.
    """
    validate_name(name)
    _check_request(body, settings)
    conn = session.connection()
    # Outside a transaction (write_scope, PostgreSQL) the rows are read unlocked: the write
    # statement locks them and fails whole if one has gone since (writes.ReadChanged); what
    # was read may then be kept for the next push (registry.adapters.reads).
    kept = (reads.kept_for(conn.engine)
            if conn.dialect.name == "postgresql" and autocommitting(session) else None)
    if kept is not None and (guess := kept.get(body.files)) is not None:
        try:
            return _create_version(session, store, name=name, body=body, settings=settings,
                                   kept=kept, guess=guess)
        except writes.ReadChanged:
            kept.forget()  # something changed since: read afresh, once
    return _create_version(session, store, name=name, body=body, settings=settings, kept=kept,
                           guess=None)


def _create_version(session: Session, store: BlobStore, *, name: str, body: CreateVersionIn,
                    settings: Settings, kept: reads.KeptReads | None,
                    guess: tuple[dict[str, BlobRow], str, list[BaseModelRow]] | None,
                    ) -> tuple[VersionOut, bool]:
    """``create_version`` once its request is checked: from what ``guess`` says was read
    before, or reading it. ``kept`` is given outside a transaction (PostgreSQL) only: the
    read is then unlocked, and what it found is kept there."""
    digest = manifest_digest(body.files)
    postgresql = session.get_bind().dialect.name == "postgresql"
    unlocked = kept is not None
    bases: Sequence[BaseModelRow]
    if guess is not None:
        files, bases_json, bases = guess
    else:
        # On PostgreSQL the registered bases come with the blob rows (one round trip).
        files, bases_json = blob_rows_for(
            session, body.files, lock=not unlocked,
            also=base_queries.bases_json_column() if postgresql else None)
    limits = settings.adapter_limits()
    content = reads.files_key(files, limits)
    inspection = kept.inspections.get(content) if kept is not None else None
    if inspection is None:
        inspection = inspect_adapter(sorted(files), BlobFiles(store, files), limits=limits)
        if kept is not None:
            kept.inspections.put(content, inspection)
    if guess is None:
        # What a blob's first use parsed, kept with it (outside a transaction: committed now,
        # whatever becomes of the push; it describes the blob's content, which never changes).
        save_parsed(session, files.values(), wait_for_wal=not unlocked)
        # One query for every base: the link, the declared base and the verdicts all use it.
        bases = (base_queries.bases_from_json(bases_json) if postgresql
                 else base_queries.bases_for_push(session))
        if not compat.manifests_kept(bases):
            # A base this process has not parsed yet: load them whole (manifests kept after).
            bases = base_queries.list_bases(session, with_files=False)
        elif kept is not None:
            kept.keep(files.values(), bases_json, list(bases))
    summary = inspection.summary()
    parent = _resolve_parent(session, body.parent)
    base = _resolve_base(session, body.base_model, summary["base_model_name_or_path"], bases)

    if body.idempotency_key is not None:
        # The adapter row locked first: whoever holds it checks the key, then numbers.
        adapter = _locked_adapter(session, name, body, summary["task_type"])
        existing = session.scalars(
            select(AdapterVersion).where(
                AdapterVersion.adapter_id == adapter.id,
                AdapterVersion.idempotency_key == body.idempotency_key,
            )
        ).one_or_none()
        if existing is not None:
            if _same_request(existing, digest, base, parent):
                return to_out(existing), False
            raise IdempotencyConflict(
                f"idempotency key {body.idempotency_key!r} was used for {name}:"
                f"{existing.version} with different content"
            )

    now = utcnow()
    # Built in memory, written by registry.adapters.writes (not through the unit of work):
    # the answer is this object, with the ids the insert returned.
    version = AdapterVersion(
        status=VersionStatus.registered,
        peft_type=summary["peft_type"],
        task_type=summary["task_type"],
        r=summary["r"],
        lora_alpha=summary["lora_alpha"],
        target_modules=summary["target_modules"],
        adapter_config=inspection.config.raw,
        tensor_manifest=inspection.manifest_json(),
        tensor_count=len(inspection.tensors),
        total_size=sum(b.size for b in files.values()),
        content_digest=digest,
        base_model_id=base.id if base else None,
        declared_base_model=summary["base_model_name_or_path"],
        parent_id=parent.id if parent else None,
        meta=dict(body.metadata),
        git_commit=body.git_commit,
        ci_run_url=body.ci_run_url,
        idempotency_key=body.idempotency_key,
        created_at=now,
        created_by=body.created_by,
    )
    verdicts = compat.verdicts_for_new_version(session, version=version, bases=bases,
                                               find_base=lambda _s, n: _latest(bases, n),
                                               config=inspection.config,
                                               tensors=inspection.tensors, content=content)
    linked = next((c for c in verdicts if c.base_model_id == version.base_model_id), None)
    # In the version's own statement: a committed push always has its validation queued.
    validate = (settings.auto_validate and base is not None and linked is not None
                and linked.compatible)
    job_payload = {"suites": [], "auto": True}
    paths = sorted(files)
    params: dict[str, Any] = {
        "now": now, "adapter_name": name, "adapter_description": body.description,
        "adapter_task_type": summary["task_type"],
        "e_type": event_types.VERSION_CREATED, "e_adapter": name, "e_alias": None,
        "e_actor": body.created_by, "e_created_at": now,
        "e_payload": {"peft_type": version.peft_type,
                      "base_model": base.name if base else None,
                      "parent": body.parent, "content_digest": digest},
        "event_type": event_types.VERSION_CREATED, "event_adapter": name,
        "blob_count": len({b.id for b in files.values()}), "bases_json": bases_json,
    }
    for column in writes.VERSION_COLUMNS:
        params[f"v_{column}"] = getattr(version, "meta" if column == "metadata" else column)
    for i, path in enumerate(paths):
        params[f"f{i}_path"], params[f"f{i}_blob_id"] = path, files[path].id
        params[f"f{i}_digest"] = files[path].digest
    for i, verdict in enumerate(verdicts):
        for column in writes.VERDICT_COLUMNS:
            params[f"c{i}_{column}"] = getattr(verdict, column)
    job = None
    if validate:
        assert base is not None
        job = Job(kind=JobKind.validate, status=JobStatus.queued, priority=0,
                  payload=job_payload, base_model_id=base.id, attempts=0,
                  max_attempts=settings.job_max_attempts, run_after=now, created_at=now,
                  created_by=body.created_by)
        for column in writes.JOB_COLUMNS:
            params[f"j_{column}"] = getattr(job, column)
    try:
        written = writes.write_version(session, shape=writes.Shape(
            files=len(paths), verdicts=len(verdicts), job=job is not None,
            deliver=event_types.VERSION_CREATED in event_types.DELIVERABLE), params=params)
    except writes.ReadChanged:
        if guess is not None:
            raise  # create_version reads afresh and tries again
        if unlocked:
            blob_rows_for(session, body.files, lock=False)  # BlobNotFound names the file
        raise Conflict(f"a blob of {name} was being garbage-collected, or a base model "
                       "registered, while it was pushed; push again") from None

    version.id, version.adapter_id, version.version = (written.version_id, written.adapter_id,
                                                       written.number)
    # A new version has nothing else yet: its answer is built from what is in memory (no
    # query, and no ORM objects for its files, adapter and job: they cost a push more than
    # the answer's JSON).
    validation = None
    if job is not None:
        assert written.job_id is not None
        job.id = written.job_id
        validation = _validation_out(job, base)
    return _version_out(
        version, name=name, base=base,
        parent=VersionRefOut(name=parent.adapter.name, version=parent.version) if parent else None,
        files=[FileOut(path=p, digest=files[p].digest, size=files[p].size) for p in paths],
        compatibility=compat.verdict_out(linked) if linked is not None else None,
        exports=[], scores=[], aliases=[], validation=validation), True


def list_adapters(session: Session) -> list[AdapterOut]:
    """Every adapter with its latest version number, computed in SQL."""
    stats = (
        select(
            AdapterVersion.adapter_id,
            func.max(AdapterVersion.version).label("latest"),
            func.count(AdapterVersion.id).label("count"),
        )
        .group_by(AdapterVersion.adapter_id)
        .subquery()
    )
    rows = session.execute(
        select(Adapter, stats.c.latest, stats.c.count)
        .outerjoin(stats, stats.c.adapter_id == Adapter.id)
        .options(selectinload(Adapter.aliases).selectinload(Alias.version)
                 .load_only(AdapterVersion.version))
        .order_by(Adapter.name)
    ).all()
    return [
        AdapterOut(
            name=a.name,
            description=a.description,
            task_type=a.task_type,
            latest_version=latest,
            version_count=count or 0,
            created_at=a.created_at,
            aliases={alias.name: alias.version.version for alias in a.aliases},
        )
        for a, latest, count in rows
    ]


def tensor_manifest(session: Session, *, name: str, version: int) -> dict[str, dict]:
    return get_version(session, name=name, version=version).tensor_manifest


def to_out(v: AdapterVersion) -> VersionOut:
    """A version as ``show --json`` prints it, from the version and what was loaded with it."""
    return _version_out(
        v, name=v.adapter.name, base=v.base_model, parent=_parent_ref(v),
        files=[FileOut(path=f.path, digest=f.blob.digest, size=f.blob.size) for f in v.files],
        compatibility=compat.linked_verdict(v), exports=_exports(v), scores=_latest_scores(v),
        aliases=[a.name for a in v.aliases],
        validation=(_validation_out(v.validations[-1], v.validations[-1].base_model)
                    if v.validations else None))


def _version_out(v: AdapterVersion, *, name: str, base: BaseModelRow | None,
                 parent: VersionRefOut | None, files: list[FileOut],
                 compatibility: LinkedVerdictOut | None, exports: list[ExportSummaryOut],
                 scores: list[ScoreOut], aliases: list[str],
                 validation: LastValidationOut | None) -> VersionOut:
    """The answer from the version's own columns and its related rows, given: loaded ones
    (``to_out``), or a new version's, from memory (``create_version``)."""
    return VersionOut(
        name=name,
        version=v.version,
        ref=f"{name}:{v.version}",
        status=v.status.value,
        peft_type=v.peft_type,
        task_type=v.task_type,
        r=v.r,
        lora_alpha=v.lora_alpha,
        target_modules=v.target_modules,
        base_model=base.name if base else None,
        base_model_revision=base.revision if base else None,
        declared_base_model=v.declared_base_model,
        parent=parent,
        metadata=v.meta,
        git_commit=v.git_commit,
        ci_run_url=v.ci_run_url,
        idempotency_key=v.idempotency_key,
        content_digest=v.content_digest,
        total_size=v.total_size,
        tensor_count=v.tensor_count,
        created_at=v.created_at,
        created_by=v.created_by,
        files=files,
        adapter_config=v.adapter_config,
        compatibility=compatibility,
        exports=exports,
        scores=scores,
        aliases=aliases,
        validation=validation,
    )


def _validation_out(job: Job, base: BaseModelRow | None) -> LastValidationOut:
    result = job.result or {}
    timings = result.get("timings")
    return LastValidationOut(
        job=job.id, status=job.status.value, verdict=result.get("verdict"),
        base=base.name if base else None,
        base_revision=base.revision if base else None,
        reasons=[str(r) for r in result.get("reasons", [])] or ([job.error] if job.error else []),
        device=result.get("device"), dtype=result.get("dtype"),
        gpu_name=result.get("gpu_name"),
        timings=timings if isinstance(timings, dict) else None,
        base_cache_hit=result.get("base_cache_hit"), attempts=job.attempts,
        created_at=job.created_at, finished_at=job.finished_at,
    )


def score_out(s: EvalScore) -> ScoreOut:
    base = s.base_model
    return ScoreOut(suite=s.suite, metric=s.metric, value=s.value,
                    base=base.name if base else None,
                    base_revision=base.revision if base else None,
                    suite_version=s.suite_version, n=s.n, source=s.source.value, job=s.job_id,
                    created_at=s.created_at, created_by=s.created_by)


def _latest_scores(v: AdapterVersion) -> list[ScoreOut]:
    # The newest row per (base, suite, suite version, metric); rows come ordered by id.
    newest: dict[tuple[int | None, str, int | None, str], EvalScore] = {}
    for s in v.scores:
        newest[(s.base_model_id, s.suite, s.suite_version, s.metric)] = s
    return [score_out(s) for s in sorted(newest.values(), key=lambda s: (s.suite, s.metric,
                                                                          s.id))]


def _parent_ref(v: AdapterVersion) -> VersionRefOut | None:
    return VersionRefOut(name=v.parent.adapter.name, version=v.parent.version) if v.parent else None


def _exports(v: AdapterVersion) -> list[ExportSummaryOut]:
    return [
        ExportSummaryOut(base=e.base_model.name, base_revision=e.base_model.revision,
                         dtype=e.dtype, total_size=e.total_size)
        for e in sorted(v.exports, key=lambda e: e.id)
    ]


MAX_LINEAGE = 1000  # versions listed per direction
_IN_CHUNK = 500  # ids per IN (...) list


def _lineage_query() -> Select[AdapterVersion]:
    return select(AdapterVersion).options(
        selectinload(AdapterVersion.adapter),
        selectinload(AdapterVersion.base_model),
        selectinload(AdapterVersion.parent).selectinload(AdapterVersion.adapter),
        selectinload(AdapterVersion.exports).selectinload(Export.base_model),
    )


def _node(v: AdapterVersion, depth: int) -> LineageNodeOut:
    return LineageNodeOut(
        name=v.adapter.name,
        version=v.version,
        ref=f"{v.adapter.name}:{v.version}",
        status=v.status.value,
        peft_type=v.peft_type,
        base_model=v.base_model.name if v.base_model else None,
        parent=_parent_ref(v),
        depth=depth,
        created_at=v.created_at,
        exports=_exports(v),
    )


def lineage(session: Session, *, name: str, version: int | None,
            limit: int = MAX_LINEAGE) -> LineageOut:
    """Where ``name:version`` comes from and what came of it, with every merged export.

    Ancestors follow ``parent`` up to the root. Descendants are the versions that name this one
    as their parent, then theirs, breadth-first, in any adapter (a version may name any other
    as its parent: a fork). At most ``limit`` versions per direction (``truncated`` says so).

    Raises:
        AdapterNotFound, VersionNotFound.
    """
    v = get_version(session, name=name, version=version)
    seen = {v.id}
    ancestors: list[LineageNodeOut] = []
    truncated = False
    parent_id = v.parent_id
    while parent_id is not None and parent_id not in seen:
        if len(ancestors) == limit:
            truncated = True
            break
        p = session.scalars(_lineage_query().where(AdapterVersion.id == parent_id)).one()
        seen.add(p.id)
        ancestors.append(_node(p, len(ancestors) + 1))
        parent_id = p.parent_id

    descendants: list[LineageNodeOut] = []
    frontier, depth = [v.id], 0
    while frontier and not truncated:
        depth += 1
        children: list[AdapterVersion] = []
        for i in range(0, len(frontier), _IN_CHUNK):
            children.extend(session.scalars(
                _lineage_query().where(AdapterVersion.parent_id.in_(frontier[i:i + _IN_CHUNK]))
            ))
        children = sorted((c for c in children if c.id not in seen),
                          key=lambda c: (c.created_at, c.id))
        if len(descendants) + len(children) > limit:
            children, truncated = children[: limit - len(descendants)], True
        seen.update(c.id for c in children)
        descendants.extend(_node(c, depth) for c in children)
        frontier = [c.id for c in children]
    return LineageOut(ref=f"{v.adapter.name}:{v.version}", version=_node(v, 0),
                      ancestors=ancestors, descendants=descendants, truncated=truncated)


def version_verdict(session: Session, *, name: str, version: int | None, base: str,
                    base_revision: str | None = None) -> VerdictOut:
    """The static verdict for ``name:version`` on ``base``, computed now if never computed.

    Raises:
        AdapterNotFound, VersionNotFound, BaseModelNotFound.
    """
    v = get_version(session, name=name, version=version)
    b = base_queries.get_base(session, name=base, revision=base_revision)
    return compat.verdict_for(session, version=v, base=b, find_base=base_queries.find_base)


def version_compatible_bases(session: Session, *, name: str,
                             version: int | None) -> list[CompatibleBaseOut]:
    """Every registered base model ``name:version`` fits.

    Raises:
        AdapterNotFound, VersionNotFound.
    """
    v = get_version(session, name=name, version=version)
    return compat.compatible_bases(session, version=v, bases=base_queries.list_bases(session),
                                   find_base=base_queries.find_base)
