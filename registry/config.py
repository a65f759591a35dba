"""Settings: the one place configuration is read; every knob is an env var REGISTRY_*."""

from __future__ import annotations

import os
from pathlib import Path

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

    home: Path = Field(default_factory=lambda: Path.home() / ".adapter-registry")
    database_url: str | None = None
    blob_url: str | None = None

    # Limits on what a client may store.
    max_file_bytes: int = 20 * GiB
    max_files_per_version: int = 1000
    max_config_bytes: int = 1 * MiB
    max_header_bytes: int = 100 * MiB
    max_metadata_bytes: int = 64 * 1024

    # Blobs no version references are removed by gc once older than this.
    gc_grace_seconds: int = 24 * 3600

    # Apply migrations when the server or embedded CLI opens the database. Default: only for the
    # embedded SQLite registry; production runs `adapter-registry db upgrade` once per release.
    auto_migrate: bool | None = None

    # Hugging Face sources (hf://): the HF cache to read and whether to stay offline (cache only).
    hf_cache_dir: Path | None = None
    hf_offline: bool = Field(
        default_factory=lambda: os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    )

    # S3 multipart part size; also the buffer the server holds per upload.
    s3_part_bytes: int = 8 * MiB
    # A multipart upload that sent no part for this long is abandoned: gc aborts it.
    s3_upload_idle_seconds: float = 600.0

    # Database waits (see DbTimeouts): a request answers within about 30 s, with a 503 when the
    # database does not, instead of hanging a worker thread.
    db_connect_timeout_seconds: float = DbTimeouts.connect_seconds
    db_pool_timeout_seconds: float = DbTimeouts.pool_seconds
    db_statement_timeout_seconds: float = DbTimeouts.statement_seconds

    # Referenced base-model sources (hf://, s3://) the server may read for a client, with its
    # own credentials: comma-separated prefixes, e.g. "s3://models/,hf://my-org/". Empty: none
    # (base models are uploaded). See registry.formats.sources.SourceAllowlist; the embedded
    # CLI ignores it (it reads with its own user's credentials).
    base_sources: str = ""

    # Job queue: how long a claimed job's lease lasts without a heartbeat (a worker renews it
    # every third of it), and how many lost leases a job survives before it fails.
    job_lease_seconds: int = 60
    job_max_attempts: int = 3
    # A push that links a statically compatible base enqueues a validation with the version.
    auto_validate: bool = True
    # Validation worker: disk cap of its base-model file cache (least recently used go first).
    worker_cache_bytes: int = 64 * GiB
    # Largest eval suite file (suites are read whole by workers and checked line by line).
    max_suite_bytes: int = 64 * MiB

    # Webhooks (registry/events/dispatcher.py): a failed delivery is retried after base * 2^(n-1)
    # seconds (fractions allowed), each wait capped at retry_max, until give_up seconds after
    # the event; then it is failed. Sends time out after timeout seconds; a claimed delivery
    # is leased for lease seconds (a dead server's are taken over after it). The dispatcher
    # looks for due deliveries every poll seconds (at once after a change in this process),
    # sending up to concurrency at a time. allow_private: also deliver to private, loopback
    # and link-local addresses (a test, a private network); refused by default (SSRF).
    webhook_retry_base_seconds: float = 10.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_give_up_seconds: float = 24 * 3600.0
    webhook_timeout_seconds: float = 10.0
    webhook_lease_seconds: float = 60.0
    webhook_poll_seconds: float = 1.0
    webhook_concurrency: int = 4
    webhook_allow_private: bool = False

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
    def should_migrate(self) -> bool:
        return self.is_embedded if self.auto_migrate is None else self.auto_migrate

    @property
    def is_embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")
