"""The web UI in a browser with REGISTRY_AUTH=required: log in with a promote-scoped token and
promote (the alias moves, the history names the token); a read-only visitor sees no action."""

from __future__ import annotations

from typing import Any

import pytest

from registry.config import Settings
from tests.browser.conftest import screenshot
from tests.conftest import LiveServer
from tests.integration import test_ui_access
from tests.integration.test_ui_access import make_token

pytestmark = [pytest.mark.browser,
              pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": "required"})


admin = test_ui_access.admin
seeded = test_ui_access.seeded


def log_in(page: Any, url: str, secret: str) -> None:
    page.goto(url)
    page.wait_for_url("**/ui/login?next=**")
    page.fill('input[name="token"]', secret)
    page.get_by_role("button", name="Log in").click()


def test_promote_with_a_promote_scoped_token(page: Any, live_server: LiveServer, seeded: Any):
    secret = make_token(live_server.context, "releaser", ["read", "promote"])
    log_in(page, live_server.url + "/ui/adapters/bot", secret)
    page.wait_for_url("**/ui/adapters/bot")
    assert page.locator('[data-testid="who"]').inner_text() == "releaser"
    cookie = next(c for c in page.context.cookies() if c["name"] == "registry_ui_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] == -1
    assert page.evaluate("document.cookie") == ""  # nothing readable by scripts
    form = page.locator('form[data-action="promote"]')
    form.locator('input[name="version"]').fill("2")
    form.locator('input[name="reason"]').fill("with a token")
    form.get_by_role("button", name="Check gates…").click()
    page.get_by_role("button", name="Confirm promotion").click()
    page.wait_for_url("**done=promote**")
    assert page.locator('[data-testid="aliases"] tr[data-alias="production"] '
                        '[data-testid="alias-version"]').inner_text() == "2"
    newest = page.locator('[data-testid="history"] > li').first
    assert "releaser" in newest.inner_text() and "with a token" in newest.inner_text()
    screenshot(page, "adapter-logged-in")


def test_a_read_only_visitor_sees_no_action(page: Any, live_server: LiveServer, seeded: Any):
    secret = make_token(live_server.context, "viewer", ["read"])
    log_in(page, live_server.url + "/ui", secret)
    page.wait_for_url(live_server.url + "/ui")
    for url in ("/ui/adapters/bot", "/ui/adapters/bot/versions/2",
                "/ui/actions/promote?name=bot&version=2&alias=production"):
        page.goto(live_server.url + url)
        assert page.locator("main form[method=post]").count() == 0, url
        assert page.locator('[data-testid="promote-card"]').count() == 0
        assert page.locator('[data-testid="version-actions"]').count() == 0
        assert page.get_by_role("button", name="Roll back").count() == 0
    screenshot(page, "adapter-read-only")
