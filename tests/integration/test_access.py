"""Access control on both deployment shapes: every route's scope decision, allowed and refused
(a table over the app's routes, so a route added without a decision fails here), namespaces,
expiry, revocation, secrets never stored in clear, the token's name as the actor."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from registry.api.app import create_app
from registry.api.deps import api_routes, scope_decisions
from registry.auth import service as tokens
from registry.auth.scopes import Scope
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.base import utcnow
from registry.db.engine import session_scope
from registry.errors import Unauthenticated
from tests.integration.helpers import digest_of, safetensors_bytes, serve

ALL_SCOPES = [s.value for s in Scope]
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
               ("GET", "/api/v1/auth/whoami")}
# The web UI's login form, logout and stylesheet/script (its pages redirect to the login form
# instead of answering 401: tests/integration/test_ui_access.py).
UI_OPEN_ROUTES = {("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"),
                  ("GET", "/ui/static/{filename}")}
# The decisions the issue spells out, for a sample of each route class: a change to one of
# these is a change to the contract, not a refactoring.
EXPECTED = {
    ("GET", "/api/v1/adapters/{name}/versions/{version}"): "read",
    ("HEAD", "/api/v1/blobs/{digest}"): "read",
    ("GET", "/api/v1/adapters/{name}/aliases/{alias}"): "read",
    ("PUT", "/api/v1/blobs/{digest}"): "push",
    ("POST", "/api/v1/adapters/{name}/versions"): "push",
    ("POST", "/api/v1/adapters/{name}/versions/{version}/evals"): "push",
    ("POST", "/api/v1/suites"): "push",
    ("POST", "/api/v1/jobs/claim"): "validate",
    ("POST", "/api/v1/jobs/{job_id}/heartbeat"): "validate",
    ("POST", "/api/v1/jobs/{job_id}/complete"): "validate",
    ("PUT", "/api/v1/adapters/{name}/aliases/{alias}"): "promote",
    ("POST", "/api/v1/adapters/{name}/aliases/{alias}/rollback"): "promote",
    ("DELETE", "/api/v1/adapters/{name}/aliases/{alias}"): "promote",
    ("POST", "/api/v1/adapters/{name}/versions/{version}/archive"): "promote",
    ("POST", "/api/v1/admin/gc"): "admin",
    ("PUT", "/api/v1/policies/{alias}"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens/{name}/revoke"): "admin",
    ("GET", "/api/v1/audit"): "admin",
}


def route_table() -> list[tuple[str, str, str | None, str | None]]:
    """(method, path template, scope or None, namespace parameter) of every API route."""
    table = []
    for route in api_routes(create_app(Settings()).routes):
        decisions = scope_decisions(route)
        for method in sorted(route.methods):
            assert len(decisions) == 1, (
                f"{method} {route.path_format} carries {len(decisions)} scope decisions: list "
                "exactly one dependencies=[require(Scope.X)] (require(None) for an open route)")
            scope = decisions[0].scope
            table.append((method, route.path_format, scope.value if scope else None,
                          decisions[0].adapter_param))
    return table


TABLE = route_table()


def test_every_route_carries_exactly_one_scope_decision():
    assert len(TABLE) > 50
    decided = {(m, p): s for m, p, s, _ in TABLE}
    assert {k for k, s in decided.items() if s is None} == OPEN_ROUTES | UI_OPEN_ROUTES
    for key, scope in EXPECTED.items():
        assert decided[key] == scope, key
    # Every GET of the API is read (whoami: any valid token), except the admin listings.
    for (method, path), scope in decided.items():
        if method in ("GET", "HEAD") and (method, path) not in OPEN_ROUTES | UI_OPEN_ROUTES:
            assert scope in ("read", "admin"), (method, path, scope)
            if scope == "admin":
                assert path in ("/api/v1/tokens", "/api/v1/audit", "/api/v1/webhooks",
                                "/api/v1/webhooks/{webhook_id}/deliveries"), path


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest's two deployment shapes, with REGISTRY_AUTH=required."""
    return settings.model_copy(update={"auth": "required"})


def make_token(ctx, name: str, scopes: list[str], namespaces: tuple[str, ...] = (), **kw) -> str:
    with session_scope(ctx.sessions) as session:
        return tokens.create_token(session, name=name, scopes=scopes, namespaces=namespaces,
                                   **kw).token


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


_PARAMS = {"version": "1", "alias": "production", "digest": f"sha256:{'0' * 64}",
           "job_id": "1", "size": "0"}


def concrete(path: str, adapter_param: str | None) -> str:
    def value(match: re.Match[str]) -> str:
        param = match.group(1)
        if param == adapter_param:
            return "team-a/bot"
        return _PARAMS.get(param, "thing")

    return re.sub(r"\{([a-z_]+)\}", value, path)


def test_each_route_allows_its_scope_and_refuses_the_others(live_server):
    ctx = live_server.context
    holders = {s: make_token(ctx, f"only-{s}", [s]) for s in ALL_SCOPES}
    # Every scope but the one needed (and admin, which implies them all).
    lacking = {s: make_token(ctx, f"all-but-{s}", [o for o in ALL_SCOPES
                                                    if o not in (s, "admin")])
               for s in ALL_SCOPES if s != "admin"}
    lacking["admin"] = make_token(ctx, "all-but-admin",
                                  [o for o in ALL_SCOPES if o != "admin"])
    checked = 0
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for method, path, scope, adapter_param in TABLE:
            if path.startswith("/ui"):
                continue  # the web UI: tests/integration/test_ui_access.py
            url = concrete(path, adapter_param)
            if scope is None:
                if path != "/api/v1/auth/whoami":
                    r = client.request(method, url)
                    assert r.status_code == 200, (method, path, r.text)
                continue
            r = client.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert r.json()["error"] == "unauthenticated", (method, path)
            r = client.request(method, url, headers=bearer(lacking[scope]))
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            if method != "HEAD":
                assert r.json()["error"] == "permission_denied"
                assert f"'{scope}' scope" in r.json()["detail"], r.text
            for holder in (holders[scope], holders["admin"]):
                r = client.request(method, url, headers=bearer(holder))
                assert r.status_code not in (401, 403), (method, path, scope, r.text)
            checked += 1
    assert checked == len([t for t in TABLE if t[2] is not None and not t[1].startswith("/ui")])


def test_bad_tokens_are_401(live_server):
    ctx = live_server.context
    good = make_token(ctx, "reader", ["read"])
    url = f"{live_server.url}/api/v1/adapters"
    assert httpx.get(url, headers=bearer(good)).status_code == 200
    for header in (f"Bearer {good[:-1]}x", "Bearer arg_short", "Basic dXNlcjpwYXNz",
                   "Bearer", f"Token {good}", "Bearer " + "é" * 10):
        r = httpx.get(url, headers={"Authorization": header.encode("utf-8")})
        assert r.status_code == 401, (header, r.text)
        assert r.json()["error"] == "unauthenticated"


def test_expired_and_revoked_tokens_are_401(live_server):
    ctx = live_server.context
    admin = make_token(ctx, "root", ["admin"])
    expired = make_token(ctx, "old", ["read"], expires_in=timedelta(hours=1),
                         now=utcnow() - timedelta(hours=2))
    fresh = make_token(ctx, "fresh", ["read"], expires_in=timedelta(hours=1))
    url = f"{live_server.url}/api/v1/adapters"
    r = httpx.get(url, headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["detail"], r.text
    assert httpx.get(url, headers=bearer(fresh)).status_code == 200

    # The service says the same at a later clock.
    with session_scope(ctx.sessions) as session, pytest.raises(Unauthenticated):
        tokens.authenticate(session, fresh, now=utcnow() + timedelta(hours=2))

    r = httpx.post(f"{live_server.url}/api/v1/tokens/fresh/revoke", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    r = httpx.get(url, headers=bearer(fresh))
    assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text
    r = httpx.post(f"{live_server.url}/api/v1/tokens/nobody/revoke", headers=bearer(admin))
    assert r.status_code == 404 and r.json()["error"] == "token_not_found"

    listed = httpx.get(f"{live_server.url}/api/v1/tokens", headers=bearer(admin)).json()
    assert {t["name"]: t["status"] for t in listed} == {
        "root": "active", "old": "expired", "fresh": "revoked"}
    assert all("token" not in t and "secret_sha256" not in t for t in listed)


def test_namespace_limits(live_server):
    ctx = live_server.context
    team_a = make_token(ctx, "team-a-ci", ["read", "push", "promote"], ("team-a",))
    base = live_server.url
    h = bearer(team_a)
    # Its own namespace: allowed (nothing there yet: 404, not 403).
    assert httpx.get(f"{base}/api/v1/adapters/team-a/bot/versions", headers=h).status_code == 404
    for url in (f"{base}/api/v1/adapters/team-b/bot/versions",
                f"{base}/api/v1/adapters/bot/versions",
                f"{base}/api/v1/adapters/team-b/bot/aliases/production"):
        r = httpx.get(url, headers=h)
        assert r.status_code == 403, (url, r.text)
        assert "may not touch adapter" in r.json()["detail"] and "team-a/*" in r.json()["detail"]
    r = httpx.put(f"{base}/api/v1/adapters/team-b/bot/aliases/production", headers=h,
                  json={"version": 1})
    assert r.status_code == 403
    # An adapter named in a body is checked too.
    r = httpx.post(f"{base}/api/v1/exports", headers=h, json={
        "name": "team-b/bot", "version": 1, "base": "b", "base_revision": "r",
        "dtype": "float32", "files": {}})
    assert r.status_code == 403, r.text
    r = httpx.post(f"{base}/api/v1/suites/s/attachments", headers=h,
                   json={"adapter": "team-b/bot"})
    assert r.status_code == 403, r.text
    r = httpx.post(f"{base}/api/v1/suites/s/attachments", headers=h,
                   json={"adapter": "team-a/bot"})
    assert r.status_code == 404, r.text  # allowed; the suite does not exist
    # Base models are not adapters: no namespace applies to them.
    assert httpx.get(f"{base}/api/v1/base-models/llama", headers=h).status_code == 404


def _tiny_lora() -> dict[str, bytes]:
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"
    header = {a: {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
              b: {"dtype": "F32", "shape": [8, 2], "data_offsets": [64, 128]}}
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    return {"adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": safetensors_bytes(header, bytes(128))}


def push(base: str, name: str, headers: dict[str, str], **extra: object) -> httpx.Response:
    files = _tiny_lora()
    for data in files.values():
        r = httpx.put(f"{base}/api/v1/blobs/{digest_of(data)}", content=data, headers=headers)
        assert r.status_code == 201, r.text
    body = {"files": {p: digest_of(d) for p, d in files.items()}, **extra}
    return httpx.post(f"{base}/api/v1/adapters/{name}/versions", json=body, headers=headers)


def test_the_token_is_the_actor_and_force_needs_admin(live_server):
    ctx = live_server.context
    base = live_server.url
    ci = make_token(ctx, "ci", ["read", "push"])
    release = make_token(ctx, "release", ["read", "promote"])
    admin = make_token(ctx, "ops", ["admin"])
    r = push(base, "bot", bearer(ci), created_by="someone-else")
    assert r.status_code == 201, r.text
    assert r.json()["created_by"] == "ci"
    # push cannot promote; promote can, under its own name whatever the body claims.
    body = {"version": 1, "actor": "mallory"}
    assert httpx.put(f"{base}/api/v1/adapters/bot/aliases/production", json=body,
                     headers=bearer(ci)).status_code == 403
    r = httpx.put(f"{base}/api/v1/adapters/bot/aliases/production", json=body,
                  headers=bearer(release))
    assert r.status_code == 200, r.text
    # --force needs admin, even when no gate fails.
    forced = {"version": 1, "force": True}
    r = httpx.put(f"{base}/api/v1/adapters/bot/aliases/staging", json=forced,
                  headers=bearer(release))
    assert r.status_code == 403 and "'admin' scope" in r.json()["detail"], r.text
    r = httpx.put(f"{base}/api/v1/adapters/bot/aliases/staging", json=forced,
                  headers=bearer(admin))
    assert r.status_code == 200, r.text
    history = httpx.get(f"{base}/api/v1/adapters/bot/history", headers=bearer(ci)).json()
    assert {(e["alias"], e["actor"]) for e in history} == {("production", "release"),
                                                          ("staging", "ops")}
    # A base model read from a server-side source needs admin; uploaded files need push.
    r = httpx.post(f"{base}/api/v1/base-models", headers=bearer(ci),
                   json={"name": "llama", "source": "hf://org/llama"})
    assert r.status_code == 403 and "'admin' scope" in r.json()["detail"], r.text

    # The audit log names each actor, token changes included; it needs admin.
    r = httpx.post(f"{base}/api/v1/tokens", headers=bearer(admin),
                   json={"name": "later", "scopes": ["read"], "expires_in_seconds": 60})
    assert r.status_code == 201, r.text
    assert r.json()["token"].startswith("arg_") and r.json()["expires_at"] is not None
    assert httpx.post(f"{base}/api/v1/tokens/later/revoke",
                      headers=bearer(admin)).status_code == 200
    assert httpx.get(f"{base}/api/v1/audit", headers=bearer(ci)).status_code == 403
    events = httpx.get(f"{base}/api/v1/audit", headers=bearer(admin),
                       params={"limit": 1000}).json()["events"]
    actors = {(e["type"], e["actor"]) for e in events}
    assert {("version.created", "ci"), ("alias.promoted", "release"),
            ("alias.promoted", "ops"), ("token.created", "ops"),
            ("token.revoked", "ops")} <= actors
    since = httpx.get(f"{base}/api/v1/audit", headers=bearer(admin),
                      params={"since": "2999-01-01T00:00:00Z"}).json()
    assert since["events"] == []

    # The client asks whoami for the provenance the server records for its exports.
    from registry.client import HttpRegistry

    for token, expected in ((ci, "token:ci"), (None, None)):
        client = HttpRegistry(base, token=token)
        try:
            assert client.export_provenance() == expected
        finally:
            client.close()

    # whoami: any valid token, whatever its scopes.
    r = httpx.get(f"{base}/api/v1/auth/whoami", headers=bearer(ci))
    assert r.json() == {"name": "ci", "scopes": ["push", "read"], "namespaces": [],
                        "expires_at": None}
    assert httpx.get(f"{base}/api/v1/auth/whoami").status_code == 401


def test_secrets_are_never_stored_in_clear(live_server, settings):
    ctx = live_server.context
    secret = make_token(ctx, "needle", ["admin"])
    made = httpx.post(f"{live_server.url}/api/v1/tokens", headers=bearer(secret),
                      json={"name": "needle2", "scopes": ["read"]}).json()["token"]
    assert secret.startswith("arg_") and len(secret) == 47
    for s in (secret, made):  # both work
        assert httpx.get(f"{live_server.url}/api/v1/adapters", headers=bearer(s)).status_code \
            == 200
    # The stored hash is there (the search looks in the right place); the secret, or its
    # random part, is nowhere.
    if ctx.engine.dialect.name == "sqlite":
        db = Path(ctx.engine.url.database or "")
        stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert tokens.hash_secret(secret).encode() in stored
    else:
        with ctx.engine.connect() as conn:
            stored = "\n".join(
                row[0] for table in ("api_tokens", "events")
                for row in conn.execute(text(f"SELECT t::text FROM {table} t"))).encode()
        assert tokens.hash_secret(secret).encode() in stored
    for s in (secret, made):
        assert s.encode() not in stored
        assert s.removeprefix("arg_").encode() not in stored


def test_auth_off_lets_everyone_through_and_a_valid_token_still_names_the_actor(settings):
    ctx = RegistryContext.open(settings.model_copy(update={"auth": "off"}))
    try:
        secret = make_token(ctx, "laptop", ["read"])
        with serve(ctx) as base:
            assert httpx.get(f"{base}/api/v1/adapters").status_code == 200
            # An invalid token is no worse than none when auth is off.
            assert httpx.get(f"{base}/api/v1/adapters",
                             headers=bearer("arg_" + "x" * 43)).status_code == 200
            r = push(base, "bot", bearer(secret), created_by="declared")
            assert r.status_code == 201 and r.json()["created_by"] == "laptop", r.text
            r = push(base, "other", {}, created_by="declared")
            assert r.json()["created_by"] == "declared"
    finally:
        ctx.close()


def test_a_namespaced_token_lists_only_its_adapters(live_server):
    ctx = live_server.context
    base = live_server.url
    admin = bearer(make_token(ctx, "ops", ["admin"]))
    for name in ("team-a/bot", "team-b/bot", "loose"):
        assert push(base, name, admin).status_code == 201
    team_a = bearer(make_token(ctx, "team-a-reader", ["read"], ("team-a",)))

    def names(path: str, headers: dict[str, str]) -> list[str]:
        r = httpx.get(f"{base}{path}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        items = body["events"] if isinstance(body, dict) else body
        return sorted({i.get("name") or i.get("adapter") for i in items} - {None})

    assert names("/api/v1/adapters", admin) == ["loose", "team-a/bot", "team-b/bot"]
    assert names("/api/v1/adapters", team_a) == ["team-a/bot"]
    assert names("/api/v1/events", admin) == ["loose", "team-a/bot", "team-b/bot"]
    assert names("/api/v1/events", team_a) == ["team-a/bot"]
    page = httpx.get(f"{base}/api/v1/events", headers=team_a).json()
    assert page["next_after"] == httpx.get(f"{base}/api/v1/events",
                                           headers=admin).json()["next_after"]
