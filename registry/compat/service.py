"""Stored compatibility verdicts: compute them for resolved rows, and answer queries.

This service takes rows its callers resolved (adapters and base models look themselves up in
their own ``queries`` modules), so it depends on neither domain: ``adapters → compat ←
base_models``. The one lookup it needs by name, a version's declared base, is passed in as
``find_base``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from registry.compat.manifest import BaseManifest, base_manifest
from registry.compat.rules import Verdict, check_compatibility
from registry.compat.schemas import (
    CompatibleBaseOut,
    CompatibleVersionOut,
    LinkedVerdictOut,
    VerdictOut,
)
from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import Adapter, AdapterVersion, BaseModelRow, Compatibility
from registry.formats import AdapterConfig, TensorInfo, parse_adapter_config
from registry.memo import Memo

METHOD_STATIC = "static"
# A worker loaded the adapter onto the base: the verdict is what the load showed.
METHOD_VALIDATED = "validated"

# The latest registered base of a name, or None (base_models.queries.find_base).
FindBase = Callable[[Session, str | None], BaseModelRow | None]


# A base's manifest, parsed and fingerprinted, kept by what identifies its content (the digest
# of its files, or the hub's content id, with revision and fingerprint): the same key always
# means the same config and tensors, in any database this process serves. A manifest is built
# once per process instead of on every push (a 7B base has ~300 tensors to parse and hash).
# Bounded: a registry has few bases; past the bound the oldest entry goes.
MANIFESTS_KEPT = 64
_manifests: Memo[tuple[str, str, str], BaseManifest] = Memo(MANIFESTS_KEPT)


def manifests_kept(bases: Iterable[BaseModelRow]) -> bool:
    """Whether this process keeps the parsed manifest of every one of ``bases`` (then their
    config and tensor manifest need not be loaded)."""
    return all((b.content_id, b.revision, b.fingerprint) in _manifests for b in bases)


def _manifest(base: BaseModelRow) -> BaseManifest:
    key = (base.content_id, base.revision, base.fingerprint)
    manifest = _manifests.get(key)
    if manifest is None:
        tensors = {n: TensorInfo.from_json(d) for n, d in base.tensor_manifest.items()}
        manifest = base_manifest(base.config, tensors, revision=base.revision)
        _manifests.put(key, manifest)
    return manifest


def evaluate(*, version: AdapterVersion, base: BaseModelRow, declared_base: BaseModelRow | None,
             manifest: BaseManifest | None = None, config: AdapterConfig | None = None,
             tensors: Mapping[str, TensorInfo] | None = None) -> Verdict:
    """The static verdict for one pair, from the two stored manifests (no tensor bytes).

    Args:
        version: the adapter version.
        base: the base model it is checked against.
        declared_base: the registered base the version's config names, if any (its fingerprint
            tells a renamed copy of the same weights from another model).
        manifest: ``base``'s manifest, when the caller already built it.
        config, tensors: the version's parsed config and tensor manifest, when the caller
            has them (a push: its inspection), instead of parsing the stored ones again.
    """
    if config is None:
        config = parse_adapter_config(json.dumps(version.adapter_config).encode())
    if tensors is None:
        tensors = {n: TensorInfo.from_json(d) for n, d in version.tensor_manifest.items()}
    return check_compatibility(
        config,
        dict(tensors),
        manifest or _manifest(base),
        base_name=base.name,
        declared_base_name=version.declared_base_model,
        declared_base_fingerprint=declared_base.fingerprint if declared_base else None,
    )


def _store(session: Session, *, version: AdapterVersion, base: BaseModelRow,
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


# A verdict is a function of the adapter's content and the base's manifest and names: kept
# per process for a push of content this process checked before (its files' digests, given
# by the caller as ``content``), as base manifests are. Bounded like them.
VERDICTS_KEPT = 256
_kept_verdicts: Memo[Hashable, Verdict] = Memo(VERDICTS_KEPT)


def _verdicts(pairs: Iterable[tuple[AdapterVersion, BaseModelRow]], find_base: FindBase,
              session: Session, *, config: AdapterConfig | None = None,
              tensors: Mapping[str, TensorInfo] | None = None, content: Hashable = None,
              ) -> Iterator[tuple[AdapterVersion, BaseModelRow, Verdict]]:
    declared: dict[str, BaseModelRow | None] = {}
    for version, base in pairs:
        name = version.declared_base_model
        if name and name not in declared:
            declared[name] = find_base(session, name)
        declared_base = declared.get(name) if name else None
        key = None if content is None else (
            content, base.content_id, base.revision, base.fingerprint, base.name, name,
            declared_base.fingerprint if declared_base else None)
        verdict = _kept_verdicts.get(key) if key is not None else None
        if verdict is None:
            verdict = evaluate(version=version, base=base, declared_base=declared_base,
                               manifest=_manifest(base), config=config, tensors=tensors)
            if key is not None:
                _kept_verdicts.put(key, verdict)
        yield version, base, verdict


def verdicts_for_new_version(session: Session, *, version: AdapterVersion,
                             bases: Sequence[BaseModelRow], find_base: FindBase,
                             config: AdapterConfig, tensors: Mapping[str, TensorInfo],
                             content: Hashable = None) -> list[Compatibility]:
    """The verdict rows of a version not written yet, against every registered base: built
    in memory (not added to the session) for the caller to insert with the version
    (registry.adapters.writes); ``adapter_version_id`` is set once the version has its id.
    ``config`` and ``tensors`` are the push's inspection (what the version's stored config and
    manifest are made from); ``content`` identifies them (the files' digests: the same key,
    the same config and tensors), so a verdict computed before for that content is reused."""
    now = utcnow()
    rows = []
    for _, base, verdict in _verdicts(((version, b) for b in bases), find_base, session,
                                      config=config, tensors=tensors, content=content):
        data = verdict.to_json()
        rows.append(Compatibility(base_model_id=base.id, compatible=verdict.compatible,
                                  method=METHOD_STATIC, reasons=data["reasons"],
                                  warnings=data["warnings"], serving=data["serving"],
                                  checked_at=now))
    return rows


def _check_all(session: Session, pairs: Iterable[tuple[AdapterVersion, BaseModelRow]],
               find_base: FindBase) -> list[Compatibility]:
    rows = [_store(session, version=version, base=base, verdict=verdict)
            for version, base, verdict in _verdicts(pairs, find_base, session)]
    session.flush()
    return rows


def refresh_for_base(session: Session, *, base: BaseModelRow, find_base: FindBase) -> None:
    """Verdicts for a new base against the versions that could fit it.

    Candidates: versions linked to a base of the same model type, versions that declare this
    base by name, and versions linked to no base at all.
    """
    same_type = select(BaseModelRow.id).where(BaseModelRow.model_type == base.model_type)
    stmt = select(AdapterVersion).where(
        or_(
            AdapterVersion.base_model_id.in_(same_type),
            AdapterVersion.declared_base_model == base.name,
            AdapterVersion.base_model_id.is_(None),
        )
    )
    _check_all(session, ((v, base) for v in session.scalars(stmt)), find_base)


def verdict_for(session: Session, *, version: AdapterVersion, base: BaseModelRow,
                find_base: FindBase) -> VerdictOut:
    """The verdict for one pair, computed now if it never was."""
    row = session.scalars(
        select(Compatibility).where(
            Compatibility.adapter_version_id == version.id,
            Compatibility.base_model_id == base.id,
        )
    ).one_or_none()
    if row is None:
        _check_all(session, [(version, base)], find_base)
        return verdict_for(session, version=version, base=base, find_base=find_base)
    return VerdictOut(
        name=version.adapter.name,
        version=version.version,
        base=base.name,
        base_revision=base.revision,
        compatible=row.compatible,
        reasons=row.reasons,
        warnings=row.warnings,
        serving=row.serving,
        method=row.method,
        checked_at=row.checked_at,
    )


def record_validated(session: Session, *, version: AdapterVersion, base: BaseModelRow,
                     compatible: bool, reasons: list[dict[str, object]]) -> Compatibility:
    """Replace a pair's verdict with what loading it showed (``method=validated``).

    The static warnings are kept (they are about serving engines and names, which a load does
    not decide); the reasons become the load's.
    """
    row = session.scalars(
        select(Compatibility).where(Compatibility.adapter_version_id == version.id,
                                    Compatibility.base_model_id == base.id)
    ).one_or_none()
    warnings: list[object] = list(row.warnings) if row is not None else []
    serving: dict[str, object] = dict(row.serving) if row is not None else {}
    values = {"compatible": compatible, "method": METHOD_VALIDATED, "reasons": reasons,
              "warnings": warnings, "serving": serving, "checked_at": utcnow()}
    insert_ignore(session, Compatibility,
                  {"adapter_version_id": version.id, "base_model_id": base.id, **values},
                  keys=["adapter_version_id", "base_model_id"])
    session.execute(update(Compatibility).where(
        Compatibility.adapter_version_id == version.id,
        Compatibility.base_model_id == base.id).values(**values))
    session.flush()
    return session.scalars(
        select(Compatibility).where(Compatibility.adapter_version_id == version.id,
                                    Compatibility.base_model_id == base.id)
        .execution_options(populate_existing=True)
    ).one()


def compatible_versions(session: Session, *, base: BaseModelRow) -> list[CompatibleVersionOut]:
    """Every adapter version with a stored compatible verdict for ``base`` (one indexed query)."""
    rows = session.execute(
        select(Adapter.name, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .join(Compatibility, Compatibility.adapter_version_id == AdapterVersion.id)
        .where(Compatibility.base_model_id == base.id, Compatibility.compatible.is_(True))
        .order_by(Adapter.name, AdapterVersion.version)
    ).all()
    return [CompatibleVersionOut(name=name, version=number) for name, number in rows]


def compatible_bases(session: Session, *, version: AdapterVersion,
                     bases: Sequence[BaseModelRow], find_base: FindBase
                     ) -> list[CompatibleBaseOut]:
    """Every base model of ``bases`` the version fits (missing verdicts are computed first)."""
    known = set(session.scalars(
        select(Compatibility.base_model_id)
        .where(Compatibility.adapter_version_id == version.id)
    ))
    _check_all(session, ((version, b) for b in bases if b.id not in known), find_base)
    rows = session.execute(
        select(BaseModelRow.name, BaseModelRow.revision)
        .join(Compatibility, Compatibility.base_model_id == BaseModelRow.id)
        .where(Compatibility.adapter_version_id == version.id,
               Compatibility.compatible.is_(True))
        .order_by(BaseModelRow.name, BaseModelRow.created_at)
    ).all()
    return [CompatibleBaseOut(name=n, revision=r) for n, r in rows]


def linked_verdict(version: AdapterVersion) -> LinkedVerdictOut | None:
    """The stored verdict against the version's linked base (loaded with the version)."""
    for verdict in version.verdicts:
        if verdict.base_model_id == version.base_model_id:
            return verdict_out(verdict)
    return None


def verdict_out(verdict: Compatibility) -> LinkedVerdictOut:
    return LinkedVerdictOut(compatible=verdict.compatible, reasons=verdict.reasons,
                            warnings=verdict.warnings, serving=verdict.serving)
