"""Stored compatibility verdicts: compute (at push, at base registration, on demand) and query."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from registry.adapters import service as adapters
from registry.base_models import service as bases
from registry.compat.manifest import BaseManifest, base_manifest
from registry.compat.rules import Verdict, check_compatibility
from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import Adapter, AdapterVersion, BaseModel, Compatibility
from registry.formats import TensorInfo, parse_adapter_config

METHOD_STATIC = "static"


def _manifest(base: BaseModel) -> BaseManifest:
    tensors = {n: TensorInfo.from_json(d) for n, d in base.tensor_manifest.items()}
    return base_manifest(base.config, tensors, revision=base.revision)


def evaluate(session: Session, *, version: AdapterVersion, base: BaseModel,
             manifest: BaseManifest | None = None) -> Verdict:
    """The static verdict for one pair, from the two stored manifests (no tensor bytes)."""
    config = parse_adapter_config(json.dumps(version.adapter_config).encode())
    tensors = {n: TensorInfo.from_json(d) for n, d in version.tensor_manifest.items()}
    declared = version.declared_base_model
    declared_base = bases.find_base(session, declared) if declared else None
    return check_compatibility(
        config,
        tensors,
        manifest or _manifest(base),
        base_name=base.name,
        declared_base_name=declared,
        declared_base_fingerprint=declared_base.fingerprint if declared_base else None,
    )


def _store(session: Session, *, version: AdapterVersion, base: BaseModel,
           verdict: Verdict) -> Compatibility:
    data = verdict.to_json()
    values = {
        "compatible": verdict.compatible,
        "method": METHOD_STATIC,
        "reasons": data["reasons"],
        "warnings": data["warnings"],
        "serving": data["serving"],
        "checked_at": utcnow(),
    }
    pair = (Compatibility.adapter_version_id == version.id,
            Compatibility.base_model_id == base.id)
    # Insert-or-nothing, then update: two requests computing the same verdict at once both
    # succeed instead of one failing on the unique pair.
    insert_ignore(session, Compatibility,
                  {"adapter_version_id": version.id, "base_model_id": base.id, **values},
                  keys=["adapter_version_id", "base_model_id"])
    session.execute(update(Compatibility).where(*pair).values(**values))
    return session.scalars(
        select(Compatibility).where(*pair).execution_options(populate_existing=True)
    ).one()


def _check_all(session: Session, pairs: Iterable[tuple[AdapterVersion, BaseModel]]) -> None:
    manifests: dict[int, BaseManifest] = {}
    for version, base in pairs:
        if base.id not in manifests:
            manifests[base.id] = _manifest(base)
        _store(session, version=version, base=base,
               verdict=evaluate(session, version=version, base=base,
                                manifest=manifests[base.id]))
    session.flush()


def refresh_for_version(session: Session, *, version: AdapterVersion) -> None:
    """Verdicts for a new version against every registered base model (there are few)."""
    _check_all(session, ((version, b) for b in bases.list_bases(session)))


def refresh_for_base(session: Session, *, base: BaseModel) -> None:
    """Verdicts for a new base against the versions that could fit it.

    Candidates: versions linked to a base of the same model type, versions that declare this
    base by name, and versions linked to no base at all.
    """
    same_type = select(BaseModel.id).where(BaseModel.model_type == base.model_type)
    stmt = select(AdapterVersion).where(
        or_(
            AdapterVersion.base_model_id.in_(same_type),
            AdapterVersion.declared_base_model == base.name,
            AdapterVersion.base_model_id.is_(None),
        )
    )
    _check_all(session, ((v, base) for v in session.scalars(stmt)))


def verdict_for(session: Session, *, name: str, version: int | None, base: str,
                base_revision: str | None = None) -> dict[str, Any]:
    """The verdict for ``name:version`` on ``base``, computed now if never computed."""
    v = adapters.get_version(session, name=name, version=version)
    b = bases.get_base(session, name=base, revision=base_revision)
    row = session.scalars(
        select(Compatibility).where(
            Compatibility.adapter_version_id == v.id, Compatibility.base_model_id == b.id
        )
    ).one_or_none()
    if row is None:
        row = _store(session, version=v, base=b, verdict=evaluate(session, version=v, base=b))
        session.flush()
    return {
        "name": v.adapter.name,
        "version": v.version,
        "base": b.name,
        "base_revision": b.revision,
        "compatible": row.compatible,
        "reasons": row.reasons,
        "warnings": row.warnings,
        "serving": row.serving,
        "method": row.method,
        "checked_at": row.checked_at.isoformat(),
    }


def compatible_versions(session: Session, *, base: str,
                        base_revision: str | None = None) -> list[dict[str, Any]]:
    """Every adapter version with a stored compatible verdict for ``base`` (one indexed query)."""
    b = bases.get_base(session, name=base, revision=base_revision)
    rows = session.execute(
        select(Adapter.name, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .join(Compatibility, Compatibility.adapter_version_id == AdapterVersion.id)
        .where(Compatibility.base_model_id == b.id, Compatibility.compatible.is_(True))
        .order_by(Adapter.name, AdapterVersion.version)
    ).all()
    return [{"name": name, "version": number} for name, number in rows]


def compatible_bases(session: Session, *, name: str, version: int | None) -> list[dict[str, Any]]:
    """Every registered base model the version fits (missing verdicts are computed first)."""
    v = adapters.get_version(session, name=name, version=version)
    known = set(session.scalars(
        select(Compatibility.base_model_id).where(Compatibility.adapter_version_id == v.id)
    ))
    _check_all(session, ((v, b) for b in bases.list_bases(session) if b.id not in known))
    rows = session.execute(
        select(BaseModel.name, BaseModel.revision)
        .join(Compatibility, Compatibility.base_model_id == BaseModel.id)
        .where(Compatibility.adapter_version_id == v.id, Compatibility.compatible.is_(True))
        .order_by(BaseModel.name, BaseModel.created_at)
    ).all()
    return [{"name": n, "revision": r} for n, r in rows]


def linked_verdict(session: Session, *, version: AdapterVersion) -> Compatibility | None:
    if version.base_model_id is None:
        return None
    return session.scalars(
        select(Compatibility).where(
            Compatibility.adapter_version_id == version.id,
            Compatibility.base_model_id == version.base_model_id,
        )
    ).one_or_none()
