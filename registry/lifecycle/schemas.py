"""Request and response shapes of the lifecycle: aliases, moves, history, policies, archive."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

VersionNumber = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# A version inside the adapter of the route: its number, or a reference to it as text
# ("3", "bot:3", "bot@staging", "bot" for the latest); a reference to another adapter is refused.
VersionSpec = VersionNumber | Annotated[StrictStr, Field(min_length=1, max_length=300)]


def _actor() -> Any:
    return Field(default=None, max_length=200,
                 description="who makes the change when the request carries no token (the "
                             "CLI's user or CI actor); a token's name always wins over it")


def _reason() -> Any:
    return Field(default=None, max_length=2000, description="why, recorded in the history")


class GateOut(BaseModel):
    """One gate as it was evaluated for a promotion."""

    gate: str = Field(description="e.g. 'not-failed', 'compatible', 'validated', "
                                  "'min:SUITE.METRIC', 'max:SUITE.METRIC', "
                                  "'no-regression:SUITE.METRIC', 'base', 'protected'")
    passed: bool
    detail: str = Field(description="the values compared")


class AliasOut(BaseModel):
    """An alias and the version it points at."""

    name: str = Field(description="the adapter")
    alias: str
    version: int
    updated_at: datetime
    updated_by: str | None


class PromoteIn(BaseModel):
    """Body of ``PUT /api/v1/adapters/{name}/aliases/{alias}``: move (or create) the alias."""

    model_config = ConfigDict(extra="forbid")

    version: VersionSpec = Field(description="a version number, or a reference to a version "
                                             "of this adapter (NAME:VERSION, NAME@ALIAS, NAME)")
    reason: str | None = _reason()
    expect_current: VersionNumber | Literal["none"] | None = Field(
        default=None,
        description="compare-and-set: the version the alias must point at now, or 'none' "
                    "(it must not exist); 409 alias_moved otherwise")
    force: bool = Field(default=False, description="skip failing gates (recorded as 'force')")
    actor: str | None = _actor()


class PromoteOut(BaseModel):
    """What ``promote --json`` prints."""

    name: str
    alias: str
    version: int
    previous: int | None = Field(description="the version the alias pointed at before")
    gates: list[GateOut]
    action: Literal["promote", "force", "none"] = Field(
        description="what the history recorded; 'none': the alias already pointed there")


class RollbackIn(BaseModel):
    """Body of ``POST /api/v1/adapters/{name}/aliases/{alias}/rollback``."""

    model_config = ConfigDict(extra="forbid")

    to: VersionSpec | None = Field(
        default=None, description="a version that held the alias before (default: the one "
                                  "before the current holder, skipping archived versions)")
    reason: str | None = _reason()
    actor: str | None = _actor()


class RollbackOut(BaseModel):
    """What ``rollback --json`` prints."""

    name: str
    alias: str
    version: int
    previous: int | None


class AliasChangeIn(BaseModel):
    """Body of ``DELETE …/aliases/{alias}`` and ``POST …/versions/{v}/archive`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = _reason()
    actor: str | None = _actor()


class AliasDeletedOut(BaseModel):
    name: str
    alias: str
    previous: int = Field(description="the version the alias pointed at")


class HistoryEntryOut(BaseModel):
    """One move of an alias (``history --json``), newest first."""

    id: int
    alias: str
    action: str = Field(description="promote, rollback, force or delete")
    from_version: int | None
    to_version: int | None
    actor: str | None
    reason: str | None
    at: datetime
    gates: list[GateOut]


class PolicyIn(BaseModel):
    """Body of ``PUT …/policies/{alias}``: the whole policy (what is not given is off)."""

    model_config = ConfigDict(extra="forbid")

    require_validated: bool = False
    min_scores: dict[str, Finite] = Field(default_factory=dict,
                                          description="SUITE.METRIC -> the lowest value allowed")
    max_scores: dict[str, Finite] = Field(default_factory=dict,
                                          description="SUITE.METRIC -> the highest value allowed")
    no_regression: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)] | None] = Field(
        default_factory=dict,
        description="SUITE.METRIC -> tolerance (absolute, in the metric's unit; null: 0)")
    require_base: str | None = Field(default=None, max_length=200,
                                     description="the linked base model must have this name")
    protected: bool = Field(default=False,
                            description="moves need a reason; the alias cannot be deleted")
    actor: str | None = _actor()


class PolicyOut(BaseModel):
    """A promotion policy; ``scope`` says whether it is the adapter's own or the default."""

    adapter: str | None = Field(description="null for a registry-wide default")
    alias: str
    scope: Literal["adapter", "default"]
    require_validated: bool
    min_scores: dict[str, float]
    max_scores: dict[str, float]
    no_regression: dict[str, float | None]
    require_base: str | None
    protected: bool
    updated_at: datetime
    updated_by: str | None
