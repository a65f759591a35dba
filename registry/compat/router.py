"""Compatibility routes: a verdict for one pair, and "what fits" in both directions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from registry.api.deps import AdapterName, SessionDep
from registry.compat import service

router = APIRouter(prefix="/api/v1", tags=["compatibility"])
BaseName = Annotated[str, Query(max_length=200, description="base model name")]
BaseRevision = Annotated[str | None, Query(max_length=200, description="default: latest")]
VersionOrLatest = Annotated[str, "a version number or 'latest'"]


def _version(value: str) -> int | None:
    from registry.errors import InvalidReference

    if value == "latest":
        return None
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise InvalidReference(f"invalid version {value!r}: an integer from 1, or 'latest'")
    return int(value)


@router.get("/compat")
def compatible_versions(session: SessionDep, base: BaseName,
                        base_revision: BaseRevision = None) -> list[dict[str, Any]]:
    """Every adapter version statically compatible with the base model."""
    return service.compatible_versions(session, base=base, base_revision=base_revision)


@router.get("/adapters/{name:path}/versions/{version}/compat")
def version_compat(name: AdapterName, version: VersionOrLatest, session: SessionDep,
                   base: Annotated[str | None, Query(max_length=200)] = None,
                   base_revision: BaseRevision = None) -> Any:
    """With ``base``: the verdict for that pair. Without: every base model the version fits."""
    number = _version(version)
    if base is None:
        return service.compatible_bases(session, name=name, version=number)
    return service.verdict_for(session, name=name, version=number, base=base,
                               base_revision=base_revision)
