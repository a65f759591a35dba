"""Adapter routes: create a version from uploaded blobs, list, show, tensor manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from registry.adapters import service
from registry.adapters.schemas import AdapterOut, CreateVersionIn, LineageOut, VersionOut
from registry.api.deps import AdapterName, SessionDep, SettingsDep, StoreDep, VersionNumber

router = APIRouter(prefix="/api/v1/adapters", tags=["adapters"])


@router.get("", response_model=list[AdapterOut])
def list_adapters(session: SessionDep) -> list[AdapterOut]:
    return service.list_adapters(session)


@router.post(
    "/{name:path}/versions",
    response_model=VersionOut,
    status_code=201,
    responses={200: {"description": "idempotency key matched an existing version"}},
)
def create_version(
    name: AdapterName,
    body: CreateVersionIn,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
) -> VersionOut:
    version, created = service.create_version(
        session, store, name=name, body=body, settings=settings
    )
    if not created:
        response.status_code = 200
    return service.to_out(version)


@router.get("/{name:path}/versions", response_model=list[VersionOut])
def list_versions(name: AdapterName, session: SessionDep) -> list[VersionOut]:
    return [service.to_out(v) for v in service.list_versions(session, name=name)]


@router.get("/{name:path}/versions/latest", response_model=VersionOut)
def latest_version(name: AdapterName, session: SessionDep) -> VersionOut:
    return service.to_out(service.get_version(session, name=name, version=None))


@router.get("/{name:path}/versions/{version}/tensors")
def version_tensors(
    name: AdapterName, version: VersionNumber, session: SessionDep
) -> dict[str, Any]:
    return service.tensor_manifest(session, name=name, version=version)


@router.get("/{name:path}/versions/{version}/lineage", response_model=LineageOut)
def version_lineage(name: AdapterName, version: VersionNumber, session: SessionDep) -> LineageOut:
    """Ancestors (parent first), descendants (breadth-first, forks in other adapters included)
    and every merged export of each; at most 1,000 versions per direction."""
    return service.lineage(session, name=name, version=version)


@router.get("/{name:path}/versions/{version}", response_model=VersionOut)
def get_version(name: AdapterName, version: VersionNumber, session: SessionDep) -> VersionOut:
    return service.to_out(service.get_version(session, name=name, version=version))
