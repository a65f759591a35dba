"""The web UI over HTTP (no browser): pages render what the services hold, escape user input,
refuse forged and malformed forms with a 4xx, and every action goes through the services."""

from __future__ import annotations

import re

import httpx
import pytest

from registry.config import Settings
from tests.conftest import LiveServer
from tests.integration.ui_helpers import XSS, Seeded, seed


@pytest.fixture
def seeded(live_server: LiveServer, http, settings: Settings, adapters_dir,
           base_dirs) -> Seeded:
    return seed(http, live_server.context, settings, adapters_dir, base_dirs)


@pytest.fixture
def ui(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield client


def csrf_of(client: httpx.Client) -> str:
    token = client.cookies.get("registry_ui_csrf", path="/ui")
    assert token
    return token


def test_pages_render_and_link(ui: httpx.Client, seeded: Seeded):
    home = ui.get("/ui")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in home.headers["content-security-policy"]
    for name in ("bot", "bot-fork", "other"):
        assert f'href="/ui/adapters/{name}"' in home.text
    assert 'href="/ui/jobs"' in home.text
    assert ui.get("/ui/static/ui.css").status_code == 200

    page = ui.get("/ui/adapters/bot")
    assert page.status_code == 200
    # The versions table, newest first, each linked; the chart has one point per version.
    assert re.findall(r'<tr data-version="(\d+)"', page.text) == ["4", "3", "2", "1"]
    assert len(re.findall(r'<circle class="point"', page.text)) == 4
    assert len(re.findall(r'<circle class="holder"', page.text)) == 1  # production at 3
    assert 'data-testid="base-line"' in page.text
    assert len(re.findall(r'<form[^>]+data-action="promote"', page.text)) == 1
    assert len(re.findall(r'<form[^>]+data-action="rollback"', page.text)) == 1
    assert len(re.findall(r'<li class="event promote"', page.text)) == 2

    version = ui.get("/ui/adapters/bot/versions/3")
    assert version.status_code == 200
    assert 'data-testid="lineage"' in version.text
    # bot:1 -> bot:2 -> bot:3 -> (bot:4, bot-fork:1): five nodes, four edges, one fork.
    assert len(re.findall(r'<g class="node ', version.text)) == 5
    assert len(re.findall(r'<line class="edge', version.text)) == 4
    assert 'data-kind="fork"' in version.text
    assert 'href="https://ci.example/run/3"' in version.text
    assert "adapter_model.safetensors" in version.text


def test_jobs_page_shows_the_queue(ui: httpx.Client, seeded: Seeded, http):
    queued = http.list_jobs(status="queued")
    assert len(queued) >= 3  # each push linked to a compatible base queued a validation
    failing = http.claim_job("worker-a")
    http.fail_job(failing.job.id, worker="worker-a", attempt=failing.attempt,
                  error="CUDA out of memory <script>x</script>")
    running = http.claim_job("worker-b")
    page = ui.get("/ui/jobs")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.text

    def section(testid: str) -> str:
        found = re.search(rf'data-testid="{testid}">(.*?)</table>', page.text, re.S)
        return found.group(1) if found else ""

    assert f'data-job="{running.job.id}"' in section("running")
    assert "worker-b" in section("running") and re.search(r"in \d+ s", section("running"))
    assert f'data-job="{failing.job.id}"' in section("failed")
    assert "CUDA out of memory &lt;script&gt;" in section("failed")
    assert section("queued").count("data-job=") == len(queued) - 2


def test_user_input_is_escaped(ui: httpx.Client, seeded: Seeded):
    for url in ("/ui/adapters/bot", "/ui/adapters/bot/versions/1",
                "/ui/adapters/bot/versions/4"):
        text = ui.get(url).text
        assert "<script>window.__xss" not in text
        assert "<img src=x" not in text
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in ui.get("/ui/adapters/bot").text
    v4 = ui.get("/ui/adapters/bot/versions/4").text
    assert 'href="https://ci.example/run/4?a=&#34;&gt;&lt;script&gt;' in v4
    assert XSS not in v4


def test_filters_and_paging(ui: httpx.Client, seeded: Seeded):
    def names(**params: str) -> list[str]:
        page = ui.get("/ui", params=params)
        assert page.status_code == 200
        return re.findall(r'<a class="strong" href="/ui/adapters/([^"]+)"', page.text)

    assert names() == ["bot", "bot-fork", "other"]
    assert names(q="FORK") == ["bot-fork"]
    assert names(q="support") == ["bot"]  # the description
    assert names(q="%") == []  # LIKE wildcards are text
    assert names(alias="production") == ["bot"]
    assert names(base="tiny-llama") == ["bot", "bot-fork", "other"]
    assert names(base="tiny-gpt2") == []
    assert names(status="archived") == []
    bad = ui.get("/ui", params={"status": "bogus"})
    assert bad.status_code == 422 and "unknown status" in bad.text
    assert ui.get("/ui", params={"page": "0"}).status_code == 422
    assert ui.get("/ui", params={"page": "2"}).status_code == 200


def test_missing_things_are_404_pages(ui: httpx.Client, seeded: Seeded):
    for url in ("/ui/adapters/nope", "/ui/adapters/bot/versions/99"):
        r = ui.get(url)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    for metric in ("smoke.nope", "no-dot"):  # a metric no version has: an empty chart
        page = ui.get("/ui/adapters/bot", params={"metric": metric})
        assert page.status_code == 200 and f"No {metric} scores" in page.text
    assert ui.get("/ui/static/../app.py").status_code == 404


def test_promote_refuse_rollback_archive(ui: httpx.Client, seeded: Seeded, http):
    ui.get("/ui")
    csrf = csrf_of(ui)
    preview = ui.get("/ui/actions/promote",
                     params={"name": "bot", "version": "4", "alias": "production"})
    assert preview.status_code == 200
    assert 'data-gate="min:smoke.accuracy" data-passed="false"' in preview.text
    form = {"csrf": csrf, "name": "bot", "version": "4", "alias": "production",
            "expect_current": "3", "reason": "try"}
    refused = ui.post("/ui/actions/promote", data=form)
    assert refused.status_code == 422 and 'data-testid="refused"' in refused.text
    assert "smoke.accuracy 0.6 &lt; min 0.75" in refused.text
    assert http.resolve_alias("bot", "production").version == 3

    # A forged form (no or another token) changes nothing.
    for token in ("", "x" * 43):
        forged = ui.post("/ui/actions/promote", data={**form, "version": "1", "csrf": token})
        assert forged.status_code == 403
    # Compare-and-set: the preview's holder must still hold the alias.
    moved = ui.post("/ui/actions/promote", data={**form, "version": "2",
                                                 "expect_current": "2"})
    assert moved.status_code == 409

    ok = ui.post("/ui/actions/promote", data={**form, "version": "2", "reason": "revert"})
    assert ok.status_code == 303
    assert ok.headers["location"] == "/ui/adapters/bot?done=promote&alias=production&version=2"
    assert http.resolve_alias("bot", "production").version == 2
    assert "production now points at version 2." in ui.get(ok.headers["location"]).text

    back = ui.post("/ui/actions/rollback", data={"csrf": csrf, "name": "bot",
                                                  "alias": "production", "reason": "oops"})
    assert back.status_code == 303 and http.resolve_alias("bot", "production").version == 3
    assert [e.action for e in http.history("bot")][:2] == ["rollback", "promote"]

    held = ui.post("/ui/actions/archive", data={"csrf": csrf, "name": "bot", "version": "3"})
    assert held.status_code == 409 and "production" in held.text
    done = ui.post("/ui/actions/archive", data={"csrf": csrf, "name": "bot", "version": "1"})
    assert done.status_code == 303 and http.get_version("bot", 1).status == "archived"


@pytest.mark.parametrize("body,content_type", [
    (b"\xff\xfe", "application/x-www-form-urlencoded"),
    (b'{"name": "bot"}', "application/json"),
    (b"a=1&" * 20_000, "application/x-www-form-urlencoded"),
])
def test_malformed_forms_are_4xx(ui: httpx.Client, seeded: Seeded, body: bytes,
                                 content_type: str):
    r = ui.post("/ui/actions/promote", content=body, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, r.text


def test_action_input_is_checked(ui: httpx.Client, seeded: Seeded):
    ui.get("/ui")
    csrf = csrf_of(ui)
    for data in ({"name": "bot", "version": "x" * 400, "alias": "production"},
                 {"name": "bot", "version": "1", "alias": "Not An Alias"},
                 {"name": "bot", "version": "1", "alias": "production", "reason": "r" * 3000},
                 {"name": "bot", "version": "1", "alias": "production",
                  "expect_current": "two"},
                 {"name": "../etc", "version": "1", "alias": "production"}):
        r = ui.post("/ui/actions/promote", data={"csrf": csrf, **data})
        assert 400 <= r.status_code < 500, (data, r.status_code)
    for version in ("0", "-1", "abc", "99999999999"):
        r = ui.post("/ui/actions/archive", data={"csrf": csrf, "name": "bot",
                                                 "version": version})
        assert r.status_code == 422, version
