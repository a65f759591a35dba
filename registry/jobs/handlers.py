"""What a job kind means to the rest of the registry: the hooks the queue calls (dependency
inversion: the queue never imports the domains that define kinds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from registry.db.models import Job


@dataclass
class Outcome:
    """How a completed job ends: ``succeeded`` or ``failed`` (a check said no), with the error
    line and the result to store."""

    succeeded: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class JobHandler(Protocol):
    """The hooks of one job kind; each runs in the queue operation's transaction."""

    def on_claimed(self, session: Session, job: Job) -> dict[str, Any]:
        """The job was handed to a worker: update the domain, return what the worker needs."""
        ...

    def on_completed(self, session: Session, job: Job, report: dict[str, Any]) -> Outcome:
        """The worker's report: record it and say how the job ends.

        Raises:
            InvalidInput: a malformed report (nothing is recorded; the job stays running).
        """
        ...

    def on_abandoned(self, session: Session, job: Job) -> None:
        """The job ended (or went back to the queue) without an outcome: failed in the worker,
        lost too often, cancelled or released. Undo what ``on_claimed`` did."""
        ...


Handlers = Mapping[str, JobHandler]
