"""A new version's rows, written in as few round trips as the database allows.

A push writes: the adapter row (created, or locked with the next version number taken), the
version, its files, its verdict against every registered base, the ``version.created``
event, that event's webhook deliveries and, when the version is to be validated, the job.
Through the ORM's unit of work that was eight statements and four flushes, most of a push's
time (bench/README.md, "Where a create's time goes").

Here the same rows are Core inserts built from one description. On PostgreSQL they run as
one statement: data-modifying CTEs, each insert reading the ids it needs (adapter, number,
version, event) from the one before; foreign keys are checked at the end of the statement,
so the children may reference the version inserted beside them. SQLite has no
data-modifying CTEs: there the inserts run one after the other, those ids bound as
parameters. Either way the statements are built once per shape (how many files, verdicts,
whether a job and deliveries follow) and reused.

The adapter row is an upsert, ``INSERT … ON CONFLICT (name) DO UPDATE SET version_counter =
version_counter + 1 … RETURNING``: it creates the adapter or locks its row (until the
transaction ends) and takes the next number in one step, so concurrent pushes to one adapter
are numbered one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Insert,
    Select,
    bindparam,
    func,
    insert,
    literal,
    null,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import Text

from registry.base_models.queries import bases_json_column
from registry.db.enums import BlobState
from registry.db.models import (
    Adapter,
    AdapterVersion,
    Blob,
    Compatibility,
    Event,
    Job,
    VersionFile,
    WebhookDelivery,
)
from registry.events.outbox import DELIVERY_COLUMNS, deliveries_select, wake_after_commit

A = Adapter.__table__
V = AdapterVersion.__table__
F = VersionFile.__table__
C = Compatibility.__table__
E = Event.__table__
J = Job.__table__
D = WebhookDelivery.__table__
B = Blob.__table__

# Columns bound from the caller's values (the ids and the number come from the statements).
VERSION_COLUMNS = tuple(c.name for c in V.c if c.name not in ("id", "adapter_id", "version"))
VERDICT_COLUMNS = ("base_model_id", "compatible", "method", "reasons", "warnings", "serving",
                   "checked_at")
EVENT_COLUMNS = ("type", "adapter", "alias", "actor", "payload", "created_at")
JOB_COLUMNS = ("kind", "status", "priority", "payload", "base_model_id", "attempts",
               "max_attempts", "run_after", "created_at", "created_by")


@dataclass(frozen=True)
class Shape:
    """What varies between pushes' statements: one statement (or list) per shape."""

    files: int
    verdicts: int
    job: bool
    deliver: bool


@dataclass(frozen=True)
class Written:
    adapter_id: int
    number: int
    version_id: int
    event_id: int
    job_id: int | None
    deliveries: int


def _bound(table: Any, column: str, key: str) -> BindParameter[Any]:
    return bindparam(key, type_=table.c[column].type)


# A reference to an id (or the number) the statements produce: a CTE's column on PostgreSQL,
# a bound parameter on SQLite.
Ref = Callable[[str], ColumnElement[Any]]


def _upsert(dialect: str, files: int = 0) -> Insert:
    module: Any = postgresql if dialect == "postgresql" else sqlite
    values = {"name": _bound(A, "name", "adapter_name"),
              "description": _bound(A, "description", "adapter_description"),
              "task_type": _bound(A, "task_type", "adapter_task_type"),
              "version_counter": literal(1),
              "created_at": _bound(A, "created_at", "now")}
    if dialect == "postgresql":
        # The gate: every blob the files reference locked (FOR KEY SHARE: gc's mark, FOR
        # UPDATE SKIP LOCKED, passes them by) and still present, or no adapter row comes out
        # and the version's insert fails on its NOT NULL adapter_id: the statement writes
        # nothing (ReadChanged). A push outside a transaction read its blob rows unlocked;
        # this is where it holds them until the rows that reference them are committed.
        present = (select(B.c.id).where(
            tuple_(B.c.id, B.c.digest).in_([
                tuple_(_bound(F, "blob_id", f"f{i}_blob_id"), _bound(B, "digest", f"f{i}_digest"))
                for i in range(files)]),
            B.c.state == BlobState.present).with_for_update(read=True, key_share=True)
            .subquery())
        held = select(func.count()).select_from(present).scalar_subquery()
        ins = module.insert(A).from_select(list(values), select(*values.values()).where(
            held == bindparam("blob_count", type_=A.c.version_counter.type),
            # And the registered bases are those the verdicts were computed against.
            bases_json_column() == bindparam("bases_json", type_=Text())))
    else:
        ins = module.insert(A).values(**values)
    upsert: Insert = ins.on_conflict_do_update(
        index_elements=[A.c.name],
        set_={"version_counter": A.c.version_counter + 1,
              # An adapter created without a description takes the first one pushed.
              "description": func.coalesce(A.c.description, ins.excluded.description)},
    ).returning(A.c.id, A.c.version_counter)
    return upsert


def _one_or_all(selects: list[Select[Any]]) -> Any:
    return selects[0] if len(selects) == 1 else union_all(*selects)


def _insert(table: Any, columns: list[str], source: Any) -> Insert:
    return insert(table).from_select(columns, source)


def _inserts(shape: Shape, ref: Ref, dialect: str) -> Iterator[tuple[str, Insert]]:
    """Every insert after the adapter's, in order, each built only when the one before has
    been taken (so ``ref`` may point at the CTE made from it)."""
    yield "version", _insert(V, ["adapter_id", "version", *VERSION_COLUMNS], select(
        ref("adapter_id"), ref("number"),
        *(_bound(V, c, f"v_{c}") for c in VERSION_COLUMNS))).returning(V.c.id)
    yield "files", _insert(F, ["version_id", "path", "blob_id"], _one_or_all([
        select(ref("version_id"), _bound(F, "path", f"f{i}_path"),
               _bound(F, "blob_id", f"f{i}_blob_id"))
        for i in range(shape.files)])).returning(F.c.id)
    if shape.verdicts:
        yield "verdicts", _insert(C, ["adapter_version_id", *VERDICT_COLUMNS], _one_or_all([
            select(ref("version_id"), *(_bound(C, c, f"c{i}_{c}") for c in VERDICT_COLUMNS))
            for i in range(shape.verdicts)])).returning(C.c.id)
    yield "event", _insert(E, ["version", *EVENT_COLUMNS], select(
        ref("number"), *(_bound(E, c, f"e_{c}") for c in EVENT_COLUMNS))).returning(E.c.id)
    if shape.deliver:
        yield "deliveries", _insert(D, list(DELIVERY_COLUMNS), deliveries_select(
            ref("event_id"), dialect=dialect)).returning(D.c.id)
    if shape.job:
        yield "job", _insert(J, ["adapter_version_id", *JOB_COLUMNS], select(
            ref("version_id"), *(_bound(J, c, f"j_{c}") for c in JOB_COLUMNS))).returning(J.c.id)


_REFS = {"adapter_id": ("a", "id"), "number": ("a", "version_counter"),
         "version_id": ("version", "id"), "event_id": ("event", "id")}


@cache
def _postgresql_statement(shape: Shape) -> Select[Any]:
    """The whole push in one statement: ``WITH a AS (upsert), version AS (…), files AS (…) …
    SELECT`` the ids and counts. Every CTE is referenced by the final SELECT (SQLAlchemy
    renders only referenced ones; PostgreSQL runs each data-modifying one exactly once)."""
    ctes: dict[str, Any] = {"a": _upsert("postgresql", shape.files).cte("a")}

    def ref(name: str) -> ColumnElement[Any]:
        # A scalar subquery (each CTE returns one row): no FROM list to cross-join.
        cte, column = _REFS[name]
        return select(ctes[cte].c[column]).scalar_subquery()

    for name, stmt in _inserts(shape, ref, "postgresql"):
        ctes[name] = stmt.cte(f"new_{name}")

    def count(name: str) -> Any:
        if name not in ctes:
            return literal(0)
        return select(func.count()).select_from(ctes[name]).scalar_subquery()

    return select(
        ref("adapter_id"), ref("number"), ref("version_id"), ref("event_id"),
        select(ctes["job"].c.id).scalar_subquery() if "job" in ctes else null(),
        count("deliveries"), count("files"), count("verdicts"),
    )


@cache
def _sqlite_statements(shape: Shape) -> tuple[Insert, dict[str, Insert]]:
    def ref(name: str) -> ColumnElement[Any]:
        return bindparam(f"ref_{name}", type_=V.c.id.type)

    return _upsert("sqlite"), dict(_inserts(shape, ref, "sqlite"))


class ReadChanged(Exception):
    """What the push read changed before its write: a blob it references is no longer
    present (collected since), or the registered bases are not those its verdicts were
    computed against. Nothing was written."""


def write_version(session: Session, *, shape: Shape, params: Mapping[str, Any]) -> Written:
    """Run the push's inserts, every value bound from ``params`` (keys as the statements
    name them: ``v_*`` version columns, ``f{i}_*`` files, ``c{i}_*`` verdicts, ``e_*`` the
    event, ``j_*`` the job, ``now``, ``adapter_*``; on PostgreSQL also ``f{i}_digest``,
    ``blob_count``, the number of distinct blobs, and ``bases_json``, the registered bases as
    the push read them, ``bases_json_column``); the caller's transaction commits them (or,
    outside one, the statement itself).

    Raises:
        ReadChanged: PostgreSQL: a referenced blob is no longer present, or the bases changed.
    """
    # Core statements on the session's connection: session.execute would first look for ORM
    # entities in them (measurable at this rate).
    conn = session.connection()
    dialect = conn.dialect.name
    if dialect == "postgresql":
        try:
            row = conn.execute(_postgresql_statement(shape), dict(params)).one()
        except IntegrityError as exc:
            diag = getattr(exc.orig, "diag", None)
            if (getattr(diag, "table_name", None), getattr(diag, "column_name", None)) == (
                    AdapterVersion.__tablename__, "adapter_id"):
                raise ReadChanged() from exc  # the gate held no adapter row back (_upsert)
            raise
        adapter_id, number, version_id, event_id, job_id, deliveries, _, _ = row
    else:
        upsert, inserts = _sqlite_statements(shape)
        adapter_id, number = conn.execute(upsert, dict(params)).one()
        bound = dict(params, ref_adapter_id=adapter_id, ref_number=number)
        bound["ref_version_id"] = version_id = conn.execute(
            inserts["version"], bound).scalar_one()
        conn.execute(inserts["files"], bound).all()
        if "verdicts" in inserts:
            conn.execute(inserts["verdicts"], bound).all()
        bound["ref_event_id"] = event_id = conn.execute(inserts["event"], bound).scalar_one()
        deliveries = (len(conn.execute(inserts["deliveries"], bound).all())
                      if "deliveries" in inserts else 0)
        job_id = conn.execute(inserts["job"], bound).scalar_one() if "job" in inserts else None
    if deliveries:
        wake_after_commit(session)
    return Written(adapter_id, number, version_id, event_id, job_id, deliveries)
