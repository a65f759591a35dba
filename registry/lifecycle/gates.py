"""Promotion gates: the two rules that always hold, and the ones a policy turns on.

Always: a version whose validation failed is refused, and so is a version statically
incompatible with its linked base (no linked base: nothing to check). A policy (the adapter's
own for the alias, else the registry-wide default) may add: require validated, min/max
``SUITE.METRIC`` thresholds, no regression against the version the alias points at now (same
base, same suite version; the metric's direction comes from ``registry.evals.metrics``), a
required base, and ``protected`` (a move needs a reason). Every gate is evaluated, so a refusal
names all that failed with the values compared.

The comparisons are pure functions (unit-tested without a database); ``evaluate`` reads the
rows they compare.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.base_models.queries import find_base
from registry.compat import service as compat
from registry.db.models import AdapterVersion, EvalScore, PromotionPolicy, VersionStatus
from registry.evals.metrics import lower_is_better, split_name
from registry.evals.queries import latest_score
from registry.lifecycle.schemas import GateOut


def _num(value: float) -> str:
    return f"{value:g}"


def status_gate(status: str, *, require_validated: bool) -> GateOut:
    """Without a policy only a failed validation refuses; with ``require_validated`` anything
    but ``validated`` does."""
    if require_validated:
        ok = status == VersionStatus.validated
        return GateOut(gate="validated", passed=ok,
                       detail="validated" if ok else f"not validated (status: {status})")
    ok = status != VersionStatus.failed
    return GateOut(gate="not-failed", passed=ok,
                   detail=f"status: {status}" if ok else f"not validated (status: {status})")


def threshold_gate(kind: str, key: str, value: float | None, limit: float) -> GateOut:
    """``min``: value >= limit; ``max``: value <= limit. A missing score fails."""
    gate = f"{kind}:{key}"
    if value is None:
        return GateOut(gate=gate, passed=False, detail=f"{key}: no score ({kind} {_num(limit)})")
    if kind == "min":
        ok = value >= limit
        op = ">=" if ok else "<"
    else:
        ok = value <= limit
        op = "<=" if ok else ">"
    return GateOut(gate=gate, passed=ok, detail=f"{key} {_num(value)} {op} {kind} {_num(limit)}")


def regression_gate(key: str, candidate: float | None, current: float | None, *,
                    tolerance: float, lower_better: bool, current_ref: str | None) -> GateOut:
    """The candidate may be worse than the current holder by at most ``tolerance``.

    Args:
        candidate: the candidate's score (None: it has none, which fails).
        current: the holder's score on the same base and suite version (None: nothing to
            compare with, which passes).
        lower_better: the metric's direction (``registry.evals.metrics.lower_is_better``).
        current_ref: ``NAME:VERSION`` of the holder (None: the alias does not exist yet).
    """
    gate = f"no-regression:{key}"
    direction = "lower is better" if lower_better else "higher is better"
    if candidate is None:
        return GateOut(gate=gate, passed=False, detail=f"{key}: no score (no-regression)")
    if current_ref is None:
        return GateOut(gate=gate, passed=True,
                       detail=f"{key} {_num(candidate)}: nothing to compare with (new alias)")
    if current is None:
        return GateOut(gate=gate, passed=True,
                       detail=f"{key} {_num(candidate)}: {current_ref} has no score on the same "
                              "base and suite version")
    if lower_better:
        ok = candidate <= current + tolerance
        op, sign = ("<=" if ok else ">"), "+"
    else:
        ok = candidate >= current - tolerance
        op, sign = (">=" if ok else "<"), "-"
    tol = f" {sign} tolerance {_num(tolerance)}" if tolerance else ""
    bound = f"{_num(current)} ({current_ref}){tol}"
    return GateOut(gate=gate, passed=ok,
                   detail=f"{key} {_num(candidate)} {op} {bound} ({direction})")


def base_gate(base_name: str | None, required: str) -> GateOut:
    ok = base_name == required
    found = f"base is {base_name}" if base_name else "linked to no base"
    return GateOut(gate="base", passed=ok,
                   detail=f"{found}" + ("" if ok else f", policy requires {required}"))


def protected_gate(reason: str | None) -> GateOut:
    ok = bool(reason and reason.strip())
    return GateOut(gate="protected", passed=ok,
                   detail="reason given" if ok else "protected alias: a move needs --reason")


def failure_message(gates: list[GateOut]) -> str:
    """``gate failed: A; B`` naming every failing gate with its values."""
    return "gate failed: " + "; ".join(g.detail for g in gates if not g.passed)


def _compat_gate(session: Session, version: AdapterVersion) -> GateOut | None:
    base = version.base_model
    if base is None:
        return None
    linked = compat.linked_verdict(version)
    if linked is None:  # verdicts are stored at push; computed here if one is missing
        out = compat.verdict_for(session, version=version, base=base, find_base=find_base)
        compatible, reasons = out.compatible, [r.message for r in out.reasons]
    else:
        compatible, reasons = linked.compatible, [r.message for r in linked.reasons]
    where = f"{base.name}@{base.revision}"
    if compatible:
        return GateOut(gate="compatible", passed=True, detail=f"compatible with {where}")
    why = f": {reasons[0]}" if reasons else ""
    return GateOut(gate="compatible", passed=False,
                   detail=f"incompatible with its base {where}{why}")


def _holder_score(session: Session, *, holder_id: int, like: EvalScore) -> EvalScore | None:
    """The holder's newest score of the same suite, metric, base and suite version as ``like``
    (NULL matches NULL: both scored with no base, or on an unversioned suite)."""
    stmt = select(EvalScore).where(
        EvalScore.adapter_version_id == holder_id,
        EvalScore.suite == like.suite,
        EvalScore.metric == like.metric,
        EvalScore.base_model_id.is_(None) if like.base_model_id is None
        else EvalScore.base_model_id == like.base_model_id,
        EvalScore.suite_version.is_(None) if like.suite_version is None
        else EvalScore.suite_version == like.suite_version,
    )
    return session.scalars(stmt.order_by(EvalScore.id.desc()).limit(1)).one_or_none()


def _score(session: Session, version: AdapterVersion, key: str) -> EvalScore | None:
    # On the linked base when there is one; a version linked to none: its newest on any base.
    suite, metric = split_name(key)
    return latest_score(session, version_id=version.id, suite=suite, metric=metric,
                        base_id=version.base_model_id)


def evaluate(session: Session, *, version: AdapterVersion, holder: AdapterVersion | None,
             policy: PromotionPolicy | None, reason: str | None) -> list[GateOut]:
    """Every gate for promoting ``version`` over ``holder`` (the alias's version now, or None).

    Returns:
        The gates in a fixed order: the policy's score gates (min, max, no-regression), the
        status gate, compatibility with the linked base, then the policy's base and protected
        gates.
    """
    gates: list[GateOut] = []
    if policy is not None:
        for key, limit in sorted(policy.min_scores.items()):
            score = _score(session, version, key)
            gates.append(threshold_gate("min", key, score.value if score else None,
                                        float(limit)))
        for key, limit in sorted(policy.max_scores.items()):
            score = _score(session, version, key)
            gates.append(threshold_gate("max", key, score.value if score else None,
                                        float(limit)))
        for key, tolerance in sorted(policy.no_regression.items()):
            score = _score(session, version, key)
            current = None
            if score is not None and holder is not None:
                held = _holder_score(session, holder_id=holder.id, like=score)
                current = held.value if held else None
            gates.append(regression_gate(
                key, score.value if score else None, current,
                tolerance=float(tolerance or 0.0),
                lower_better=lower_is_better(split_name(key)[1]),
                current_ref=f"{holder.adapter.name}:{holder.version}" if holder else None))
    gates.append(status_gate(version.status.value,
                             require_validated=bool(policy and policy.require_validated)))
    compat_gate = _compat_gate(session, version)
    if compat_gate is not None:
        gates.append(compat_gate)
    if policy is not None and policy.require_base:
        gates.append(base_gate(version.base_model.name if version.base_model else None,
                               policy.require_base))
    if policy is not None and policy.protected:
        gates.append(protected_gate(reason))
    return gates
