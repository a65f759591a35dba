"""The web UI with REGISTRY_AUTH=required: a page without a token redirects to the login form;
the token entered there lives in an HttpOnly, SameSite=Strict cookie; actions need the promote
scope (and the adapter's namespace), exactly as the API routes they mirror."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from registry.auth import service as tokens
from registry.client import HttpRegistry
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
from tests.conftest import LiveServer
from tests.integration.ui_helpers import Seeded, seed


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest's two deployment shapes, with REGISTRY_AUTH=required."""
    return settings.model_copy(update={"auth": "required"})


def make_token(ctx: RegistryContext, name: str, scopes: list[str],
               namespaces: tuple[str, ...] = ()) -> str:
    with session_scope(ctx.sessions) as session:
        return tokens.create_token(session, name=name, scopes=scopes,
                                   namespaces=namespaces).token


@pytest.fixture
def admin(live_server: LiveServer) -> Iterator[HttpRegistry]:
    """A client with an admin token (the conftest's ``http`` has none)."""
    client = HttpRegistry(live_server.url, token=make_token(live_server.context, "seeder",
                                                             ["admin"]))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def seeded(live_server: LiveServer, admin: HttpRegistry, settings: Settings, adapters_dir,
           base_dirs) -> Seeded:
    return seed(admin, live_server.context, settings, adapters_dir, base_dirs)


def login(client: httpx.Client, secret: str, next: str = "/ui") -> httpx.Response:
    client.get("/ui/login")
    csrf = client.cookies.get("registry_ui_csrf", path="/ui")
    return client.post("/ui/login", data={"csrf": csrf, "token": secret, "next": next})


def test_pages_need_a_token(live_server: LiveServer, seeded: Seeded):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for url in ("/ui", "/ui/adapters/bot", "/ui/adapters/bot/versions/1", "/ui/jobs",
                    "/ui/actions/promote?name=bot&version=1"):
            r = client.get(url)
            assert r.status_code == 303, url
            assert r.headers["location"].startswith("/ui/login?next="), url
        assert client.get("/ui/login").status_code == 200
        assert client.get("/ui/static/ui.css").status_code == 200
        bad = login(client, "arg_" + "x" * 43)
        assert bad.status_code == 401 and 'data-testid="login-failed"' in bad.text
        assert "registry_ui_token" not in client.cookies


def test_login_cookie_and_scopes(live_server: LiveServer, seeded: Seeded, admin: HttpRegistry):
    ctx = live_server.context
    reader = make_token(ctx, "reader", ["read"])
    releaser = make_token(ctx, "releaser", ["read", "promote"])
    elsewhere = make_token(ctx, "elsewhere", ["read", "promote"], namespaces=("team-b",))
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        r = login(client, reader, next="/ui/adapters/bot")
        assert r.status_code == 303 and r.headers["location"] == "/ui/adapters/bot"
        cookie = next(c for c in r.headers.get_list("set-cookie")
                      if c.startswith("registry_ui_token="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Max-Age" not in cookie and "expires" not in cookie.lower()  # a session cookie
        page = client.get("/ui/adapters/bot")
        assert page.status_code == 200 and "reader" in page.text
        main = page.text.split("</header>")[1]
        assert 'method="post"' not in main
        assert re.search(r"<form[^>]+data-action=", main) is None  # no action at all
        csrf = client.cookies.get("registry_ui_csrf", path="/ui")
        refused = client.post("/ui/actions/promote", data={
            "csrf": csrf, "name": "bot", "version": "2", "alias": "production"})
        assert refused.status_code == 403
        assert holder(admin) == 3

    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        login(client, elsewhere)
        csrf = client.cookies.get("registry_ui_csrf", path="/ui")
        assert client.get("/ui/adapters/bot").status_code == 403  # another namespace
        refused = client.post("/ui/actions/promote", data={
            "csrf": csrf, "name": "bot", "version": "2", "alias": "production"})
        assert refused.status_code == 403

    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        login(client, releaser)
        csrf = client.cookies.get("registry_ui_csrf", path="/ui")
        moved = client.post("/ui/actions/promote", data={
            "csrf": csrf, "name": "bot", "version": "2", "alias": "production",
            "expect_current": "3", "reason": "from the UI"})
        assert moved.status_code == 303, moved.text
        assert holder(admin) == 2
        out = client.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert client.get("/ui").status_code == 303  # logged out: back to the login form


def holder(client: HttpRegistry) -> int:
    return client.resolve_alias("bot", "production").version
