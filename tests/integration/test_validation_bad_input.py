"""Malformed requests to the job, suite and validation routes: a clear 4xx with {"error",
"detail"}, never a 500, and nothing queued or recorded."""

from __future__ import annotations

import httpx

from registry.clientside.transfer import push, register_base_dir
from tests.integration.helpers import put_blob

Z = "sha256:" + "0" * 64
LEASE = {"worker": "w", "attempt": 1}
JUNK = [
    ("GET", "/api/v1/jobs?status=done", None, 422),
    ("GET", "/api/v1/jobs?limit=0", None, 422),
    ("GET", "/api/v1/jobs?kind=train", None, 422),
    ("GET", "/api/v1/jobs/0", None, 422),
    ("GET", "/api/v1/jobs/abc", None, 404),  # not a job id: no such route
    ("GET", "/api/v1/jobs/99999999999999999999", None, 422),
    ("GET", "/api/v1/jobs/12345", None, 404),
    ("POST", "/api/v1/jobs/12345/cancel", None, 404),
    ("POST", "/api/v1/jobs/12345/retry", None, 404),
    ("POST", "/api/v1/jobs/claim", {}, 422),
    ("POST", "/api/v1/jobs/claim", {"worker": ""}, 422),
    ("POST", "/api/v1/jobs/claim", {"worker": "w", "kinds": ["train"]}, 422),
    ("POST", "/api/v1/jobs/claim", {"worker": "w", "lease_seconds": 1}, 422),
    ("POST", "/api/v1/jobs/1/heartbeat", {"worker": "w"}, 422),
    ("POST", "/api/v1/jobs/1/heartbeat", {"worker": "w", "attempt": 0}, 422),
    ("POST", "/api/v1/jobs/1/complete", {**LEASE}, 422),
    ("POST", "/api/v1/jobs/1/complete", {**LEASE, "report": {}}, 409),  # not held by w
    ("POST", "/api/v1/jobs/1/complete", {**LEASE, "report": []}, 422),
    ("POST", "/api/v1/jobs/1/fail", {**LEASE}, 422),
    ("POST", "/api/v1/jobs/1/fail", {**LEASE, "error": ""}, 422),
    ("POST", "/api/v1/jobs/1/release", {"worker": "w", "attempt": "one"}, 422),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "bleu", "files": {"a": Z}}, 422),
    ("POST", "/api/v1/suites", {"name": "Bad.Name", "kind": "perplexity", "files": {"a": Z}},
     422),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "perplexity", "files": {}}, 422),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "perplexity", "files": {"../a": Z}}, 422),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "perplexity", "files": {"a": "md5:1"}},
     422),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "perplexity", "files": {"a": Z}}, 404),
    ("POST", "/api/v1/suites", {"name": "s", "kind": "generate", "files": {"a": Z},
                                "options": {"max_new_tokens": "lots"}}, 422),
    ("POST", "/api/v1/suites", [], 422),
    ("GET", "/api/v1/suites/nope", None, 404),
    ("GET", "/api/v1/suites/nope?version=0", None, 422),
    ("POST", "/api/v1/suites/nope/attachments", {"adapter": "bot"}, 404),
    ("POST", "/api/v1/suites/nope/attachments", {}, 422),
    ("POST", "/api/v1/adapters/bot/versions/1/validate", {"suites": "ppl"}, 422),
    ("POST", "/api/v1/adapters/bot/versions/1/validate", {"priority": 10**9}, 422),
    ("POST", "/api/v1/adapters/bot/versions/1/validate", {"base": "nope"}, 404),
    ("POST", "/api/v1/adapters/bot/versions/9/validate", {}, 404),
    ("POST", "/api/v1/adapters/Bad%20Name/versions/1/validate", {}, 422),
    ("POST", "/api/v1/adapters/bot/versions/1/validate", {"suites": ["nope"]}, 404),
    ("POST", "/api/v1/adapters/bot/versions/1/evals", {"suite": "ci", "scores": {"a": "nan"}},
     422),
    ("GET", "/api/v1/base-models/nope/evals", None, 404),
]


def test_junk_is_a_clear_4xx_and_queues_nothing(live_server, http, settings, adapters_dir,
                                                base_dirs):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    before = http.list_jobs()
    for method, path, body, status in JUNK:
        r = httpx.request(method, live_server.url + path, json=body, timeout=30)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        assert set(r.json()) == {"error", "detail"}, r.text
    assert http.list_jobs() == before
    assert http.list_suites() == []


def test_suite_with_a_bad_line_is_refused_by_the_server(live_server, http):
    # A client that skips its own checks: the server reads the stored blob and names the line.
    data = b'{"text": "fine"}\n{"text": "fine"}\n{"text": broken}\n'
    put_blob(live_server.url, data)
    from tests.integration.helpers import digest_of

    r = httpx.post(f"{live_server.url}/api/v1/suites", timeout=30,
                   json={"name": "s", "kind": "perplexity", "files": {"s.jsonl": digest_of(data)}})
    assert r.status_code == 422 and "s.jsonl line 3: invalid JSON" in r.json()["detail"]
    assert http.list_suites() == []
