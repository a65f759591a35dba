"""The web UI in a real browser: navigation by links, the chart and lineage graph drawn,
promotion (confirmed and refused), rollback and archive, escaping, reading without JavaScript.
Screenshots of each page go to tests/artifacts/."""

from __future__ import annotations

from typing import Any

import pytest

from registry.config import Settings
from tests.browser.conftest import screenshot
from tests.conftest import LiveServer
from tests.integration.ui_helpers import XSS, Seeded, seed

# One backend: what a browser adds (rendering, links, forms, scripts) does not depend on it, and
# tests/integration/test_ui_pages.py drives the same pages and actions on both.
pytestmark = [pytest.mark.browser,
              pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)]


@pytest.fixture
def seeded(live_server: LiveServer, http, settings: Settings, adapters_dir,
           base_dirs) -> Seeded:
    return seed(http, live_server.context, settings, adapters_dir, base_dirs)


def fits_width(tab: Any) -> bool:
    return tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_navigate_list_adapter_version_with_chart_and_graph(page: Any, live_server: LiveServer,
                                                            seeded: Seeded):
    page.goto(live_server.url + "/ui")
    assert page.locator('[data-testid="adapters"] tbody tr').count() == 3
    assert fits_width(page)
    screenshot(page, "adapters")

    page.get_by_role("link", name="bot", exact=True).click()
    page.wait_for_url("**/ui/adapters/bot")
    chart = page.locator('[data-testid="chart"]')
    assert chart.locator("circle.point").count() == 4  # one per scored version
    assert chart.locator("circle.holder").count() == 1  # production's holder, bot:3
    assert chart.locator('circle.holder[data-version="3"]').count() == 1
    assert chart.locator('[data-testid="base-line"]').count() == 1
    assert chart.locator("polyline.series").count() == 1
    assert page.locator('[data-testid="versions"] tbody tr').count() == 4
    assert page.locator('[data-testid="history"] > li').count() == 2
    assert page.locator('[data-testid="compat"] td.yes').count() == 4
    assert fits_width(page)
    screenshot(page, "adapter")

    # Another metric: the select redraws at once (JavaScript), lower is better for a loss.
    page.select_option('select[name="metric"]', "smoke.loss")
    page.wait_for_url("**metric=smoke.loss")
    assert page.get_by_text("lower is better").count() == 1
    assert page.locator('[data-testid="chart"] circle.point').count() == 4

    page.locator('[data-testid="versions"] a', has_text="3").first.click()
    page.wait_for_url("**/ui/adapters/bot/versions/3")
    graph = page.locator('[data-testid="lineage"]')
    # bot:1 -> bot:2 -> bot:3 -> bot:4 and the fork bot-fork:1.
    assert graph.locator("g.node").count() == 5
    assert graph.locator("line.edge").count() == 4
    assert graph.locator("line.edge.fork").count() == 1
    assert graph.locator('g.node[data-kind="current"]').get_attribute("data-ref") == "bot:3"
    scores = page.locator('[data-testid="scores"]')
    accuracy = scores.locator('tr[data-metric="smoke.accuracy"]')
    # 0.9 against the parent's 0.8: better (higher is better), colored and arrowed as such.
    assert accuracy.locator(".delta.good").count() == 1
    assert page.locator('[data-testid="files"] tbody tr').count() >= 2
    assert fits_width(page)
    screenshot(page, "version")

    graph.locator('g.node[data-ref="bot-fork:1"]').click()  # the graph is clickable
    page.wait_for_url("**/ui/adapters/bot-fork/versions/1")
    assert page.locator('[data-testid="version-ref"]').inner_text().startswith("bot-fork:1")

    page.get_by_role("link", name="Jobs").click()
    page.wait_for_url("**/ui/jobs")
    # A push linked to a compatible base queued its validation (no worker runs here).
    assert page.locator('[data-testid="queued"] tbody tr').count() >= 1
    screenshot(page, "jobs")

    page.get_by_role("link", name="Log in").click()
    page.wait_for_url("**/ui/login")
    assert page.locator('input[name="token"]').count() == 1
    screenshot(page, "login")
    assert page.console_errors == []


def test_promote_from_the_ui(page: Any, live_server: LiveServer, http, seeded: Seeded):
    page.goto(live_server.url + "/ui/adapters/bot")
    form = page.locator('form[data-action="promote"]')
    form.locator('input[name="version"]').fill("2")
    form.locator('input[name="reason"]').fill("back to the steady one")
    form.get_by_role("button", name="Check gates…").click()
    page.wait_for_url("**/ui/actions/promote?**")
    gates = page.locator('[data-testid="gates"] li')
    assert gates.count() == 3
    assert page.locator('[data-testid="gates"] li[data-passed="false"]').count() == 0
    screenshot(page, "promote")
    page.get_by_role("button", name="Confirm promotion").click()
    page.wait_for_url("**/ui/adapters/bot?done=promote**")
    assert page.locator('[data-testid="flash"]').inner_text() == \
        "production now points at version 2."
    assert page.locator('[data-testid="aliases"] tr[data-alias="production"] '
                        '[data-testid="alias-version"]').inner_text() == "2"
    newest = page.locator('[data-testid="history"] > li').first
    assert newest.get_attribute("data-action") == "promote"
    assert "back to the steady one" in newest.inner_text()
    assert page.locator('[data-testid="history"] > li').count() == 3
    assert http.resolve_alias("bot", "production").version == 2

    # Roll back from the aliases table: production returns to 3.
    row = page.locator('[data-testid="aliases"] tr[data-alias="production"]')
    row.locator('input[name="reason"]').fill("2 was worse after all")
    row.get_by_role("button", name="Roll back").click()
    page.wait_for_url("**done=rollback**")
    assert page.locator('[data-testid="history"] > li').first.get_attribute("data-action") == \
        "rollback"
    assert http.resolve_alias("bot", "production").version == 3
    assert page.console_errors == []


def test_refused_promotion_shows_the_failing_gates(page: Any, live_server: LiveServer, http,
                                                   seeded: Seeded):
    page.goto(live_server.url + "/ui/adapters/bot/versions/4")
    page.locator('[data-testid="version-actions"] form[data-action="promote"]') \
        .get_by_role("button", name="Check gates…").click()
    failing = page.locator('[data-testid="gates"] li[data-passed="false"]')
    assert failing.count() == 1
    assert failing.get_attribute("data-gate") == "min:smoke.accuracy"
    page.get_by_role("button", name="Confirm promotion").click()
    refused = page.locator('[data-testid="refused"]')
    assert "smoke.accuracy 0.6 < min 0.75" in refused.inner_text()
    assert page.locator('[data-testid="gates"] li[data-passed="false"]').count() == 1
    screenshot(page, "promote-refused")
    assert http.resolve_alias("bot", "production").version == 3


def test_archive_from_the_ui(page: Any, live_server: LiveServer, http, seeded: Seeded):
    page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure" the page asks
    page.goto(live_server.url + "/ui/adapters/bot/versions/1")
    page.get_by_role("button", name="Archive this version").click()
    page.wait_for_url("**done=archived")
    assert page.locator('[data-testid="version-ref"] [data-status="archived"]').count() == 1
    assert page.locator('[data-testid="version-actions"]').count() == 0
    assert http.get_version("bot", 1).status == "archived"


def test_user_input_stays_text(page: Any, live_server: LiveServer, seeded: Seeded):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for url in ("/ui/adapters/bot/versions/1", "/ui/adapters/bot/versions/4",
                "/ui/adapters/bot", "/ui?q=" + "%3Cscript%3E"):
        page.goto(live_server.url + url)
        assert page.evaluate("window.__xss") is None
    page.goto(live_server.url + "/ui/adapters/bot/versions/1")
    assert page.locator('[data-testid="metadata"]').get_by_text(XSS).count() == 1
    page.goto(live_server.url + "/ui/adapters/bot")
    assert page.locator('[data-testid="history"] blockquote', has_text=XSS).count() == 1
    assert dialogs == []


def test_pages_read_without_javascript(browser: Any, live_server: LiveServer, seeded: Seeded):
    context = browser.new_context(java_script_enabled=False,
                                  viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        tab.goto(live_server.url + "/ui/adapters/bot")
        assert tab.locator('[data-testid="chart"] circle.point').count() == 4
        # Without JavaScript the metric is chosen with the Show button.
        tab.select_option('select[name="metric"]', "smoke.loss")
        tab.get_by_role("button", name="Show").click()
        tab.wait_for_url("**metric=smoke.loss")
        tab.goto(live_server.url + "/ui/adapters/bot/versions/3")
        assert tab.locator('[data-testid="lineage"] g.node').count() == 5
    finally:
        context.close()
