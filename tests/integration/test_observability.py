"""/metrics, the worker's --metrics-port, request ids and JSON logs, on both deployment shapes,
with real processes: the API on a socket, a worker subprocess, `adapter-registry server`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.clientside.transfer import pull, push, register_base_dir
from registry.lifecycle.schemas import PromoteIn
from tests.integration import worker_helpers as wh
from tests.integration.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[str, list]:
    """Family name → its samples, parsed by prometheus_client's own parser."""
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    family = next(f for f in families if sample.startswith(f))
    found = [s.value for s in families[family] if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, families[family])
    return found[0]





@pytest.mark.slow
def test_metrics_after_push_validation_and_promotion(http, live_server, settings, tmp_path,
                                                      base_dirs, adapters_dir):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    version = push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
                   base_model="tiny-llama").version
    families = scrape(f"{live_server.url}/metrics")
    assert value(families, "registry_jobs", kind="validate", status="queued") == 1
    assert value(families, "registry_jobs", kind="export", status="running") == 0
    assert value(families, "registry_job_queue_depth", kind="validate") == 1
    assert value(families, "registry_job_queue_oldest_age_seconds", kind="validate") >= 0
    assert value(families, "registry_job_stats_up") == 1

    # A real worker process, reaching the registry by URL only, with JSON logs and metrics.
    port = free_port()
    env = wh.worker_env(tmp_path / "worker-home", url=True)
    env["REGISTRY_LOG_FORMAT"] = "json"
    proc = subprocess.Popen(
        [*wh.worker_cmd("--device", "cpu", "--metrics-port", str(port), url=live_server.url)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wh.wait_for(lambda: http.list_jobs(status="succeeded"), timeout=300,
                    what="the validation to succeed")
        worker = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert value(worker, "registry_validation_duration_seconds_count", outcome="validated") == 1
    assert value(worker, "registry_validation_duration_seconds_sum", outcome="validated") > 0
    assert value(worker, "registry_worker_jobs_total", kind="validate", outcome="validated") == 1
    assert "registry_webhook_deliveries" in worker
    # Its log: JSON lines only, one per job with the job's fields.
    bad = [line for line in err.splitlines() if line.strip() and not line.startswith("{")]
    assert not bad, bad
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    [job_line] = [line for line in lines if line.get("event") == "job"]
    assert (job_line["kind"], job_line["ref"], job_line["outcome"]) == (
        "validate", "bot:1", "validated")
    assert job_line["seconds"] > 0 and job_line["level"] == "info"
    assert json.loads(out)["jobs"][0]["verdict"] == "validated"

    http.promote("bot", "production", PromoteIn(version=1))
    pull(http, ref="bot@production", directory=tmp_path / "pulled")
    families = scrape(f"{live_server.url}/metrics")

    assert value(families, "registry_http_requests_total", method="PUT",
                 route="/api/v1/adapters/{name}/aliases/{alias}", status="200") == 1
    assert value(families, "registry_http_requests_total", method="POST",
                 route="/api/v1/adapters/{name}/versions", status="201") == 1
    assert value(families, "registry_http_request_duration_seconds_count", method="POST",
                 route="/api/v1/jobs/claim", status="200") >= 1
    assert value(families, "registry_http_request_duration_seconds_bucket", method="PUT",
                 route="/api/v1/adapters/{name}/aliases/{alias}", status="200", le="+Inf") == 1
    # Routes are templates: no sample names an adapter, a digest or a job id.
    routes = {s.labels["route"] for s in families["registry_http_requests"]}
    assert all(r.startswith("/") and ("bot" not in r) and ("sha256" not in r) for r in routes)
    assert all(not any(c.isdigit() for c in r.replace("/api/v1", "")) for r in routes), routes

    assert value(families, "registry_jobs", kind="validate", status="succeeded") == 1
    assert value(families, "registry_jobs", kind="validate", status="queued") == 0
    assert value(families, "registry_job_queue_depth", kind="validate") == 0
    assert value(families, "registry_job_queue_oldest_age_seconds", kind="validate") == 0
    # Bytes in: every stored upload (adapter and base files); out: the worker's fetches and
    # the pull (the adapter at least twice over).
    uploaded = sum(f.size for f in [*version.files, *http.get_base("tiny-llama").files])
    assert value(families, "registry_blob_bytes_total", direction="in") == uploaded
    assert value(families, "registry_blob_bytes_total", direction="out") >= (
        2 * version.total_size)
    assert {s.labels["outcome"] for s in families["registry_webhook_deliveries"]} >= {
        "delivered", "retrying", "failed"}


def test_json_request_logs_carry_the_request_id(settings, tmp_path):
    """`adapter-registry server` with REGISTRY_LOG_FORMAT=json: every stderr line is JSON, one
    per request, with the id the response carried (the client's, or a new one)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update({"REGISTRY_HOME": str(settings.home), "REGISTRY_LOG_FORMAT": "json",
                "PYTHONPATH": str(REPO)})
    if settings.database_url is not None:
        env.update({"REGISTRY_DATABASE_URL": settings.database_url,
                    "REGISTRY_BLOB_URL": str(settings.blob_url)})
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "server", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", headers={"X-Request-ID": "probe"})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        ok = httpx.get(f"{url}/api/v1/adapters", headers={"X-Request-ID": "trace-7:a/b"})
        missing = httpx.get(f"{url}/api/v1/adapters/nobody/versions/1",
                            headers={"X-Request-ID": "t-404"})
        fresh = httpx.get(f"{url}/api/v1/adapters")
        unsafe = httpx.get(f"{url}/api/v1/adapters", headers={"X-Request-ID": "x" * 129})
        quoted = httpx.get(f"{url}/api/v1/adapters", headers={"X-Request-ID": 'a"b'})
        huge = httpx.post(f"{url}/api/v1/adapters/x/versions", content=b"{" + b" " * 2**24,
                          headers={"X-Request-ID": "t-413"})
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "trace-7:a/b"
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "t-404"
    assert huge.status_code == 413 and huge.headers["X-Request-ID"] == "t-413"
    generated = [r.headers["X-Request-ID"] for r in (fresh, unsafe, quoted)]
    assert all(len(g) == 32 and g.isalnum() for g in generated) and len(set(generated)) == 3

    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # all JSON
    requests = {line["request_id"]: line for line in lines if line.get("event") == "request"}
    assert set(requests) >= {"probe", "trace-7:a/b", "t-404", "t-413", *generated}
    line = requests["trace-7:a/b"]
    assert (line["method"], line["route"], line["path"], line["status"]) == (
        "GET", "/api/v1/adapters", "/api/v1/adapters", 200)
    assert line["duration_ms"] >= 0 and line["logger"] == "registry.access"
    assert (requests["t-404"]["route"], requests["t-404"]["status"]) == (
        "/api/v1/adapters/{name}/versions/{version}", 404)
    assert requests["t-413"]["status"] == 413
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # its lines too


def test_unexpected_errors_carry_the_request_id(context, caplog):
    from fastapi.testclient import TestClient

    from registry.api.app import create_app

    app = create_app(context=context)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-ID": "bug-1"})
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert r.headers["X-Request-ID"] == "bug-1"
    assert any("bug-1" in rec.getMessage() for rec in caplog.records)
    families = {f.name: f.samples for f in text_string_to_metric_families(
        app.state.metrics.exposition().decode())}
    assert value(families, "registry_http_requests_total", method="GET", route="/boom",
                 status="500") == 1
