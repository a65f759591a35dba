"""Validation, server side: enqueue one (checked first), build the spec a worker runs, and
record its outcome: scores, the version's status (registered → validating → validated |
failed), the (version, base) verdict (``method=validated``) and an event.

The queue (registry.jobs) calls the hooks of ``ValidationHandler`` through the handler map the
composition roots wire (``handlers()``), so jobs never imports this package.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from registry.adapters.queries import get_version
from registry.adapters.schemas import FileOut
from registry.base_models import queries as base_queries
from registry.base_models.service import to_out as base_out
from registry.compat import service as compat
from registry.config import Settings
from registry.db.enums import JobKind, JobStatus, ScoreSource, VersionStatus
from registry.db.models import AdapterVersion, BaseModelRow, Job
from registry.errors import IncompatibleBase, InvalidInput
from registry.evals import queries as eval_queries
from registry.evals.service import record_scores, suite_out
from registry.evals.suites import suite_fit
from registry.events import service as events
from registry.events import types as event_types
from registry.jobs import service as jobs
from registry.jobs.handlers import Handlers, Outcome
from registry.jobs.queries import pending_validation, running_validations
from registry.validation.schemas import (
    KnownScore,
    SkippedSuite,
    SuiteSpec,
    ValidateIn,
    ValidationReport,
    ValidationSpec,
)

PERPLEXITY = "perplexity"


def _fit_reason(version: AdapterVersion, base: BaseModelRow, kind: Any) -> str | None:
    return suite_fit(kind, task_type=version.task_type, architectures=base.architectures)


def request_validation(session: Session, *, name: str, version: int, body: ValidateIn,
                       settings: Settings) -> Job:
    """Enqueue a validation of ``name:version`` after checking everything a worker would
    refuse, so a bad request queues nothing. When the same validation (version, base, suites)
    is already queued or running, that job is the answer: a push's automatic validation and a
    CI job's ``validate --wait`` run once.

    Raises:
        AdapterNotFound, VersionNotFound, BaseModelNotFound, SuiteNotFound,
        InvalidInput (no base to validate on, a suite whose kind does not fit),
        IncompatibleBase (the static verdict says the pair cannot load: its reasons).
    """
    v = get_version(session, name=name, version=version)
    if body.base is not None:
        base = base_queries.get_base(session, name=body.base, revision=body.base_revision)
    elif v.base_model is not None:
        base = v.base_model
    else:
        raise InvalidInput(f"{v.adapter.name}:{v.version} has no linked base model; name one "
                           "with --base")
    if v.status == VersionStatus.archived:
        raise InvalidInput(f"{v.adapter.name}:{v.version} is archived")
    verdict = compat.verdict_for(session, version=v, base=base, find_base=base_queries.find_base)
    # A pair a worker already found incompatible may be validated again (after a worker fix);
    # a static "no" cannot load at all.
    if not verdict.compatible and verdict.method == compat.METHOD_STATIC:
        reasons = "; ".join(r.message for r in verdict.reasons[:5])
        raise IncompatibleBase(
            f"{v.adapter.name}:{v.version} is not compatible with {base.name}@{base.revision}: "
            f"{reasons}"
        )
    names: list[str] = []
    for suite_name in body.suites:
        if suite_name in names:
            continue
        suite = eval_queries.get_suite(session, name=suite_name)
        reason = _fit_reason(v, base, suite.kind)
        if reason is not None:
            raise InvalidInput(f"suite {suite_name} cannot run on {v.adapter.name}:{v.version}: "
                               f"{reason}")
        names.append(suite_name)
    payload = {"suites": names}
    pending = pending_validation(session, version_id=v.id, base_id=base.id, suites=names)
    if pending is not None:
        if pending.status == JobStatus.queued and body.priority > pending.priority:
            pending.priority = body.priority
        return pending
    return jobs.enqueue(session, kind=JobKind.validate, version_id=v.id, base_id=base.id,
                        payload=payload, priority=body.priority,
                        max_attempts=settings.job_max_attempts, created_by=body.created_by)


def build_spec(session: Session, job: Job) -> ValidationSpec:
    """What the worker needs: the adapter's files, the base, the suites to run (the requested
    ones, then the adapter's attached ones, at their latest versions) and the base's known
    perplexities (computed once per base)."""
    version, base = job.version, job.base_model
    assert version is not None and base is not None  # validate jobs always name both
    requested = list(job.payload.get("suites", []))
    attached = eval_queries.attached_suite_names(session, adapter_id=version.adapter_id)
    suites: list[SuiteSpec] = []
    skipped: list[SkippedSuite] = []
    for suite_name in dict.fromkeys([*requested, *attached]):
        suite = eval_queries.get_suite(session, name=suite_name)
        reason = _fit_reason(version, base, suite.kind)
        if reason is not None:
            skipped.append(SkippedSuite(name=suite_name, reason=reason))
            continue
        out = suite_out(suite)
        suites.append(SuiteSpec(name=out.name, version=out.version, kind=out.kind,
                                options=out.options, item_count=out.item_count,
                                files=out.files))
    wanted = {(s.name, s.version) for s in suites}
    known = [
        KnownScore(suite=s.suite, suite_version=s.suite_version, metric=s.metric, value=s.value)
        for s in eval_queries.base_scores(session, base_id=base.id)
        if (s.suite, s.suite_version) in wanted and s.metric == PERPLEXITY
    ]
    return ValidationSpec(
        job=job.id, name=version.adapter.name, version=version.version,
        ref=f"{version.adapter.name}:{version.version}", peft_type=version.peft_type,
        task_type=version.task_type, adapter_config=version.adapter_config,
        adapter_files=[FileOut(path=f.path, digest=f.blob.digest, size=f.blob.size)
                       for f in version.files],
        base=base_out(base), suites=suites, skipped_suites=skipped, base_scores=known,
    )


def _record(session: Session, *, job: Job, report: ValidationReport) -> None:
    version, base = job.version, job.base_model
    groups: dict[tuple[str, int | None, int | None], dict[str, object]] = defaultdict(dict)
    for s in report.scores:
        groups[(s.suite, s.suite_version, s.n)][s.metric] = s.value
    for (suite, suite_version, n), values in sorted(groups.items(), key=str):
        record_scores(session, version=version, base=base, suite=suite, scores=values,
                      source=ScoreSource.worker, suite_version=suite_version, n=n,
                      job_id=job.id)
    base_groups: dict[tuple[str, int | None, int | None], dict[str, object]] = defaultdict(dict)
    for s in report.base_scores:
        base_groups[(s.suite, s.suite_version, s.n)][s.metric] = s.value
    for (suite, suite_version, n), values in sorted(base_groups.items(), key=str):
        record_scores(session, version=None, base=base, suite=suite, scores=values,
                      source=ScoreSource.worker, suite_version=suite_version, n=n,
                      job_id=job.id)


class ValidationHandler:
    """The queue's hooks for ``validate`` jobs (registry.jobs.handlers.JobHandler)."""

    def on_claimed(self, session: Session, job: Job) -> dict[str, Any]:
        version = job.version
        assert version is not None
        if version.status != VersionStatus.validating:
            # Remembered so a job that ends without a verdict puts the status back.
            job.payload = {**job.payload, "prior_status": version.status.value}
            version.status = VersionStatus.validating
        return build_spec(session, job).model_dump(mode="json")

    def on_completed(self, session: Session, job: Job, report: dict[str, Any]) -> Outcome:
        try:
            parsed = ValidationReport.model_validate(report)
        except ValidationError as exc:
            problem = exc.errors()[0]
            loc = ".".join(str(p) for p in problem.get("loc", ()))
            raise InvalidInput(f"invalid validation report: {loc}: {problem.get('msg')}") from None
        version, base = job.version, job.base_model
        assert version is not None and base is not None
        validated = parsed.verdict == "validated"
        if validated and parsed.reasons:
            raise InvalidInput("invalid validation report: a validated verdict has no reasons")
        if not validated and not parsed.reasons:
            raise InvalidInput("invalid validation report: a failed verdict needs its reasons")
        _record(session, job=job, report=parsed)
        load = parsed.load
        load_codes = {"load_failed", "tensors_dropped", "tensors_missing"}
        compat.record_validated(
            session, version=version, base=base,
            compatible=load.loaded and not load.dropped,
            reasons=[r.model_dump() for r in parsed.reasons if r.code in load_codes],
        )
        version.status = VersionStatus.validated if validated else VersionStatus.failed
        messages = [r.message for r in parsed.reasons]
        events.record(
            session,
            type=event_types.VERSION_VALIDATED if validated
            else event_types.VERSION_VALIDATION_FAILED,
            adapter=version.adapter.name, version=version.version, actor=job.created_by,
            payload={"job": job.id, "base_model": base.name, "base_revision": base.revision,
                     "reasons": messages, "device": parsed.device},
        )
        result = parsed.model_dump(mode="json")
        result["findings"] = result.pop("reasons")
        result["reasons"] = messages
        return Outcome(succeeded=validated, result=result,
                       error=None if validated else "validation failed: " + "; ".join(messages))

    def on_abandoned(self, session: Session, job: Job) -> None:
        version = job.version
        if version is None or version.status != VersionStatus.validating:
            return
        if running_validations(session, version_id=version.id, exclude=job.id):
            return  # another validation of it is still running
        prior = job.payload.get("prior_status") or VersionStatus.registered.value
        version.status = VersionStatus(prior)


def handlers() -> Handlers:
    """The job kinds this registry runs, for the composition roots to hand to the queue."""
    return {JobKind.validate.value: ValidationHandler()}
