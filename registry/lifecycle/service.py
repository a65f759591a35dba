"""Alias moves (promote, rollback, delete), their append-only history, and archiving versions.

Every move locks the adapter row first (``SELECT … FOR UPDATE``; on SQLite every transaction
is already ``BEGIN IMMEDIATE``), so concurrent moves of one adapter's aliases serialise even
when the alias row does not exist yet, and each sees the state the previous one committed.
Each move writes the alias row, one ``alias_events`` row and one ``events`` row in the
caller's transaction: all three or none.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from registry.adapters.queries import get_adapter
from registry.db.base import utcnow
from registry.db.models import (
    Adapter,
    AdapterVersion,
    Alias,
    AliasAction,
    AliasEvent,
    VersionStatus,
)
from registry.errors import (
    AdapterNotFound,
    AliasMoved,
    AliasNotFound,
    AliasProtected,
    GateFailed,
    InvalidInput,
    InvalidReference,
    NoRollbackTarget,
    VersionAliased,
    VersionArchived,
    VersionNotFound,
)
from registry.events import service as events
from registry.events import types as event_types
from registry.lifecycle import gates as gate_rules
from registry.lifecycle.policies import effective_policy
from registry.lifecycle.queries import get_alias
from registry.lifecycle.queries import list_aliases as alias_rows
from registry.lifecycle.schemas import (
    AliasDeletedOut,
    AliasOut,
    GateOut,
    HistoryEntryOut,
    PromoteOut,
    RollbackOut,
    VersionSpec,
)
from registry.refs import parse_ref, validate_alias, validate_name

MAX_HISTORY = 10_000  # entries per page of `history`


def lock_adapter(session: Session, name: str) -> Adapter:
    """The adapter row, locked until the transaction ends: moves of its aliases serialise here.

    Raises:
        InvalidName, AdapterNotFound.
    """
    validate_name(name)
    adapter = session.scalars(
        select(Adapter).where(Adapter.name == name).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if adapter is None:
        raise AdapterNotFound(f"no adapter {name!r}")
    return adapter


def _ref(adapter: Adapter, version: AdapterVersion | None) -> str:
    return f"{adapter.name}:{version.version}" if version is not None else "none"


def version_in(session: Session, adapter: Adapter, spec: VersionSpec) -> AdapterVersion:
    """The version of ``adapter`` that ``spec`` names: a number, or a reference to one of its
    own versions (``NAME:VERSION``, ``NAME@ALIAS``, ``NAME`` for the latest).

    Raises:
        InvalidReference (malformed, or a version of another adapter), VersionNotFound,
        AliasNotFound.
    """
    number: int | None
    if isinstance(spec, int):
        number = spec
    elif spec.isascii() and spec.isdigit():
        number = int(spec)
    else:
        ref = parse_ref(spec)
        if ref.name != adapter.name:
            raise InvalidReference(
                f"{spec} is a version of {ref.name!r}: an alias of {adapter.name!r} can only "
                f"point at a version of {adapter.name!r}"
            )
        if ref.alias is not None:
            row = get_alias(session, adapter_id=adapter.id, alias=ref.alias)
            if row is None:
                raise AliasNotFound(f"no alias {ref.alias!r} on adapter {adapter.name!r}")
            return session.get_one(AdapterVersion, row.version_id)
        number = ref.version
    stmt = select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
    if number is None:
        stmt = stmt.order_by(AdapterVersion.version.desc()).limit(1)
    else:
        stmt = stmt.where(AdapterVersion.version == number)
    found = session.scalars(stmt).one_or_none()
    if found is None:
        raise VersionNotFound(f"adapter {adapter.name!r} has no versions" if number is None
                              else f"no version {adapter.name}:{number}")
    return found


def _record(session: Session, *, adapter: Adapter, alias: str, row: Alias | None,
            action: AliasAction, old: AdapterVersion | None, new: AdapterVersion | None,
            actor: str | None, reason: str | None, gates: list[GateOut],
            event_type: str) -> None:
    """Move the alias row (``row``: as read under the lock) and append the history entry and
    the event."""
    now = utcnow()
    if new is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(Alias(adapter_id=adapter.id, name=alias, version_id=new.id,
                          updated_at=now, updated_by=actor))
    else:
        row.version, row.updated_at, row.updated_by = new, now, actor
    gate_json = [g.model_dump() for g in gates]
    about = new if new is not None else old
    session.add(AliasEvent(adapter_id=adapter.id, alias=alias, action=action,
                           from_version_id=old.id if old else None,
                           to_version_id=new.id if new else None,
                           actor=actor, reason=reason, gates=gate_json, at=now))
    events.record(session, type=event_type, adapter=adapter.name,
                  version=about.version if about is not None else None, alias=alias,
                  actor=actor,
                  payload={"action": action.value,
                           "from_version": old.version if old else None,
                           "to_version": new.version if new else None,
                           "reason": reason, "gates": gate_json})
    session.flush()


def _check_movable(adapter: Adapter, version: AdapterVersion) -> None:
    if version.status == VersionStatus.archived:
        raise VersionArchived(f"{adapter.name}:{version.version} is archived: it can no longer "
                              "be promoted or rolled back to")


def promote(session: Session, *, name: str, alias: str, version: VersionSpec,
            actor: str | None = None, reason: str | None = None,
            expect_current: int | str | None = None, force: bool = False) -> PromoteOut:
    """Point ``name@alias`` at a version (creating the alias), through the gates.

    Args:
        version: the version to promote (see ``version_in``).
        expect_current: compare-and-set: the version the alias must point at now, or
            ``"none"`` (it must not exist); None: no check.
        force: skip failing gates; recorded as ``force`` with every gate's result. Access
            control (a later issue) requires the admin scope for it before this is called.

    Returns:
        What moved, from where, and every gate as evaluated (``action`` ``none`` when the
        alias already pointed there: nothing is recorded then).

    Raises:
        InvalidAlias, AdapterNotFound, VersionNotFound, AliasNotFound, InvalidReference,
        VersionArchived, AliasMoved (``expect_current`` did not hold), GateFailed (nothing
        changed; the message names every failing gate).
    """
    validate_alias(alias)
    adapter = lock_adapter(session, name)
    target = version_in(session, adapter, version)
    _check_movable(adapter, target)
    row = get_alias(session, adapter_id=adapter.id, alias=alias)
    holder = row.version if row is not None else None
    if expect_current is not None:
        expected = None if expect_current == "none" else int(expect_current)
        now_at = holder.version if holder is not None else None
        if expected != now_at:
            raise AliasMoved(
                f"{adapter.name}@{alias} points at {_ref(adapter, holder)}, not "
                f"{'none' if expected is None else f'{adapter.name}:{expected}'} as expected "
                "(--expect-current): it moved meanwhile; nothing was changed"
            )
    if holder is not None and holder.id == target.id:
        return PromoteOut(name=adapter.name, alias=alias, version=target.version,
                          previous=target.version, gates=[], action="none")
    gates = _gates(session, adapter=adapter, alias=alias, target=target, holder=holder,
                   reason=reason)
    failed = [g for g in gates if not g.passed]
    if failed and not force:
        raise GateFailed(gate_rules.failure_message(gates))
    action = AliasAction.force if force else AliasAction.promote
    _record(session, adapter=adapter, alias=alias, row=row, action=action, old=holder,
            new=target,
            actor=actor, reason=reason, gates=gates, event_type=event_types.ALIAS_PROMOTED)
    return PromoteOut(name=adapter.name, alias=alias, version=target.version,
                      previous=holder.version if holder is not None else None, gates=gates,
                      action="force" if force else "promote")


def _gates(session: Session, *, adapter: Adapter, alias: str, target: AdapterVersion,
           holder: AdapterVersion | None, reason: str | None) -> list[GateOut]:
    return gate_rules.evaluate(session, version=target, holder=holder,
                               policy=effective_policy(session, adapter_id=adapter.id,
                                                       alias=alias),
                               reason=reason)


def check_promotion(session: Session, *, name: str, alias: str, version: VersionSpec,
                    reason: str | None = None) -> PromoteOut:
    """What ``promote`` would do now, changing nothing: every gate as it evaluates at this
    moment (the web UI shows them before the user confirms). ``action`` is ``none`` when the
    alias already points there, else ``promote`` (whatever the gates say: read ``gates``).

    Raises:
        InvalidAlias, AdapterNotFound, VersionNotFound, AliasNotFound, InvalidReference,
        VersionArchived.
    """
    validate_alias(alias)
    adapter = get_adapter(session, name)
    target = version_in(session, adapter, version)
    _check_movable(adapter, target)
    row = get_alias(session, adapter_id=adapter.id, alias=alias)
    holder = row.version if row is not None else None
    previous = holder.version if holder is not None else None
    if holder is not None and holder.id == target.id:
        return PromoteOut(name=adapter.name, alias=alias, version=target.version,
                          previous=previous, gates=[], action="none")
    gates = _gates(session, adapter=adapter, alias=alias, target=target, holder=holder,
                   reason=reason)
    return PromoteOut(name=adapter.name, alias=alias, version=target.version,
                      previous=previous, gates=gates, action="promote")


def _made_holder(session: Session, *, adapter_id: int, alias: str, version_id: int,
                 before: int | None) -> AliasEvent | None:
    """The newest move (older than event ``before``) that pointed the alias at a version."""
    stmt = select(AliasEvent).where(AliasEvent.adapter_id == adapter_id,
                                    AliasEvent.alias == alias,
                                    AliasEvent.to_version_id == version_id)
    if before is not None:
        stmt = stmt.where(AliasEvent.id < before)
    return session.scalars(stmt.order_by(AliasEvent.id.desc()).limit(1)).one_or_none()


def _previous_holder(session: Session, *, adapter: Adapter, alias: str,
                     current: AdapterVersion) -> AdapterVersion:
    """The ``from_version`` of the move that made the current holder; if that one is
    archived, the ``from_version`` of the move that made *it* holder, and so on.

    Each step looks only at older moves, so the walk ends.
    """
    move = _made_holder(session, adapter_id=adapter.id, alias=alias, version_id=current.id,
                        before=None)
    skipped: list[str] = []
    while move is not None and move.from_version_id is not None:
        candidate = session.get_one(AdapterVersion, move.from_version_id)
        if candidate.status != VersionStatus.archived and candidate.id != current.id:
            return candidate
        if candidate.status == VersionStatus.archived:
            skipped.append(f"{adapter.name}:{candidate.version}")
        move = _made_holder(session, adapter_id=adapter.id, alias=alias,
                            version_id=candidate.id, before=move.id)
    also = f" (archived, skipped: {', '.join(skipped)})" if skipped else ""
    raise NoRollbackTarget(
        f"nothing to roll back to: {adapter.name}@{alias} had no earlier version before "
        f"{adapter.name}:{current.version}{also}"
    )


def rollback(session: Session, *, name: str, alias: str, to: VersionSpec | None = None,
             actor: str | None = None, reason: str | None = None) -> RollbackOut:
    """Point ``name@alias`` back at the version it held before the current one (or at ``to``,
    which must have held it at some point). Gates are not re-run: the target passed them when
    it was promoted; it must exist and not be archived.

    Raises:
        InvalidAlias, AdapterNotFound, AliasNotFound, VersionNotFound, InvalidReference,
        VersionArchived, NoRollbackTarget (no earlier version, or ``to`` never held the alias,
        or already holds it).
    """
    validate_alias(alias)
    adapter = lock_adapter(session, name)
    row = get_alias(session, adapter_id=adapter.id, alias=alias)
    if row is None:
        raise AliasNotFound(f"no alias {alias!r} on adapter {adapter.name!r}: nothing to roll "
                            "back")
    current = row.version
    if to is None:
        target = _previous_holder(session, adapter=adapter, alias=alias, current=current)
    else:
        target = version_in(session, adapter, to)
        _check_movable(adapter, target)
        if target.id == current.id:
            raise NoRollbackTarget(f"{adapter.name}@{alias} already points at "
                                   f"{adapter.name}:{target.version}")
        if _made_holder(session, adapter_id=adapter.id, alias=alias, version_id=target.id,
                        before=None) is None:
            raise NoRollbackTarget(
                f"{adapter.name}:{target.version} never held {adapter.name}@{alias}; promote "
                f"it instead: adapter-registry promote {adapter.name}:{target.version} "
                f"--alias {alias}"
            )
    _record(session, adapter=adapter, alias=alias, row=row, action=AliasAction.rollback,
            old=current, new=target, actor=actor, reason=reason, gates=[],
            event_type=event_types.ALIAS_ROLLED_BACK)
    return RollbackOut(name=adapter.name, alias=alias, version=target.version,
                       previous=current.version)


def delete_alias(session: Session, *, name: str, alias: str, actor: str | None = None,
                 reason: str | None = None) -> AliasDeletedOut:
    """Delete ``name@alias`` (recorded as a ``delete`` move; the history stays).

    Raises:
        InvalidAlias, AdapterNotFound, AliasNotFound, AliasProtected.
    """
    validate_alias(alias)
    adapter = lock_adapter(session, name)
    row = get_alias(session, adapter_id=adapter.id, alias=alias)
    if row is None:
        raise AliasNotFound(f"no alias {alias!r} on adapter {adapter.name!r}")
    policy = effective_policy(session, adapter_id=adapter.id, alias=alias)
    if policy is not None and policy.protected:
        raise AliasProtected(
            f"{adapter.name}@{alias} is protected by its promotion policy and cannot be "
            "deleted; set the policy without --protected first"
        )
    current = row.version
    _record(session, adapter=adapter, alias=alias, row=row, action=AliasAction.delete,
            old=current, new=None, actor=actor, reason=reason, gates=[],
            event_type=event_types.ALIAS_DELETED)
    return AliasDeletedOut(name=adapter.name, alias=alias, previous=current.version)


def list_aliases(session: Session, *, name: str) -> list[AliasOut]:
    """Every alias of ``name`` with its version.

    Raises:
        InvalidName, AdapterNotFound.
    """
    return [AliasOut(name=name, alias=a.name, version=a.version.version,
                     updated_at=a.updated_at, updated_by=a.updated_by)
            for a in alias_rows(session, name=name)]


def history(session: Session, *, name: str, alias: str | None = None,
            limit: int | None = None) -> list[HistoryEntryOut]:
    """Every move of ``name``'s aliases (or of one alias), newest first.

    Raises:
        InvalidName, InvalidAlias, InvalidInput (limit), AdapterNotFound.
    """
    if alias is not None:
        validate_alias(alias)
    if limit is not None and not 1 <= limit <= MAX_HISTORY:
        raise InvalidInput(f"limit must be between 1 and {MAX_HISTORY}")
    adapter = get_adapter(session, name)
    old, new = aliased(AdapterVersion), aliased(AdapterVersion)
    stmt = (
        select(AliasEvent, old.version, new.version)
        .outerjoin(old, old.id == AliasEvent.from_version_id)
        .outerjoin(new, new.id == AliasEvent.to_version_id)
        .where(AliasEvent.adapter_id == adapter.id)
        .order_by(AliasEvent.id.desc())
    )
    if alias is not None:
        stmt = stmt.where(AliasEvent.alias == alias)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        HistoryEntryOut(id=e.id, alias=e.alias, action=e.action.value, from_version=from_v,
                        to_version=to_v, actor=e.actor, reason=e.reason, at=e.at,
                        gates=[GateOut.model_validate(g) for g in e.gates or []])
        for e, from_v, to_v in session.execute(stmt)
    ]


def archive(session: Session, *, name: str, version: int, actor: str | None = None,
            reason: str | None = None) -> AdapterVersion:
    """Set a version ``archived``: it can no longer be promoted or rolled back to. Archiving
    an archived version changes nothing.

    Raises:
        AdapterNotFound, VersionNotFound, VersionAliased (an alias points at it; named).
    """
    adapter = lock_adapter(session, name)
    target = version_in(session, adapter, version)
    if target.status == VersionStatus.archived:
        return target
    holding = list(session.scalars(
        select(Alias.name).where(Alias.version_id == target.id).order_by(Alias.name)))
    if holding:
        names = ", ".join(f"{adapter.name}@{a}" for a in holding)
        verb = "points" if len(holding) == 1 else "point"
        raise VersionAliased(
            f"{adapter.name}:{target.version} is what {names} {verb} at: move the alias "
            f"(promote another version) or delete it (adapter-registry alias rm "
            f"{adapter.name} {holding[0]}) first"
        )
    previous = target.status.value
    target.status = VersionStatus.archived
    events.record(session, type=event_types.VERSION_ARCHIVED, adapter=adapter.name,
                  version=target.version, actor=actor,
                  payload={"previous_status": previous, "reason": reason})
    session.flush()
    return target
