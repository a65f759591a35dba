"""The scopes a token can hold and who is asking (the principal)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Scope(StrEnum):
    """What a token may do. Every API route declares exactly one (registry.api.deps.require)."""

    READ = "read"          # every GET
    PUSH = "push"          # upload blobs, create versions, record evals, add suites
    VALIDATE = "validate"  # claim and complete jobs: what a worker needs
    PROMOTE = "promote"    # aliases, rollback, archive
    ADMIN = "admin"        # tokens, policies, webhooks, gc, --force


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an API token's name, its scopes and namespace limits.

    ``namespaces`` empty means every adapter; otherwise only ``NS/*`` adapters for NS in it.
    """

    name: str
    scopes: frozenset[str]
    namespaces: frozenset[str] = frozenset()
    expires_at: datetime | None = None

    def has_scope(self, scope: Scope) -> bool:
        return scope.value in self.scopes or Scope.ADMIN.value in self.scopes

    def may_touch(self, adapter: str | None) -> bool:
        """Whether the namespace limits admit ``adapter`` (None: no adapter involved)."""
        if not self.namespaces or adapter is None:
            return True
        namespace, sep, _ = adapter.partition("/")
        return bool(sep) and namespace in self.namespaces
