"""The embedded registry: the RegistryBackend protocol served in-process, without HTTP.

Like ``registry/api``, a composition root: it calls every domain's service, one transaction
per call, exactly as the routers do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from registry.adapters import queries as adapter_queries
from registry.adapters import service as adapters
from registry.adapters.schemas import (
    AdapterOut,
    CreateVersionIn,
    LineageOut,
    ScoreOut,
    VersionOut,
)
from registry.auth import service as tokens
from registry.auth.schemas import CreatedTokenOut, CreateTokenIn, TokenOut
from registry.backend import Progress
from registry.base_models import queries as base_queries
from registry.base_models import service as base_models
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.blobs import service as blobs
from registry.compat.schemas import CompatibleBaseOut, CompatibleVersionOut, VerdictOut
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope, write_scope
from registry.errors import BlobNotFound
from registry.evals import queries as eval_queries
from registry.evals import service as evals
from registry.evals.schemas import (
    AttachmentOut,
    AttachSuiteIn,
    CreateSuiteIn,
    RecordScoresIn,
    SuiteOut,
)
from registry.events import service as events
from registry.events import webhooks
from registry.events.schemas import EventPageOut
from registry.events.webhook_schemas import (
    CreatedWebhookOut,
    CreateWebhookIn,
    DeliveryOut,
    WebhookOut,
)
from registry.exports import service as exports
from registry.exports.schemas import EMBEDDED, CreateExportIn, ExportOut
from registry.formats.sources import SourceAllowlist
from registry.jobs import queries as job_queries
from registry.jobs import service as jobs
from registry.jobs.schemas import ClaimedJobOut, CompleteJobIn, FailJobIn, JobOut, LeaseOut
from registry.lifecycle import policies
from registry.lifecycle import queries as lifecycle_queries
from registry.lifecycle import service as lifecycle
from registry.lifecycle.schemas import (
    AliasChangeIn,
    AliasDeletedOut,
    AliasOut,
    HistoryEntryOut,
    PolicyIn,
    PolicyOut,
    PromoteIn,
    PromoteOut,
    RollbackIn,
    RollbackOut,
)
from registry.storage.local import LocalBlobStore
from registry.validation import service as validation
from registry.validation.schemas import ValidateIn


class LocalRegistry:
    """Runs the same services the API runs, on ``$REGISTRY_HOME`` (or configured URLs)."""

    def __init__(self, settings: Settings) -> None:
        self.ctx = RegistryContext.open(settings)
        self.handlers = validation.handlers()

    def blob_exists(self, digest: str) -> bool:
        with session_scope(self.ctx.sessions) as session:
            return blobs.get_blob(session, digest=digest) is not None

    def pin_blobs(self, digests: list[str], *, seconds: int) -> list[str]:
        with session_scope(self.ctx.sessions) as session:
            return blobs.pin_blobs(session, digests=digests, seconds=seconds)

    def upload_blob(self, digest: str, path: Path, *, progress: Progress = None,
                    pin_seconds: int | None = None) -> None:
        blobs.store_file(self.ctx.sessions, self.ctx.store, path, digest=digest,
                         max_size=self.ctx.settings.max_file_bytes, progress=progress,
                         pin_seconds=pin_seconds)

    def can_upload_unhashed(self, size: int) -> bool:
        if not self.ctx.store.digest_after_upload:
            return False
        with session_scope(self.ctx.sessions) as session:
            return not blobs.size_stored(session, size=size)

    def upload_new_blob(self, path: Path, *, progress: Progress = None,
                        pin_seconds: int | None = None) -> str:
        # In process the writer's own hash is the file's digest: nothing travels in between.
        return blobs.store_file(self.ctx.sessions, self.ctx.store, path, digest=None,
                                max_size=self.ctx.settings.max_file_bytes, progress=progress,
                                pin_seconds=pin_seconds)

    def download_blob(self, digest: str, out: BinaryIO, *, progress: Progress = None) -> None:
        with session_scope(self.ctx.sessions) as session:
            if blobs.get_blob(session, digest=digest) is None:
                raise BlobNotFound(f"blob {digest} is not stored")
        for chunk in self.ctx.store.iter_chunks(digest):
            out.write(chunk)
            if progress:
                progress(len(chunk))

    def create_version(self, name: str, body: CreateVersionIn) -> tuple[VersionOut, bool]:
        with write_scope(self.ctx.sessions,
                         one_statement=adapters.writes_in_one_statement(body)) as session:
            version, created = adapters.create_version(
                session, self.ctx.store, name=name, body=body, settings=self.ctx.settings
            )
            return version, created

    def get_version(self, name: str, version: int | None) -> VersionOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.to_out(adapter_queries.get_version(session, name=name, version=version))

    def list_adapters(self) -> list[AdapterOut]:
        with session_scope(self.ctx.sessions) as session:
            return adapters.list_adapters(session)

    def list_versions(self, name: str) -> list[VersionOut]:
        with session_scope(self.ctx.sessions) as session:
            return [adapters.to_out(v) for v in adapter_queries.list_versions(session, name=name)]

    def lineage(self, name: str, version: int) -> LineageOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.lineage(session, name=name, version=version)

    def gc(self, *, grace_seconds: int | None, dry_run: bool) -> dict[str, Any]:
        grace = self.ctx.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        report = blobs.collect_garbage(
            self.ctx.sessions, self.ctx.store, grace_seconds=grace, dry_run=dry_run
        )
        return report.to_json()

    def register_base(self, body: RegisterBaseIn) -> tuple[BaseModelOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            # The embedded CLI reads hf:// and s3:// sources with its own user's credentials
            # (their HF token, their AWS profile): no allowlist guards anything here.
            base, created = base_models.register_base(
                session, self.ctx.store, body=body, settings=self.ctx.settings,
                sources=SourceAllowlist.everything(),
            )
            return base_models.to_out(base), created

    def get_base(self, name: str, revision: str | None = None) -> BaseModelOut:
        with session_scope(self.ctx.sessions) as session:
            return base_models.to_out(base_queries.get_base(session, name=name, revision=revision))

    def list_bases(self) -> list[BaseModelOut]:
        with session_scope(self.ctx.sessions) as session:
            return [base_models.to_out(b) for b in base_queries.list_bases(session)]

    def compat_verdict(self, name: str, version: int | None, *, base: str,
                       base_revision: str | None = None) -> VerdictOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.version_verdict(session, name=name, version=version, base=base,
                                            base_revision=base_revision)

    def compatible_versions(self, *, base: str,
                            base_revision: str | None = None) -> list[CompatibleVersionOut]:
        with session_scope(self.ctx.sessions) as session:
            return base_models.compatible_versions(session, base=base,
                                                   base_revision=base_revision)

    def compatible_bases(self, name: str, version: int | None) -> list[CompatibleBaseOut]:
        with session_scope(self.ctx.sessions) as session:
            return adapters.version_compatible_bases(session, name=name, version=version)

    def create_export(self, body: CreateExportIn) -> tuple[ExportOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            # The embedded CLI writes the database directly; its records say so.
            export, created = exports.create_export(
                session, self.ctx.store, body=body, settings=self.ctx.settings,
                provenance=EMBEDDED, created_by=None,
            )
            return exports.to_out(export), created

    def list_exports(self, name: str, version: int, *, base: str | None = None,
                     base_revision: str | None = None,
                     dtype: str | None = None) -> list[ExportOut]:
        with session_scope(self.ctx.sessions) as session:
            found = exports.list_exports(session, name=name, version=version, base=base,
                                         base_revision=base_revision, dtype=dtype)
            return [exports.to_out(e) for e in found]

    def export_provenance(self) -> str | None:
        return EMBEDDED

    # Tokens on the database directly: how the first admin token is made (bootstrap). Whoever
    # can open the database is trusted already; the actor recorded is None (embedded).

    def create_token(self, body: CreateTokenIn) -> CreatedTokenOut:
        expires = (timedelta(seconds=body.expires_in_seconds)
                   if body.expires_in_seconds is not None else None)
        with session_scope(self.ctx.sessions) as session:
            return tokens.create_token(session, name=body.name,
                                       scopes=[s.value for s in body.scopes],
                                       namespaces=body.namespaces, expires_in=expires)

    def list_tokens(self) -> list[TokenOut]:
        with session_scope(self.ctx.sessions) as session:
            return tokens.list_tokens(session)

    def revoke_token(self, name: str) -> TokenOut:
        with session_scope(self.ctx.sessions) as session:
            return tokens.revoke_token(session, name=name)

    def audit(self, *, since: datetime | None = None, after: int = 0,
              limit: int = 1000) -> EventPageOut:
        with session_scope(self.ctx.sessions) as session:
            return events.page(session, after=after, limit=limit, since=since)

    def local_blob_path(self, digest: str) -> Path | None:
        """The blob's own file when the store is a local directory (no copy needed)."""
        store = self.ctx.store
        if isinstance(store, LocalBlobStore) and store.exists(digest):
            return store.path_for(digest)
        return None

    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes:
        return self.ctx.store.read_range(digest, offset, length)

    def record_scores(self, name: str, version: int, body: RecordScoresIn) -> list[ScoreOut]:
        with session_scope(self.ctx.sessions) as session:
            return evals.record_from_request(session, name=name, version=version, body=body)

    def list_events(self, *, after: int = 0, limit: int = 100,
                    types: tuple[str, ...] = (), adapter: str | None = None) -> EventPageOut:
        with session_scope(self.ctx.sessions) as session:
            return events.page(session, after=after, limit=limit, types=types,
                               adapter=adapter)

    def resolve_alias(self, name: str, alias: str) -> VersionOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.to_out(
                lifecycle_queries.resolve_alias(session, name=name, alias=alias))

    def list_aliases(self, name: str) -> list[AliasOut]:
        with session_scope(self.ctx.sessions) as session:
            return lifecycle.list_aliases(session, name=name)

    def promote(self, name: str, alias: str, body: PromoteIn) -> PromoteOut:
        with session_scope(self.ctx.sessions) as session:
            return lifecycle.promote(session, name=name, alias=alias, version=body.version,
                                     actor=body.actor, reason=body.reason,
                                     expect_current=body.expect_current, force=body.force)

    def rollback(self, name: str, alias: str, body: RollbackIn) -> RollbackOut:
        with session_scope(self.ctx.sessions) as session:
            return lifecycle.rollback(session, name=name, alias=alias, to=body.to,
                                      actor=body.actor, reason=body.reason)

    def delete_alias(self, name: str, alias: str, body: AliasChangeIn) -> AliasDeletedOut:
        with session_scope(self.ctx.sessions) as session:
            return lifecycle.delete_alias(session, name=name, alias=alias, actor=body.actor,
                                          reason=body.reason)

    def history(self, name: str, *, alias: str | None = None,
                limit: int | None = None) -> list[HistoryEntryOut]:
        with session_scope(self.ctx.sessions) as session:
            return lifecycle.history(session, name=name, alias=alias, limit=limit)

    def archive(self, name: str, version: int, body: AliasChangeIn) -> VersionOut:
        with session_scope(self.ctx.sessions) as session:
            lifecycle.archive(session, name=name, version=version, actor=body.actor,
                              reason=body.reason)
            return adapters.to_out(adapter_queries.get_version(session, name=name,
                                                               version=version))

    def set_policy(self, name: str | None, alias: str, body: PolicyIn) -> PolicyOut:
        with session_scope(self.ctx.sessions) as session:
            return policies.set_policy(session, name=name, alias=alias, body=body)

    def delete_policy(self, name: str | None, alias: str) -> None:
        with session_scope(self.ctx.sessions) as session:
            policies.delete_policy(session, name=name, alias=alias)

    def list_policies(self, name: str | None) -> list[PolicyOut]:
        with session_scope(self.ctx.sessions) as session:
            return policies.list_policies(session, name=name)
    def base_scores(self, base: str, revision: str | None = None) -> list[ScoreOut]:
        with session_scope(self.ctx.sessions) as session:
            return evals.base_scores_out(session, base=base, revision=revision)

    def create_suite(self, body: CreateSuiteIn) -> tuple[SuiteOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            suite, created = evals.create_suite(session, self.ctx.store, body=body,
                                                max_bytes=self.ctx.settings.max_suite_bytes)
            return evals.suite_out(suite), created

    def get_suite(self, name: str, version: int | None = None) -> SuiteOut:
        with session_scope(self.ctx.sessions) as session:
            return evals.suite_out(eval_queries.get_suite(session, name=name, version=version))

    def list_suites(self) -> list[SuiteOut]:
        with session_scope(self.ctx.sessions) as session:
            return [evals.suite_out(s) for s in eval_queries.latest_suites(session)]

    def attach_suite(self, suite: str, body: AttachSuiteIn) -> AttachmentOut:
        with session_scope(self.ctx.sessions) as session:
            return evals.attach_suite(session, suite_name=suite, adapter_name=body.adapter,
                                      actor=body.created_by)

    def validate(self, name: str, version: int, body: ValidateIn) -> JobOut:
        with session_scope(self.ctx.sessions) as session:
            job = validation.request_validation(session, name=name, version=version, body=body,
                                                settings=self.ctx.settings)
            return jobs.show(session, job_id=job.id)

    def list_jobs(self, *, status: str | None = None, limit: int = 100) -> list[JobOut]:
        with session_scope(self.ctx.sessions) as session:
            return [jobs.to_out(j)
                    for j in job_queries.list_jobs(session, status=status, limit=limit)]

    def get_job(self, job_id: int) -> JobOut:
        with session_scope(self.ctx.sessions) as session:
            return jobs.show(session, job_id=job_id)

    def cancel_job(self, job_id: int) -> JobOut:
        with session_scope(self.ctx.sessions) as session:
            jobs.cancel(session, job_id=job_id, handlers=self.handlers)
            return jobs.show(session, job_id=job_id)

    def retry_job(self, job_id: int) -> JobOut:
        with session_scope(self.ctx.sessions) as session:
            jobs.retry(session, job_id=job_id)
            return jobs.show(session, job_id=job_id)

    def claim_job(self, worker: str, *,
                  kinds: tuple[str, ...] = ("validate",)) -> ClaimedJobOut | None:
        with session_scope(self.ctx.sessions) as session:
            return jobs.claim(session, worker=worker, kinds=kinds, handlers=self.handlers,
                              lease_seconds=self.ctx.settings.job_lease_seconds)

    def heartbeat_job(self, job_id: int, *, worker: str, attempt: int) -> LeaseOut:
        with session_scope(self.ctx.sessions) as session:
            job = jobs.heartbeat(session, job_id=job_id, worker=worker, attempt=attempt,
                                 lease_seconds=self.ctx.settings.job_lease_seconds)
            return LeaseOut(id=job.id, status=job.status.value, attempt=job.attempts,
                            lease_expires_at=job.lease_expires_at)

    def complete_job(self, job_id: int, *, worker: str, attempt: int,
                     report: dict[str, Any]) -> JobOut:
        body = CompleteJobIn(worker=worker, attempt=attempt, report=report)  # the same checks
        with session_scope(self.ctx.sessions) as session:
            jobs.complete(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                          report=body.report, handlers=self.handlers)
            return jobs.show(session, job_id=job_id)

    def fail_job(self, job_id: int, *, worker: str, attempt: int, error: str,
                 result: dict[str, Any] | None = None) -> JobOut:
        body = FailJobIn(worker=worker, attempt=attempt, error=error, result=result)
        with session_scope(self.ctx.sessions) as session:
            jobs.fail(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                      error=body.error, result=body.result, handlers=self.handlers)
            return jobs.show(session, job_id=job_id)

    def release_job(self, job_id: int, *, worker: str, attempt: int) -> JobOut:
        with session_scope(self.ctx.sessions) as session:
            jobs.release(session, job_id=job_id, worker=worker, attempt=attempt,
                         handlers=self.handlers)
            return jobs.show(session, job_id=job_id)

    # Webhooks: the embedded CLI writes the rows; a server on the same database sends them.

    def add_webhook(self, body: CreateWebhookIn) -> CreatedWebhookOut:
        with session_scope(self.ctx.sessions) as session:
            hook, secret = webhooks.add(session, body=body, actor=None,
                                        allow_private=self.ctx.settings.webhook_allow_private)
            return webhooks.created_out(hook, secret)

    def list_webhooks(self) -> list[WebhookOut]:
        with session_scope(self.ctx.sessions) as session:
            return [webhooks.to_out(h) for h in webhooks.list_webhooks(session)]

    def remove_webhook(self, webhook_id: int) -> WebhookOut:
        with session_scope(self.ctx.sessions) as session:
            return webhooks.to_out(webhooks.remove(session, webhook_id=webhook_id, actor=None))

    def test_webhook(self, webhook_id: int) -> DeliveryOut:
        with session_scope(self.ctx.sessions) as session:
            return webhooks.delivery_out(
                webhooks.enqueue_test(session, webhook_id=webhook_id, actor=None))

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 100) -> list[DeliveryOut]:
        with session_scope(self.ctx.sessions) as session:
            return [webhooks.delivery_out(d) for d in
                    webhooks.list_deliveries(session, webhook_id=webhook_id, limit=limit)]

    def close(self) -> None:
        self.ctx.close()
