"""Request ids, log formats and the metric collectors (registry.observability), without a server."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from registry.observability.logs import JsonFormatter, TextFormatter, request_id
from registry.observability.metrics import (
    ApiMetrics,
    JobStats,
    WorkerMetrics,
    observe_webhook_delivery,
)


@pytest.mark.parametrize("incoming", ["abc", "0af7651916cd43dd8448eb211c80319c",
                                      "Root=1-5759e988:a/b+c_d.e", "x" * 128])
def test_safe_request_ids_are_kept(incoming):
    assert request_id(incoming) == incoming


@pytest.mark.parametrize("incoming", [None, "", "x" * 129, "a b", 'a"b', "a\nb", "-lead",
                                      "<script>", "é", "a;b"])
def test_other_request_ids_are_replaced(incoming):
    new = request_id(incoming)
    assert new != incoming and len(new) == 32 and new.isalnum()


def record(msg: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("registry.access", logging.INFO, __file__, 1, msg, None, None)
    rec.fields = fields
    return rec


def test_json_lines_parse_and_carry_fields():
    line = JsonFormatter().format(record('GET "x"\nnext', request_id="r1", status=200,
                                         message="not overwritten"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == 'GET "x"\nnext' and data["request_id"] == "r1"
    assert data["status"] == 200 and data["logger"] == "registry.access"
    assert data["level"] == "info" and data["ts"].endswith("+00:00")


def test_text_lines_append_fields_quoted_when_needed():
    line = TextFormatter().format(record("GET", request_id="r1", path="/a b", empty=""))
    assert line.endswith('GET request_id=r1 path="/a b" empty=""')


def families(text: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def test_queue_families_and_a_failing_query():
    metrics = ApiMetrics()
    stats = JobStats(counts={("validate", "queued"): 2, ("validate", "running"): 1},
                     queued={"validate": 2}, oldest_queued_age={"validate": 4.5})
    metrics.watch_jobs(lambda: stats, lambda exc: None)
    out = families(metrics.exposition())
    assert [(s.labels, s.value) for s in out["registry_job_queue_oldest_age_seconds"]] == [
        ({"kind": "validate"}, 4.5)]
    assert out["registry_job_stats_up"][0].value == 1

    failures: list[Exception] = []
    broken = ApiMetrics()

    def down() -> JobStats:
        raise ConnectionError("database down")

    broken.watch_jobs(down, failures.append)
    broken.observe_request(route="/healthz", method="BREW", status=200, seconds=0.01)
    out = families(broken.exposition())  # the scrape still answers
    assert out["registry_job_stats_up"][0].value == 0 and "registry_jobs" not in out
    assert isinstance(failures[0], ConnectionError)
    [sample] = out["registry_http_requests"]
    assert sample.labels == {"method": "other", "route": "/healthz", "status": "200"}


def test_webhook_deliveries_are_counted_in_every_registry_with_bounded_outcomes():
    api, worker = ApiMetrics(), WorkerMetrics()

    def count(registry: CollectorRegistry, outcome: str) -> float:
        samples = families(generate_latest(registry))["registry_webhook_deliveries"]
        return next((s.value for s in samples if s.labels == {"outcome": outcome}), 0.0)

    delivered, other = count(api.registry, "delivered"), count(api.registry, "other")
    observe_webhook_delivery("delivered")
    observe_webhook_delivery("no-such-outcome")
    assert count(api.registry, "delivered") == delivered + 1
    assert count(worker.registry, "delivered") == delivered + 1  # one process-wide counter
    assert count(api.registry, "other") == other + 1
    assert count(api.registry, "no-such-outcome") == 0
