"""Webhooks end to end, on both deployment shapes, against a real HTTP receiver on loopback:
signatures verify, retries, a killed server, private destinations, bad input, the CLI, and two
servers sharing one PostgreSQL database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from cli.main import cli
from registry.client import HttpRegistry
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.db.models import Event, Webhook, WebhookDelivery
from registry.events import webhooks
from registry.events.webhook_schemas import CreateWebhookIn, DeliveryOut
from tests.integration.helpers import (
    free_port,
    push_raw,
    safetensors_bytes,
    serve,
    server_env,
    start_server,
    stop_server,
)
from tests.integration.webhook_receiver import Receiver, receiver

FAST = {
    "webhook_retry_base_seconds": 0.05,
    "webhook_poll_seconds": 0.1,
    "webhook_timeout_seconds": 2.0,
    "webhook_lease_seconds": 3.0,
}
FAST_ENV = {f"REGISTRY_{k.upper()}": str(v) for k, v in FAST.items()}


@pytest.fixture
def context(settings: Settings) -> Iterator[RegistryContext]:
    """This module's registry: quick retries, and loopback receivers allowed."""
    ctx = RegistryContext.open(settings.model_copy(update={**FAST, "webhook_allow_private": True}))
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def rcv() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def tiny_lora() -> dict[str, bytes]:
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"
    header = {a: {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
              b: {"dtype": "F32", "shape": [8, 2], "data_offsets": [64, 128]}}
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    return {"adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": safetensors_bytes(header, bytes(128))}


def add_hook(ctx: RegistryContext, url: str, events: list[str] | None = None,
             *, adapter: str | None = None) -> int:
    """A webhook added through the service (as the embedded CLI does); loopback allowed."""
    with session_scope(ctx.sessions) as session:
        hook, _ = webhooks.add(session, body=CreateWebhookIn(
            url=url, events=events or ["version.created"], adapter=adapter),
            actor="test", allow_private=True)
        return hook.id


def deliveries(ctx: RegistryContext, hook_id: int) -> list[DeliveryOut]:
    with session_scope(ctx.sessions) as session:
        return [webhooks.delivery_out(d)
                for d in webhooks.list_deliveries(session, webhook_id=hook_id)]


def wait_deliveries(ctx: RegistryContext, hook_id: int,
                    done: Callable[[list[DeliveryOut]], bool],
                    timeout: float = 30.0) -> list[DeliveryOut]:
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(ctx, hook_id)
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not done in {timeout} s: {found}")
        time.sleep(0.05)


def all_settled(found: list[DeliveryOut]) -> bool:
    return bool(found) and all(d.status in ("delivered", "failed") for d in found)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side, written from the Standard Webhooks spec, not from our code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.partition(",")[2], expected)
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


# --- delivery ------------------------------------------------------------------------------------


def test_a_new_version_is_delivered_signed(live_server, rcv):
    client = HttpRegistry(live_server.url)
    try:
        created = client.add_webhook(CreateWebhookIn(url=rcv.url, events=["version.created"]))
        assert created.secret.startswith("whsec_")
        time.sleep(0.3)
        assert rcv.requests == []  # adding sends nothing
        r = push_raw(live_server.url, "bot", tiny_lora())
        assert r.status_code == 201, r.text
        (got,) = rcv.wait_for(lambda rs: len(rs) >= 1)
        assert verify(created.secret, got.headers, got.body)
        assert not verify(created.secret, {**got.headers, "webhook-timestamp": "1"}, got.body)
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        assert got.headers["content-type"] == "application/json"
        body = got.json
        assert set(body) == {"id", "type", "timestamp", "data"}
        assert body["id"] == got.headers["webhook-id"]
        assert body["type"] == "version.created"
        assert body["data"]["adapter"] == "bot" and body["data"]["version"] == 1
        (d,) = wait_deliveries(live_server.context, created.id, all_settled)
        assert (d.status, d.attempts, d.last_status_code) == ("delivered", 1, 200)
        assert d.last_response == "status 200" and d.delivered_at is not None
        # The secret is never answered again.
        listed = httpx.get(f"{live_server.url}/api/v1/webhooks", timeout=30)
        assert listed.status_code == 200 and created.secret not in listed.text
        assert "secret" not in listed.json()[0]
        hist = httpx.get(f"{live_server.url}/api/v1/webhooks/{created.id}/deliveries", timeout=30)
        assert created.secret not in hist.text
    finally:
        client.close()


def webhook_counts(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "registry_webhook_deliveries"]
    return {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_fails_twice_then_succeeds_on_the_third_attempt(live_server, rcv):
    hook = add_hook(live_server.context, rcv.url, ["alias.promoted"])
    rcv.script[:] = [503, 429]
    before = webhook_counts(live_server.url)
    r = httpx.post(f"{live_server.url}/api/v1/webhooks/{hook}/test", timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["event_type"] == "webhook.test"
    got = rcv.wait_for(lambda rs: len(rs) >= 3)
    (d,) = wait_deliveries(live_server.context, hook, all_settled)
    assert (d.status, d.attempts, d.last_status_code) == ("delivered", 3, 200)
    assert len(got) == 3 and len({g.headers["webhook-id"] for g in got}) == 1
    assert len({g.body for g in got}) == 1  # the same message, re-signed per attempt
    after = webhook_counts(live_server.url)  # registry_webhook_deliveries_total by outcome
    assert after["retrying"] - before["retrying"] == 2
    assert after["delivered"] - before["delivered"] == 1


def test_a_4xx_answer_fails_without_retrying(live_server, rcv):
    hook = add_hook(live_server.context, rcv.url)
    rcv.script[:] = [410]
    httpx.post(f"{live_server.url}/api/v1/webhooks/{hook}/test", timeout=30).raise_for_status()
    (d,) = wait_deliveries(live_server.context, hook, all_settled)
    assert (d.status, d.attempts, d.last_status_code) == ("failed", 1, 410)
    time.sleep(0.5)
    assert len(rcv.requests) == 1


@pytest.mark.parametrize("failure", ["500", "connection refused"])
def test_retries_give_up_after_the_window(settings, rcv, failure):
    short = settings.model_copy(update={**FAST, "webhook_allow_private": True,
                                        "webhook_give_up_seconds": 0.5})
    ctx = RegistryContext.open(short)
    try:
        if failure == "500":
            target = rcv.url
            rcv.script[:] = [500] * 100
        else:
            target = f"http://127.0.0.1:{free_port()}/closed"
        hook = add_hook(ctx, target)
        with serve(ctx) as url:
            httpx.post(f"{url}/api/v1/webhooks/{hook}/test", timeout=30).raise_for_status()
            (d,) = wait_deliveries(ctx, hook, all_settled)
        assert d.status == "failed" and "gave up" in (d.last_error or "") and d.attempts >= 2
        if failure == "500":
            assert d.last_status_code == 500 and len(rcv.requests) == d.attempts
        else:
            assert d.last_status_code is None and "connection failed" in (d.last_error or "")
    finally:
        ctx.close()


def test_only_subscribed_types_and_adapters_are_queued(context):
    hook_all = add_hook(context, "http://127.0.0.1:9/a", ["version.archived"])
    hook_one = add_hook(context, "http://127.0.0.1:9/b", ["version.archived"], adapter="one")
    from registry.events import service as events

    with session_scope(context.sessions) as session:
        events.record(session, type="version.archived", adapter="one", version=1)
        events.record(session, type="version.archived", adapter="two", version=1)
        events.record(session, type="alias.promoted", adapter="one", version=1)
        events.record(session, type="webhook.added", adapter="one")  # audit only
    assert len(deliveries(context, hook_all)) == 2
    assert [d.event_type for d in deliveries(context, hook_one)] == ["version.archived"]


def test_a_removed_webhook_gets_nothing_more(live_server, rcv):
    hook = add_hook(live_server.context, rcv.url)
    r = httpx.delete(f"{live_server.url}/api/v1/webhooks/{hook}", timeout=30)
    assert r.status_code == 200 and r.json()["active"] is False
    assert httpx.delete(f"{live_server.url}/api/v1/webhooks/{hook}",
                        timeout=30).json()["error"] == "webhook_not_found"
    assert httpx.post(f"{live_server.url}/api/v1/webhooks/{hook}/test",
                      timeout=30).status_code == 404
    assert push_raw(live_server.url, "bot", tiny_lora()).status_code == 201
    time.sleep(0.5)
    assert rcv.requests == [] and deliveries(live_server.context, hook) == []
    assert httpx.get(f"{live_server.url}/api/v1/webhooks", timeout=30).json() == []
    types = [e["type"] for e in
             httpx.get(f"{live_server.url}/api/v1/events", timeout=30).json()["events"]]
    assert types == ["webhook.added", "webhook.removed", "version.created"]


# --- outbound safety ---------------------------------------------------------------------------


@pytest.fixture
def strict(settings: Settings) -> Iterator[tuple[RegistryContext, str]]:
    """A server with the default rule: no private destinations."""
    ctx = RegistryContext.open(settings.model_copy(update=FAST))
    try:
        with serve(ctx) as url:
            yield ctx, url
    finally:
        ctx.close()


def test_private_destinations_are_refused_at_add(strict):
    ctx, url = strict
    for host in ("127.0.0.1", "localhost", "[::1]", "10.1.2.3", "169.254.169.254",
                 "[::ffff:127.0.0.1]", "0.0.0.0", "224.0.0.1"):
        r = httpx.post(f"{url}/api/v1/webhooks", timeout=30,
                       json={"url": f"http://{host}:8080/hook", "events": ["version.created"]})
        assert r.status_code == 422 and r.json()["error"] == "destination_not_allowed", r.text
        assert "REGISTRY_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]
    with session_scope(ctx.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Webhook)) == 0
        assert session.scalar(select(func.count()).select_from(Event)) == 0


def test_a_name_resolving_to_loopback_is_refused_at_send_time(strict, rcv):
    """Allowed when it was added (elsewhere, or its DNS said otherwise then); the server that
    sends checks the address the name resolves to now and sends nothing."""
    ctx, url = strict
    hook = add_hook(ctx, f"http://localhost:{rcv.port}/hook")
    r = httpx.post(f"{url}/api/v1/webhooks/{hook}/test", timeout=30)
    assert r.status_code == 202, r.text
    (d,) = wait_deliveries(ctx, hook, all_settled)
    assert d.status == "failed" and d.attempts == 1 and d.last_status_code is None
    assert "localhost resolves to" in (d.last_error or "")
    time.sleep(0.3)
    assert rcv.requests == []


def test_a_name_is_sent_to_the_address_checked_with_its_own_host_header(live_server, rcv):
    hook = add_hook(live_server.context, f"http://localhost:{rcv.port}/hook?x=1")
    httpx.post(f"{live_server.url}/api/v1/webhooks/{hook}/test", timeout=30).raise_for_status()
    (got,) = rcv.wait_for(lambda rs: len(rs) >= 1)
    assert got.headers["host"] == f"localhost:{rcv.port}" and got.path == "/hook?x=1"
    (d,) = wait_deliveries(live_server.context, hook, all_settled)
    assert d.status == "delivered"


def test_redirects_are_not_followed(live_server, rcv):
    hook = add_hook(live_server.context, rcv.url)
    rcv.script[:] = [307]
    httpx.post(f"{live_server.url}/api/v1/webhooks/{hook}/test", timeout=30).raise_for_status()
    (d,) = wait_deliveries(live_server.context, hook, all_settled)
    assert (d.status, d.last_status_code) == ("failed", 307)
    assert "redirect" in (d.last_error or "") and len(rcv.requests) == 1


BAD_BODIES = [
    {"url": "not a url", "events": ["version.created"]},
    {"url": "http://", "events": ["version.created"]},
    {"url": "http://user:pw@localhost/", "events": ["version.created"]},
    {"url": "http://127.1/", "events": ["version.created"]},
    {"url": "ftp://localhost/", "events": ["version.created"]},
    {"url": "file:///etc/passwd", "events": ["version.created"]},
    {"url": "javascript:alert(1)", "events": ["version.created"]},
    {"url": "http://localhost/", "events": ["version.deleted"]},
    {"url": "http://localhost/", "events": []},
    {"url": "http://localhost/", "events": ["webhook.added"]},
    {"url": "http://localhost/", "events": ["version.created"], "secret": "hunter2"},
    {"url": "http://localhost/", "events": ["version.created"], "secret": "whsec_!!"},
    {"url": "http://localhost/", "events": ["version.created"],
     "secret": "whsec_" + base64.b64encode(b"short").decode()},
    {"url": "http://localhost/", "events": ["version.created"], "adapter": "Bad Name"},
    {"url": "http://localhost/", "events": ["version.created"], "active": False},
    {"url": "http://localhost/", "events": "version.created"},
    {"url": 5, "events": ["version.created"]},
    {"events": ["version.created"]},
]


def test_bad_input_is_4xx_and_stores_nothing(live_server):
    for body in BAD_BODIES:
        r = httpx.post(f"{live_server.url}/api/v1/webhooks", json=body, timeout=30)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] in ("invalid_input", "invalid_name"), (body, r.text)
    for path in ("/api/v1/webhooks/0/test", "/api/v1/webhooks/x/deliveries"):
        assert httpx.post(f"{live_server.url}{path}", timeout=30).status_code in (404, 405, 422)
    assert httpx.get(f"{live_server.url}/api/v1/webhooks/99/deliveries",
                     timeout=30).json()["error"] == "webhook_not_found"
    with session_scope(live_server.context.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Webhook)) == 0
        assert session.scalar(select(func.count()).select_from(Event)) == 0


# --- the CLI, over HTTP and embedded ---------------------------------------------------------


def _cli_env(settings: Settings) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("REGISTRY_")}
    env["REGISTRY_HOME"] = str(settings.home)
    env["REGISTRY_DATABASE_URL"] = settings.database_url
    env["REGISTRY_BLOB_URL"] = settings.blob_url
    env["REGISTRY_WEBHOOK_ALLOW_PRIVATE"] = "1"
    return env


def _run(env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("over_http", [True, False], ids=["http", "embedded"])
def test_cli_add_list_test_deliveries_rm(live_server, rcv, over_http):
    env = _cli_env(live_server.context.settings)
    url = ["--url", live_server.url] if over_http else []
    code, out, err = _run(env, *url, "--json", "webhook", "add", rcv.url,
                          "--events", "version.created,alias.promoted")
    assert code == 0, err
    added = json.loads(out)
    hook, secret = added["id"], added["secret"]
    assert added["events"] == ["version.created", "alias.promoted"]
    code, out, err = _run(env, *url, "webhook", "list", "--json")
    assert code == 0 and secret not in out and json.loads(out)[0]["id"] == hook, err
    code, out, err = _run(env, *url, "webhook", "test", str(hook))
    assert code == 0 and "queued delivery" in out, err
    (got,) = rcv.wait_for(lambda rs: len(rs) >= 1)
    assert verify(secret, got.headers, got.body) and got.json["type"] == "webhook.test"
    wait_deliveries(live_server.context, hook, all_settled)
    code, out, err = _run(env, *url, "webhook", "deliveries", str(hook), "--json")
    (d,) = json.loads(out)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("delivered", 1, 200)
    code, out, _ = _run(env, *url, "webhook", "deliveries", str(hook))
    assert "delivered" in out and "attempts=1" in out and "last=200" in out
    assert _run(env, *url, "webhook", "rm", str(hook))[0] == 0
    code, _, err = _run(env, *url, "webhook", "rm", str(hook))
    assert code == 3 and err.startswith("error: ") and err.count("\n") == 1, err


CLI_BAD_INPUT = [
    (["webhook", "add", "ftp://x/", "--events", "version.created"], "http:// or https://"),
    (["webhook", "add", "http://localhost/", "--events", "nope"], "unknown event type"),
    (["webhook", "add", "http://localhost/", "--events", "version.created", "--secret",
      "whsec_abc"], "base64"),
    (["webhook", "add", "http://localhost/", "--events", "version.created", "--secret",
      "s3cret"], "whsec_"),
]


@pytest.mark.parametrize("over_http", [True, False], ids=["http", "embedded"])
def test_cli_bad_input_exits_1_with_one_line(live_server, over_http):
    env = _cli_env(live_server.context.settings)
    url = ["--url", live_server.url] if over_http else []
    for args, fragment in CLI_BAD_INPUT:
        code, out, err = _run(env, *url, *args)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, (out, err)
        assert fragment in err and "Traceback" not in err, err
    with session_scope(live_server.context.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Webhook)) == 0


# --- servers as processes: a kill, and two replicas -------------------------------------------


def _server_env(settings: Settings, **extra: str) -> dict[str, str]:
    return server_env(settings, **{**FAST_ENV, "REGISTRY_WEBHOOK_ALLOW_PRIVATE": "1", **extra})


def test_a_killed_server_delivers_after_restart(settings, context, rcv):
    """kill -9 while a delivery is being sent (claimed, leased) and another is queued: after a
    restart the queued one is sent at once and the claimed one once its lease expires."""
    hook = add_hook(context, rcv.url)
    env = _server_env(settings)
    rcv.release.clear()  # hold the first request open: the server is mid-send when killed
    proc, url = start_server(env)
    try:
        r = httpx.post(f"{url}/api/v1/webhooks/{hook}/test", timeout=30)
        assert r.status_code == 202, r.text
        first = r.json()["id"]
        rcv.wait_for(lambda rs: len(rs) == 1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_server(proc)
    with session_scope(context.sessions) as session:
        second = webhooks.enqueue_test(session, webhook_id=hook, actor=None).id
    state = {d.id: (d.status, d.attempts) for d in deliveries(context, hook)}
    assert state == {first: ("delivering", 1), second: ("pending", 0)}
    rcv.release.set()

    proc, url = start_server(env)
    try:
        found = wait_deliveries(context, hook, all_settled, timeout=60)
    finally:
        stop_server(proc)
    state = {d.id: (d.status, d.attempts) for d in found}
    assert state == {first: ("delivered", 2), second: ("delivered", 1)}
    ids = [g.headers["webhook-id"] for g in rcv.requests]
    assert len(ids) == 3 and len(set(ids)) == 2  # the interrupted one was sent again


@pytest.mark.parametrize("settings", ["postgres-s3"], indirect=True)
def test_two_servers_on_one_postgres_deliver_each_event_once(settings, context, rcv):
    hook = add_hook(context, rcv.url)
    rcv.delay = 0.02
    env = _server_env(settings, REGISTRY_WEBHOOK_POLL_SECONDS="0.02")
    servers = [start_server(env) for _ in range(2)]
    try:
        with session_scope(context.sessions) as session:
            for _ in range(40):
                webhooks.enqueue_test(session, webhook_id=hook, actor=None)
        found = wait_deliveries(context, hook,
                                lambda ds: len(ds) == 40 and all_settled(ds), timeout=90)
    finally:
        for proc, _ in servers:
            stop_server(proc)
    assert {(d.status, d.attempts) for d in found} == {("delivered", 1)}
    ids = [g.headers["webhook-id"] for g in rcv.requests]
    assert len(ids) == 40 and len(set(ids)) == 40
    with session_scope(context.sessions) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 40
