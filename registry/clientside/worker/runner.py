"""One validation job, start to end: fetch, load (or reuse) the base, attach, smoke and suites,
detach, and the report the registry records.

A failure that says something about the adapter (it does not load, drops tensors, gives NaN,
changes nothing, leaks into the base, a suite cannot run on it) is a ``failed`` verdict in the
report. A failure of the worker's own means (the base cannot be fetched, the device ran out of
memory) raises ``JobError``: the job fails without a verdict and the worker goes on.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from registry.backend import RegistryBackend
from registry.clientside.worker import checks, suites
from registry.clientside.worker.device import (
    Device,
    describe_oom,
    empty_cache,
    is_oom,
    peak_bytes,
    reset_peak,
)
from registry.clientside.worker.files import BaseFileCache, BaseUnavailable, download_verified
from registry.clientside.worker.models import LoadedBase, ModelCache, model_class
from registry.config import Settings
from registry.formats import normalize_path
from registry.validation.schemas import (
    SMOKE,
    Finding,
    LoadReport,
    ReportScore,
    SuiteRun,
    ValidationReport,
    ValidationSpec,
)

Check = Callable[[], None]


class JobError(Exception):
    """The worker could not run the job; it fails with this line and no verdict."""


@dataclass
class WorkerContext:
    """What every job of one worker process shares."""

    backend: RegistryBackend
    settings: Settings
    device: Device
    files: BaseFileCache
    models: ModelCache
    worker_id: str


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _fetch_files(backend: RegistryBackend, files: list[Any], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = into / normalize_path(f.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        download_verified(backend, f.digest, dest)


def _adapter_name(job: int, attempt: int) -> str:
    # Unique per job and attempt; no dot (PEFT nests it in parameter names) and not a
    # substring of a method prefix such as "lora_".
    return f"job{job}_a{attempt}"


def run(ctx: WorkerContext, spec: ValidationSpec, *, attempt: int, check: Check) -> dict[str, Any]:
    """Validate ``spec`` and return the report (a ValidationReport as JSON).

    Raises:
        JobError: the base's files cannot be fetched, the device ran out of memory.
        Abort (from ``check``): stop now (the worker is stopping, or lost the job).
    """
    try:
        return _run(ctx, spec, attempt=attempt, check=check).model_dump(mode="json")
    except BaseUnavailable as exc:
        raise JobError(str(exc)) from None
    except Exception as exc:
        if not is_oom(exc):
            raise
        message = describe_oom(exc, ctx.device)
        # The failed allocation may have left the cached base half-modified: start clean.
        ctx.models.clear()
        empty_cache(ctx.device)
        raise JobError(message) from None


def _run(ctx: WorkerContext, spec: ValidationSpec, *, attempt: int,
         check: Check) -> ValidationReport:
    device = ctx.device
    reset_peak(device)
    timings = dict.fromkeys(("fetch_s", "base_load_s", "attach_s", "eval_s", "detach_s",
                             "forward_s"), 0.0)
    report = ValidationReport(verdict="validated", load=LoadReport(loaded=False, file_tensors=0,
                                                                   applied_tensors=0),
                              device=device.name, dtype=device.dtype_name,
                              gpu_name=device.gpu_name(), versions=_versions(),
                              worker=ctx.worker_id, timings=timings)
    timings = report.timings  # the model holds its own copy: fill that one in
    with tempfile.TemporaryDirectory(prefix=f"validate-{spec.job}-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        adapter_dir = tmp / "adapter"
        _fetch_files(ctx.backend, spec.adapter_files, adapter_dir)
        suite_dirs = {}
        for suite in spec.suites:
            suite_dirs[suite.name] = tmp / "suites" / suite.name
            _fetch_files(ctx.backend, suite.files, suite_dirs[suite.name])
        fetched = ctx.files.fetch(ctx.backend, spec.base, ctx.settings)
        timings["fetch_s"] = time.perf_counter() - start
        check()

        cls = model_class(spec.task_type, spec.base.architectures)
        base, hit = ctx.models.get(fetched.path, key=fetched.path.name, cls=cls)
        report.base_cache_hit = hit
        timings["base_load_s"] = 0.0 if hit else base.load_seconds
        check()
        try:
            _validate(ctx, spec, base, adapter_dir, suite_dirs, report, attempt=attempt,
                      check=check)
        finally:
            ctx.models.release(base)
    # Attached suites whose kind does not fit this adapter: listed, not run, not a failure.
    report.suites.extend(SuiteRun(name=s.name, kind="skipped", error=s.reason)
                         for s in spec.skipped_suites)
    # Timings and memory describe this run on this machine, not the adapter: recorded with the
    # job (its result), not as scores a comparison or a promotion gate would read.
    report.peak_memory_bytes = peak_bytes(device)
    if report.reasons:
        report.verdict = "failed"
    return report


def _base_perplexities(ctx: WorkerContext, spec: ValidationSpec, base: LoadedBase,
                       suite_dirs: dict[str, Path], report: ValidationReport,
                       check: Check) -> dict[str, float]:
    """The base's own perplexity on each perplexity suite: known to the registry, known to this
    worker, or computed now (once per base)."""
    known = {(s.suite, s.suite_version): s.value for s in spec.base_scores
             if s.metric == "perplexity"}
    out = {}
    for suite in spec.suites:
        if suite.kind != "perplexity":
            continue
        key = (suite.name, suite.version)
        if key in known:
            out[suite.name] = known[key]
            continue
        if key not in base.base_scores:
            data = suite_dirs[suite.name] / suite.files[0].path
            scores = suites.perplexity(base.model, base, suite, data, check)
            base.base_scores[key] = scores.metrics["perplexity"]
            report.base_scores.append(ReportScore(
                suite=suite.name, suite_version=suite.version, metric="perplexity",
                value=scores.metrics["perplexity"], n=scores.n))
        out[suite.name] = base.base_scores[key]
    return out


def _validate(ctx: WorkerContext, spec: ValidationSpec, base: LoadedBase, adapter_dir: Path,
              suite_dirs: dict[str, Path], report: ValidationReport, *, attempt: int,
              check: Check) -> None:
    timings = report.timings
    eval_start = time.perf_counter()
    try:
        base_ppl = _base_perplexities(ctx, spec, base, suite_dirs, report, check)
    except suites.SuiteError as exc:
        report.reasons.append(Finding(code="suite_failed", message=str(exc)))
        return
    eval_before = time.perf_counter() - eval_start
    try:
        attached = checks.attach(base, adapter_dir, name=_adapter_name(spec.job, attempt))
    except checks.AttachFailed as exc:
        report.load.error = str(exc)
        report.reasons.append(Finding(code="load_failed", message=(
            f"the adapter does not load onto {spec.base.name}@{spec.base.revision}: {exc}")))
        ctx.models.evict(base)  # PEFT may have injected layers before it failed
        return
    timings["attach_s"] = attached.seconds
    report.load = attached.load
    report.reasons.extend(checks.load_findings(attached.load))
    try:
        eval_start = time.perf_counter()
        result = checks.smoke(base, attached)
        timings["forward_s"] = result.forward_seconds
        report.reasons.extend(result.findings)
        smoke_scores = {**result.scores,
                        "applied_tensors": float(attached.load.applied_tensors),
                        "dropped_tensors": float(len(attached.load.dropped))}
        report.scores.extend(ReportScore(suite=SMOKE, metric=m, value=v)
                             for m, v in sorted(smoke_scores.items()))
        if not report.reasons:
            _run_suites(ctx, spec, base, attached, adapter_dir, suite_dirs, base_ppl, report,
                        check)
        timings["eval_s"] = eval_before + time.perf_counter() - eval_start
    finally:
        timings["detach_s"] = checks.detach(base, attached)
        start = time.perf_counter()
        leaked = checks.base_unchanged(base)
        timings["detach_s"] += time.perf_counter() - start
        if leaked is not None:
            report.reasons.append(leaked)
            ctx.models.evict(base)


def _run_suites(ctx: WorkerContext, spec: ValidationSpec, base: LoadedBase,
                attached: checks.Attached, adapter_dir: Path, suite_dirs: dict[str, Path],
                base_ppl: dict[str, float], report: ValidationReport, check: Check) -> None:
    for suite in spec.suites:
        check()
        run = SuiteRun(name=suite.name, version=suite.version, kind=suite.kind)
        report.suites.append(run)
        try:
            if suite.kind == "lm-eval":
                scores = suites.lm_eval(suite, suite_dirs[suite.name], base_dir=base.path,
                                        adapter_dir=adapter_dir, device=ctx.device.name,
                                        dtype=ctx.device.dtype_name)
            else:
                data = suite_dirs[suite.name] / suite.files[0].path
                scores = suites.RUNNERS[suite.kind](attached.model, base, suite, data, check)
        except suites.SuiteError as exc:
            run.error = str(exc)
            report.reasons.append(Finding(code="suite_failed", message=str(exc)))
            continue
        if suite.name in base_ppl:
            scores.metrics["perplexity_base"] = base_ppl[suite.name]
        run.n, run.seconds = scores.n, scores.seconds
        report.scores.extend(
            ReportScore(suite=suite.name, suite_version=suite.version, metric=m, value=v,
                        n=scores.n)
            for m, v in sorted(scores.metrics.items()))
