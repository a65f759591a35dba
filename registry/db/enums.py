"""Enumerated column values, importable without SQLAlchemy (client code compares with them)."""

from __future__ import annotations

import enum


class VersionStatus(enum.StrEnum):
    registered = "registered"
    validating = "validating"
    validated = "validated"
    failed = "failed"
    archived = "archived"


class SourceKind(enum.StrEnum):
    """Where a base model's files live. ``none``: a bare name reference left by migration 0001
    (not a registered base; lookups skip it)."""

    file = "file"  # uploaded to the blob store
    hf = "hf"  # referenced on the Hugging Face Hub, pinned to a commit
    s3 = "s3"  # referenced in S3
    none = "none"


class BlobState(enum.StrEnum):
    """A blob row's state. ``present``: the object is stored and may be referenced (HEAD 200).
    ``deleting``: garbage collection owns it; its object is being removed, so HEAD, GET and a
    new reference treat it as absent and an upload of the same digest waits for the row to go.
    """

    present = "present"
    deleting = "deleting"


class JobStatus(enum.StrEnum):
    """A job's life: queued -> running -> succeeded | failed | cancelled (a retry re-queues)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(enum.StrEnum):
    validate = "validate"
    export = "export"


class SuiteKind(enum.StrEnum):
    """How an eval suite's data are run (see registry/evals)."""

    perplexity = "perplexity"
    generate = "generate"
    classify = "classify"
    lm_eval = "lm-eval"


class ScoreSource(enum.StrEnum):
    """Who computed a score: a validation worker, a CI job (``eval record``), or a person."""

    worker = "worker"
    ci = "ci"
    user = "user"


class AliasAction(enum.StrEnum):
    """One move of an alias, as the history records it."""

    promote = "promote"
    rollback = "rollback"
    force = "force"  # a promotion that skipped failing gates (--force)
    delete = "delete"


class DeliveryStatus(enum.StrEnum):
    """A webhook delivery's life: pending -> delivering (claimed, leased) -> delivered | failed;
    a retryable failure puts it back to pending with a later ``next_attempt_at``."""

    pending = "pending"
    delivering = "delivering"
    delivered = "delivered"
    failed = "failed"
