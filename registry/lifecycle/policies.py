"""Promotion policies: per (adapter, alias), or a registry-wide default for an alias.

The policy that applies to a promotion is the adapter's own for that alias when it has one,
else the default for the alias, else none (only the two rules that always hold). An adapter's
own policy replaces the default whole, so it can also relax it; ``policy show`` says which one
applies.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.adapters.queries import get_adapter
from registry.base_models.queries import get_base
from registry.db.base import utcnow
from registry.db.dialect import add_unless_exists
from registry.db.models import Adapter, PromotionPolicy
from registry.errors import InvalidInput, PolicyNotFound
from registry.evals.metrics import split_name
from registry.lifecycle.schemas import PolicyIn, PolicyOut
from registry.refs import validate_alias

MAX_GATES = 100  # thresholds per policy


def effective_policy(session: Session, *, adapter_id: int, alias: str) -> PromotionPolicy | None:
    """The adapter's own policy for ``alias``, else the registry-wide default, else None."""
    rows = session.scalars(
        select(PromotionPolicy).where(
            PromotionPolicy.alias == alias,
            (PromotionPolicy.adapter_id == adapter_id) | PromotionPolicy.adapter_id.is_(None),
        )
    ).all()
    own = [p for p in rows if p.adapter_id is not None]
    return own[0] if own else (rows[0] if rows else None)


def _check(session: Session, body: PolicyIn) -> None:
    # Values are finite and tolerances >= 0 by the schema; the names are checked here.
    if len(body.min_scores) + len(body.max_scores) + len(body.no_regression) > MAX_GATES:
        raise InvalidInput(f"at most {MAX_GATES} score gates per policy")
    for key in [*body.min_scores, *body.max_scores, *body.no_regression]:
        split_name(key)
    if body.require_base is not None:
        get_base(session, name=body.require_base)  # a typo would block every promotion


def set_policy(session: Session, *, name: str | None, alias: str,
               body: PolicyIn) -> PolicyOut:
    """Set the whole policy of ``name@alias`` (``name`` None: the default for ``alias``).

    Raises:
        InvalidAlias, InvalidInput (a malformed SUITE.METRIC, a non-finite value, a negative
        tolerance), AdapterNotFound, BaseModelNotFound (``require_base``).
    """
    validate_alias(alias)
    adapter = get_adapter(session, name) if name is not None else None
    _check(session, body)
    values = {
        "require_validated": body.require_validated,
        "min_scores": dict(body.min_scores),
        "max_scores": dict(body.max_scores),
        "no_regression": dict(body.no_regression),
        "require_base": body.require_base,
        "protected": body.protected,
        "updated_at": utcnow(),
        "updated_by": body.actor,
    }
    row = _find(session, adapter, alias)
    if row is None:
        row = PromotionPolicy(adapter_id=adapter.id if adapter else None, alias=alias, **values)
        if not add_unless_exists(session, row):  # a concurrent set won: update that one
            row = _find(session, adapter, alias)
            assert row is not None
    for key, value in values.items():
        setattr(row, key, value)
    session.flush()
    return to_out(row, adapter.name if adapter else None)


def _find(session: Session, adapter: Adapter | None, alias: str) -> PromotionPolicy | None:
    owner = (PromotionPolicy.adapter_id == adapter.id if adapter is not None
             else PromotionPolicy.adapter_id.is_(None))
    return session.scalars(
        select(PromotionPolicy).where(owner, PromotionPolicy.alias == alias)
        .execution_options(populate_existing=True)
    ).one_or_none()


def delete_policy(session: Session, *, name: str | None, alias: str) -> None:
    """Remove the policy of ``name@alias`` (``name`` None: the default for ``alias``).

    Raises:
        InvalidAlias, AdapterNotFound, PolicyNotFound.
    """
    validate_alias(alias)
    adapter = get_adapter(session, name) if name is not None else None
    row = _find(session, adapter, alias)
    if row is None:
        which = f"{name}@{alias}" if name else f"the default for {alias!r}"
        raise PolicyNotFound(f"no promotion policy for {which}")
    session.delete(row)
    session.flush()


def list_policies(session: Session, *, name: str | None) -> list[PolicyOut]:
    """The policies that apply to ``name``'s aliases (its own, and the defaults it does not
    override), by alias; ``name`` None: the defaults.

    Raises:
        InvalidName, AdapterNotFound.
    """
    defaults = {p.alias: p for p in session.scalars(
        select(PromotionPolicy).where(PromotionPolicy.adapter_id.is_(None)))}
    if name is None:
        return [to_out(defaults[a], None) for a in sorted(defaults)]
    adapter = get_adapter(session, name)
    own = {p.alias: p for p in session.scalars(
        select(PromotionPolicy).where(PromotionPolicy.adapter_id == adapter.id))}
    applies = {**{a: to_out(p, None) for a, p in defaults.items()},
               **{a: to_out(p, adapter.name) for a, p in own.items()}}
    return [applies[a] for a in sorted(applies)]


def to_out(p: PromotionPolicy, adapter: str | None) -> PolicyOut:
    return PolicyOut(adapter=adapter, alias=p.alias,
                     scope="adapter" if p.adapter_id is not None else "default",
                     require_validated=p.require_validated, min_scores=p.min_scores,
                     max_scores=p.max_scores, no_regression=p.no_regression,
                     require_base=p.require_base, protected=p.protected,
                     updated_at=p.updated_at, updated_by=p.updated_by)
