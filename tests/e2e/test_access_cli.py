"""`token create|list|revoke`, `audit`, `server --insecure` and --token from the command line:
bootstrap on the database, then a server with REGISTRY_AUTH=required."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli import assert_one_line_error, run
from tests.integration.helpers import start_server, stop_server

EXE = Path(sys.executable).with_name("adapter-registry")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "registry-home"
    monkeypatch.setenv("REGISTRY_HOME", str(home))
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL", "REGISTRY_TOKEN",
                "REGISTRY_AUTH"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_token_commands_on_the_embedded_registry(home):
    code, out, err = run("--json", "token", "create", "root", "--scope", "admin")
    assert code == 0, err
    assert set(out) == {"name", "token", "scopes", "namespaces", "expires_at"}
    assert out["name"] == "root" and out["token"].startswith("arg_")
    assert out["scopes"] == ["admin"] and out["namespaces"] == [] and out["expires_at"] is None

    # Human output: the secret alone on stdout (scripts capture it), the note on stderr.
    code, out, err = run("token", "create", "ci", "--scope", "read", "--scope", "push",
                         "--namespace", "team-a", "--expires", "90d")
    assert code == 0, err
    assert out.strip().startswith("arg_") and out.count("\n") == 1
    assert "not shown again" in err

    code, listed, err = run("--json", "token", "list")
    assert code == 0, err
    assert [(t["name"], t["scopes"], t["namespaces"], t["status"]) for t in listed] == [
        ("root", ["admin"], [], "active"), ("ci", ["push", "read"], ["team-a"], "active")]
    assert listed[1]["expires_at"] is not None
    assert all("token" not in t for t in listed)

    assert_one_line_error(*run("token", "create", "ci", "--scope", "read")[::2], code=4,
                          fragment="exists")
    assert_one_line_error(*run("token", "create", "x", "--scope", "read", "--expires", "5y")
                          [::2], code=1, fragment="--expires")
    assert_one_line_error(*run("token", "create", "Bad Name", "--scope", "read")[::2], code=1,
                          fragment="invalid token name")
    assert_one_line_error(*run("token", "create", "x", "--scope", "read", "--namespace", "A/B")
                          [::2], code=1, fragment="invalid namespace")
    assert_one_line_error(*run("token", "revoke", "nobody")[::2], code=3, fragment="nobody")

    code, out, err = run("--json", "token", "revoke", "ci")
    assert code == 0 and out["status"] == "revoked", err
    code, events, err = run("--json", "audit")
    assert code == 0, err
    assert [e["type"] for e in events] == ["token.created", "token.created", "token.revoked"]
    code, events, err = run("--json", "audit", "--since", "1h")
    assert code == 0 and len(events) == 3, err
    assert run("--json", "audit", "--since", "2999-01-01")[1] == []
    assert_one_line_error(*run("audit", "--since", "yesterday")[::2], code=1, fragment="--since")


def test_auth_off_is_refused_on_a_public_bind(home):
    code, _, err = run("server", "--host", "0.0.0.0", "--port", "1")
    assert_one_line_error(code, err, code=1, fragment="--insecure")
    assert "REGISTRY_AUTH=off" in err
    code, _, err = run("server", "--host", "::", "--port", "1")
    assert_one_line_error(code, err, code=1, fragment="--insecure")





def _serve(env: dict[str, str], *args: str) -> Iterator[str]:
    server, url = start_server(env, *args)
    try:
        yield url
    finally:
        stop_server(server)


@pytest.fixture
def secured(home) -> Iterator[tuple[str, str]]:
    """A server with REGISTRY_AUTH=required on the embedded home, listening on every interface
    (allowed: auth is on), and the admin token made on its database first."""
    code, out, err = run("--json", "token", "create", "root", "--scope", "admin")
    assert code == 0, err
    env = {**os.environ, "REGISTRY_HOME": str(home), "REGISTRY_AUTH": "required"}
    env.pop("REGISTRY_TOKEN", None)
    yield from ((url, out["token"]) for url in _serve(env, "--host", "0.0.0.0"))


def test_a_secured_server_from_the_cli(secured, adapters_dir):
    url, root = secured
    code, _, err = run("--url", url, "list")
    assert_one_line_error(code, err, code=7, fragment="token")
    code, _, err = run("--url", url, "--token", "arg_" + "x" * 43, "list")
    assert_one_line_error(code, err, code=7, fragment="invalid token")

    code, ci, err = run("--url", url, "--token", root, "--json", "token", "create", "ci",
                        "--scope", "read", "--scope", "push")
    assert code == 0, err
    code, out, err = run("--url", url, "--token", ci["token"], "--json", "push", "bot",
                         str(adapters_dir["lora"]))
    assert code == 0 and out["version"] == 1, err
    code, _, err = run("--url", url, "--token", ci["token"], "promote", "bot:1",
                       "--alias", "production")
    assert_one_line_error(code, err, code=7, fragment="'promote' scope")
    code, _, err = run("--url", url, "--token", ci["token"], "token", "list")
    assert_one_line_error(code, err, code=7, fragment="'admin' scope")

    # The worker sends its token too: read alone cannot claim jobs.
    code, reader, err = run("--url", url, "--token", root, "--json", "token", "create",
                            "reader", "--scope", "read")
    assert code == 0, err
    code, _, err = run("--url", url, "--token", reader["token"], "worker", "--once",
                       "--device", "cpu")
    assert_one_line_error(code, err, code=7, fragment="'validate' scope")

    code, events, err = run("--url", url, "--token", root, "--json", "audit")
    assert code == 0, err
    assert ("version.created", "ci") in {(e["type"], e["actor"]) for e in events}
    assert ("token.created", "root") in {(e["type"], e["actor"]) for e in events}

    code, _, err = run("--url", url, "--token", root, "token", "revoke", "ci")
    assert code == 0, err
    code, _, err = run("--url", url, "--token", ci["token"], "list")
    assert_one_line_error(code, err, code=7, fragment="revoked")


def test_insecure_serves_on_a_public_bind_with_auth_off(home):
    env = {**os.environ, "REGISTRY_HOME": str(home)}
    env.pop("REGISTRY_AUTH", None)
    for url in _serve(env, "--host", "0.0.0.0", "--insecure"):
        assert httpx.get(f"{url}/api/v1/adapters").json() == []
