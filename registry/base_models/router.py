"""Base model routes: register, list, show, tensor manifest."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from registry.api.deps import AdapterName, SessionDep, SettingsDep, StoreDep
from registry.base_models import service
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn

router = APIRouter(prefix="/api/v1/base-models", tags=["base models"])
Revision = Annotated[str | None, Query(max_length=200, description="default: latest")]


@router.post("", response_model=BaseModelOut, status_code=201,
             responses={200: {"description": "the same weights were already registered"}})
def register_base(body: RegisterBaseIn, session: SessionDep, store: StoreDep,
                  settings: SettingsDep, response: Response) -> BaseModelOut:
    base, created = service.register_base(session, store, body=body, settings=settings)
    if not created:
        response.status_code = 200
    return service.to_out(base)


@router.get("", response_model=list[BaseModelOut])
def list_bases(session: SessionDep) -> list[BaseModelOut]:
    return [service.to_out(b) for b in service.list_bases(session)]


@router.get("/{name:path}/tensors")
def base_tensors(name: AdapterName, session: SessionDep,
                 revision: Revision = None) -> dict[str, Any]:
    return service.get_base(session, name=name, revision=revision).tensor_manifest


@router.get("/{name:path}", response_model=BaseModelOut)
def show_base(name: AdapterName, session: SessionDep, revision: Revision = None) -> BaseModelOut:
    return service.to_out(service.get_base(session, name=name, revision=revision))
