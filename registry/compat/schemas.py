"""Shapes of compatibility answers (`compat --json`, the compat routes, a version's verdict)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class FindingOut(BaseModel):
    """One reason or warning (see registry.compat.findings for the codes)."""

    code: str
    message: str
    module: str | None = None
    tensor: str | None = None
    expected: Any = None
    found: Any = None


class ServingOut(BaseModel):
    """Whether a serving engine (vLLM, LoRAX) loads the adapter, and if not, why."""

    supported: bool
    reasons: list[FindingOut] = Field(default_factory=list)


class LinkedVerdictOut(BaseModel):
    """The verdict against a version's linked base model, as the version object shows it."""

    compatible: bool
    reasons: list[FindingOut]
    warnings: list[FindingOut]
    serving: dict[str, ServingOut]


class VerdictOut(BaseModel):
    """``compat REF --base B --json``: the verdict for one (version, base) pair."""

    name: str
    version: int
    base: str
    base_revision: str
    compatible: bool
    reasons: list[FindingOut]
    warnings: list[FindingOut]
    serving: dict[str, ServingOut]
    method: str = Field(description="'static': from tensor shapes only; 'validated': a worker "
                                    "loaded the adapter onto the base")
    checked_at: datetime


class CompatibleVersionOut(BaseModel):
    """One entry of ``compat --base B --json``."""

    name: str
    version: int


class CompatibleBaseOut(BaseModel):
    """One entry of ``compat REF --json``."""

    name: str
    revision: str
