"""Settings: the one place configuration is read; every knob is an env var REGISTRY_*."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.db.timeouts import DbTimeouts
from registry.formats.adapter import Limits
from registry.formats.sources import SourceAllowlist

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Registry configuration.

    With nothing set, the registry is embedded: SQLite at ``$REGISTRY_HOME/registry.db`` and
    blobs under ``$REGISTRY_HOME/blobs``.
    """

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".adapter-registry",
        description="Where the embedded registry keeps its SQLite database, blobs and the "
                    "worker's cache.",
        json_schema_extra={"shown_default": "~/.adapter-registry"})
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; production: `postgresql+psycopg://USER:PASS@HOST/DB`. "
                    "Unset: SQLite at `$REGISTRY_HOME/registry.db`.")
    blob_url: str | None = Field(
        default=None,
        description="Blob store: a directory, or `s3://bucket/prefix` (credentials and "
                    "`AWS_ENDPOINT_URL` from the standard AWS variables). Unset: "
                    "`$REGISTRY_HOME/blobs`.")

    # Limits on what a client may store.
    max_file_bytes: int = Field(
        default=20 * GiB, description="Largest file in an adapter version.")
    max_files_per_version: int = Field(
        default=1000, description="Most files in one adapter version.")
    max_config_bytes: int = Field(
        default=1 * MiB, description="Largest `adapter_config.json`.")
    max_header_bytes: int = Field(
        default=100 * MiB, description="Largest safetensors header.")
    max_metadata_bytes: int = Field(
        default=64 * 1024, description="Largest training metadata of a version (JSON).")

    gc_grace_seconds: int = Field(
        default=24 * 3600,
        description="`gc` removes blobs no version references once older than this.")

    # Production runs `adapter-registry db upgrade` once per release.
    auto_migrate: bool | None = Field(
        default=None,
        description="Apply migrations when the server or embedded CLI opens the database. "
                    "Unset: on for embedded SQLite only; otherwise run "
                    "`adapter-registry db upgrade`.")

    hf_cache_dir: Path | None = Field(
        default=None,
        description="The Hugging Face cache `hf://` base sources are read into (unset: HF's "
                    "default).")
    hf_offline: bool = Field(
        default_factory=lambda: os.environ.get("HF_HUB_OFFLINE", "").lower()
        in ("1", "true", "yes"),
        description="Read `hf://` sources from the cache only.",
        json_schema_extra={"shown_default": "$HF_HUB_OFFLINE"})

    s3_part_bytes: int = Field(
        default=8 * MiB,
        description="S3 multipart part size (at least 5 MiB); also the buffer the server holds "
                    "per upload.")
    s3_upload_idle_seconds: float = Field(
        default=600.0,
        description="A multipart upload that sent no part for this long is abandoned (`gc` "
                    "aborts it).")

    # Database waits (see DbTimeouts): a request answers within about 30 s, with a 503 when the
    # database does not, instead of hanging a worker thread.
    db_connect_timeout_seconds: float = Field(
        default=DbTimeouts.connect_seconds,
        description="Opening a database connection (PostgreSQL counts whole seconds, at "
                    "least 2).")
    db_pool_timeout_seconds: float = Field(
        default=DbTimeouts.pool_seconds,
        description="Waiting for a free pooled connection before answering 503.")
    db_statement_timeout_seconds: float = Field(
        default=DbTimeouts.statement_seconds,
        description="One statement, lock waits included (PostgreSQL `statement_timeout`, "
                    "SQLite busy timeout); migrations are exempt.")

    # See registry.formats.sources.SourceAllowlist.
    base_sources: str = Field(
        default="",
        description="Base-model sources the server may read for clients with its own "
                    "credentials: comma-separated prefixes (`s3://bucket/`, `s3://bucket/prefix`, "
                    "`hf://org/`, `hf://org/repo`; whole path segments). Empty: none (bases are "
                    "uploaded). The embedded CLI ignores it (its user's own credentials).")

    # Job queue and workers.
    job_lease_seconds: int = Field(
        default=60,
        description="A claimed job's lease (at least 2); workers renew it every third of it.")
    job_max_attempts: int = Field(
        default=3,
        description="Lost leases a job survives before it fails (\"worker lost N times\").")
    auto_validate: bool = Field(
        default=True,
        description="A push that links a statically compatible base queues a validation with "
                    "the version.")
    worker_cache_bytes: int = Field(
        default=64 * GiB,
        description="A worker's disk cache of base-model files (least recently used out).")
    max_suite_bytes: int = Field(
        default=64 * MiB, description="Largest eval suite (all its files).")
    worker_drain_seconds: float = Field(
        default=1500.0,
        description="After SIGTERM a worker lets its running job finish for this long, then "
                    "releases it to the queue at its next step and exits (Ctrl-C releases at "
                    "once). Keep a pod's termination grace period above it.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Server and worker logs on stderr: `text`, or `json` (one object per line, "
                    "with the request id).")

    # Access control (registry.auth).
    auth: Literal["required", "off"] = Field(
        default="off",
        description="`required`: every API route but /healthz, /readyz and /metrics needs a "
                    "bearer token with the route's scope (see \"Access control\"); `off` (a "
                    "laptop, a test, the embedded CLI): every request is allowed, and `server` "
                    "refuses a non-loopback address unless started with `--insecure`.")

    # Webhooks (registry/events/dispatcher.py).
    webhook_retry_base_seconds: float = Field(
        default=10.0,
        description="A failed delivery (5xx, 429, timeout, connection error) is retried after "
                    "base * 2^(attempt-1) seconds (fractions allowed).")
    webhook_retry_max_seconds: float = Field(
        default=3600.0, description="The longest wait between two attempts of a delivery.")
    webhook_give_up_seconds: float = Field(
        default=24 * 3600.0,
        description="A delivery still failing this long after its event is marked failed.")
    webhook_timeout_seconds: float = Field(
        default=10.0, description="Connect/read timeout of one webhook send.")
    webhook_lease_seconds: float = Field(
        default=60.0,
        description="A claimed delivery's lease (above the timeout): a dead server's claims "
                    "are taken over after it.")
    webhook_poll_seconds: float = Field(
        default=1.0,
        description="How often the dispatcher looks for due deliveries (at once after a "
                    "change in the same process).")
    webhook_concurrency: int = Field(
        default=4, description="Webhook sends under way at once per server process (1-64).")
    webhook_allow_private: bool = Field(
        default=False,
        description="Also deliver to private, loopback and link-local addresses (a test, a "
                    "private network); refused by default (SSRF), checked at send time.")

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        for name in ("max_file_bytes", "max_files_per_version", "max_config_bytes",
                     "max_header_bytes", "max_metadata_bytes", "s3_part_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"REGISTRY_{name.upper()} must be positive")
        for name in ("db_connect_timeout_seconds", "db_pool_timeout_seconds",
                     "db_statement_timeout_seconds"):
            # Zero would mean "no timeout" to libpq and PostgreSQL: the hang this guards against.
            if not getattr(self, name) > 0:
                raise ValueError(f"REGISTRY_{name.upper()} must be positive")
        if self.job_lease_seconds < 2:
            raise ValueError("REGISTRY_JOB_LEASE_SECONDS must be at least 2")
        if self.job_max_attempts < 1:
            raise ValueError("REGISTRY_JOB_MAX_ATTEMPTS must be at least 1")
        if self.worker_drain_seconds < 0:
            raise ValueError("REGISTRY_WORKER_DRAIN_SECONDS must be >= 0")
        if self.worker_cache_bytes < 0 or self.max_suite_bytes <= 0:
            raise ValueError("REGISTRY_WORKER_CACHE_BYTES must be >= 0 and "
                             "REGISTRY_MAX_SUITE_BYTES positive")
        if self.s3_part_bytes < 5 * MiB:
            raise ValueError("REGISTRY_S3_PART_BYTES must be at least 5 MiB (S3 minimum part size)")
        self._check_webhooks()
        self.base_source_allowlist()  # a malformed entry fails at start-up, not per request
        return self

    def _check_webhooks(self) -> None:
        for name in ("webhook_retry_base_seconds", "webhook_retry_max_seconds",
                     "webhook_give_up_seconds", "webhook_timeout_seconds",
                     "webhook_poll_seconds"):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise ValueError(f"REGISTRY_{name.upper()} must be a positive number")
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            # A lease shorter than a send would let a second server send the same delivery.
            raise ValueError("REGISTRY_WEBHOOK_LEASE_SECONDS must exceed "
                             "REGISTRY_WEBHOOK_TIMEOUT_SECONDS")
        if not 1 <= self.webhook_concurrency <= 64:
            raise ValueError("REGISTRY_WEBHOOK_CONCURRENCY must be between 1 and 64")

    def base_source_allowlist(self) -> SourceAllowlist:
        """REGISTRY_BASE_SOURCES parsed.

        Raises:
            InvalidInput: a malformed entry.
        """
        return SourceAllowlist.parse(self.base_sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.home / "blobs").as_uri()

    def adapter_limits(self) -> Limits:
        """The static-check limits for adapters, as the pure formats layer takes them."""
        return Limits(
            max_file_bytes=self.max_file_bytes,
            max_files=self.max_files_per_version,
            max_config_bytes=self.max_config_bytes,
            max_header_bytes=self.max_header_bytes,
        )

    def db_timeouts(self) -> DbTimeouts:
        """The database timeouts, as the engine takes them."""
        return DbTimeouts(
            connect_seconds=self.db_connect_timeout_seconds,
            pool_seconds=self.db_pool_timeout_seconds,
            statement_seconds=self.db_statement_timeout_seconds,
        )

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    @property
    def should_migrate(self) -> bool:
        return self.is_embedded if self.auto_migrate is None else self.auto_migrate

    @property
    def is_embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")
