"""The push's plain Starlette route answers exactly as the FastAPI route it shadows.

``registry.adapters.router.push_route`` serves ``POST /api/v1/adapters/{name}/versions``
without FastAPI's request machinery (a performance choice). The app built with
``hot_routes=False`` leaves the push to the FastAPI route; every request here goes to both apps
(same registry) and the answers must match: status, error code and message, headers that
matter, and for a created version every field but its number and time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from registry.api.app import create_app
from registry.auth import service as tokens
from registry.clientside.transfer import register_base_dir
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.db.models import Blob
from registry.local import LocalRegistry
from tests.integration.helpers import digest_of, read_dir

PUSH = "/api/v1/adapters/{name}/versions"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def clients(context: RegistryContext) -> Iterator[tuple[TestClient, TestClient]]:
    with (TestClient(create_app(context=context), raise_server_exceptions=False) as hot,
          TestClient(create_app(context=context, hot_routes=False),
                     raise_server_exceptions=False) as plain):
        yield hot, plain


def _both(clients: tuple[TestClient, TestClient], method: str, path: str, **kw: Any
          ) -> tuple[Any, Any]:
    hot, plain = clients
    return hot.request(method, path, **kw), plain.request(method, path, **kw)


def _same_error(a: Any, b: Any) -> None:
    assert a.status_code == b.status_code, (a.status_code, a.text, b.status_code, b.text)
    assert 400 <= a.status_code < 500, a.text
    assert a.json() == b.json()
    assert a.headers.get("allow") == b.headers.get("allow")
    assert a.headers["content-type"] == b.headers["content-type"]


def _files(clients: tuple[TestClient, TestClient], adapter: Path) -> dict[str, str]:
    hot, _ = clients
    files = {}
    for path, data in read_dir(adapter).items():
        assert hot.put(f"/api/v1/blobs/{digest_of(data)}", content=data).status_code in (200,
                                                                                         201)
        files[path] = digest_of(data)
    return files


BAD_BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("not JSON", b"{", JSON),
    ("not UTF-8", b'{"files": "\xff\xfe"}', JSON),
    ("no content type", b'{"files": {}}', {}),
    ("text/plain", b'{"files": {}}', {"Content-Type": "text/plain"}),
    ("a JSON list", b"[]", JSON),
    ("a JSON string", b'"files"', JSON),
    ("empty", b"", JSON),
    ("an unknown field", b'{"files": {}, "colour": "red"}', JSON),
    ("files not an object", b'{"files": ["a"]}', JSON),
    ("metadata value not a string", b'{"files": {"a": "b"}, "metadata": {"k": 1}}', JSON),
    ("no files", b'{"files": {}}', JSON),
    ("a bad digest", b'{"files": {"adapter_config.json": "sha256:xyz"}}', JSON),
    ("an unknown blob", ('{"files": {"adapter_config.json": "sha256:' + "0" * 64 + '"}}')
     .encode(), JSON),
    ("a path outside", ('{"files": {"../x": "sha256:' + "0" * 64 + '"}}').encode(), JSON),
    ("json+suffix type, bad JSON", b"{", {"Content-Type": "application/vnd.x+json"}),
    ("idempotency key too long", b'{"files": {"a": "b"}, "idempotency_key": "' + b"k" * 201
     + b'"}', JSON),
]


@pytest.mark.parametrize("case", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_get_the_same_answer(clients, case):
    _, body, headers = case
    a, b = _both(clients, "POST", PUSH.format(name="team/bot"), content=body, headers=headers)
    _same_error(a, b)


@pytest.mark.parametrize("name", ["Bad Name", "x" * 201, "a//b", "-lead", "ok/" + "y" * 198])
def test_bad_names_get_the_same_answer(clients, adapters_dir, name):
    files = _files(clients, adapters_dir["lora"])
    a, b = _both(clients, "POST", PUSH.format(name=name), json={"files": files})
    _same_error(a, b)


def test_other_methods_on_the_path_get_the_same_405(clients):
    a, b = _both(clients, "PUT", PUSH.format(name="bot"), json={"files": {}})
    _same_error(a, b)
    assert a.status_code == 405 and a.headers["allow"] == "GET, POST"


def test_a_push_answers_the_same_version(clients, adapters_dir, base_dirs):
    files = _files(clients, adapters_dir["lora"])
    body = {"files": files, "metadata": {"run": "1"}, "created_by": "ci",
            "git_commit": "abc1234", "idempotency_key": "k-1"}
    hot, plain = clients
    a = hot.post(PUSH.format(name="team/bot"), json=body)
    b = plain.post(PUSH.format(name="team/other"), json=body)
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    va, vb = a.json(), b.json()
    for volatile in ("name", "ref", "created_at"):
        va.pop(volatile), vb.pop(volatile)
    assert va == vb
    assert va["version"] == 1 and va["created_by"] == "ci" and va["metadata"] == {"run": "1"}
    # The same idempotency key again: 200 and the same version, on either route.
    again_hot = hot.post(PUSH.format(name="team/bot"), json=body)
    again_plain = plain.post(PUSH.format(name="team/bot"), json=body)
    assert again_hot.status_code == again_plain.status_code == 200
    assert again_hot.json() == again_plain.json() == a.json()
    # Listed by the FastAPI GET route at the same path: one version, pushed once.
    listed = hot.get(PUSH.format(name="team/bot")).json()
    assert [v["version"] for v in listed] == [1]
    # The request's route template names the push in the metrics, as FastAPI's route did.
    metrics = hot.get("/metrics").text
    assert 'route="/api/v1/adapters/{name}/versions"' in metrics


def test_auth_decisions_are_the_same(context, adapters_dir, tmp_path):
    ctx = RegistryContext.open(context.settings.model_copy(update={"auth": "required"}))
    try:
        with session_scope(ctx.sessions) as session:
            reader = tokens.create_token(session, name="reader", scopes=["read"]).token
            pusher = tokens.create_token(session, name="ns-pusher", scopes=["push"],
                                         namespaces=("team",)).token
        with (TestClient(create_app(context=ctx), raise_server_exceptions=False) as hot,
              TestClient(create_app(context=ctx, hot_routes=False),
                         raise_server_exceptions=False) as plain):
            pair = (hot, plain)
            cases: list[tuple[str, dict[str, str], bytes]] = [
                ("team/bot", {}, b'{"files": {}}'),  # no token
                ("team/bot", {"Authorization": "Basic abc"}, b'{"files": {}}'),
                ("team/bot", {"Authorization": "Bearer arg_nope"}, b'{"files": {}}'),
                ("team/bot", {"Authorization": f"Bearer {reader}"}, b'{"files": {}}'),
                ("other/bot", {"Authorization": f"Bearer {pusher}"}, b'{"files": {}}'),
                ("team/bot", {}, b"{"),  # bad JSON before the missing token
                ("team/bot", {"Authorization": f"Bearer {pusher}"}, b'{"files": []}'),
                ("x" * 201, {"Authorization": f"Bearer {pusher}"}, b'{"files": {}}'),
            ]
            for name, headers, body in cases:
                a, b = _both(pair, "POST", PUSH.format(name=name), content=body,
                             headers={**JSON, **headers})
                _same_error(a, b)
            # A pusher's push records the token's name, whatever the body says, on both.
            files = {}
            for path, data in read_dir(adapters_dir["lora"]).items():
                assert put_blob_with(hot, pusher, data).status_code in (200, 201)
                files[path] = digest_of(data)
            auth = {"Authorization": f"Bearer {pusher}"}
            a = hot.post(PUSH.format(name="team/a"), json={"files": files, "created_by": "me"},
                         headers=auth)
            b = plain.post(PUSH.format(name="team/b"), json={"files": files,
                                                              "created_by": "me"}, headers=auth)
            assert a.status_code == b.status_code == 201
            assert a.json()["created_by"] == b.json()["created_by"] == "ns-pusher"
    finally:
        ctx.close()


def put_blob_with(client: TestClient, token: str, data: bytes) -> Any:
    return client.put(f"/api/v1/blobs/{digest_of(data)}", content=data,
                      headers={"Authorization": f"Bearer {token}"})



def test_a_push_answers_what_show_answers(clients, context, adapters_dir, base_dirs):
    """The push builds its answer from memory, ``show`` from the stored rows: the same JSON,
    with a linked base (its verdict, the queued validation) and a parent."""
    local = LocalRegistry(context.settings)  # the same database and store
    try:
        register_base_dir(local, name="tiny-llama", directory=base_dirs["llama"],
                          settings=context.settings)
    finally:
        local.close()
    hot, plain = clients
    files = _files(clients, adapters_dir["lora"])
    first = hot.post(PUSH.format(name="team/bot"), json={
        "files": files, "base_model": "tiny-llama", "metadata": {"k": "v"},
        "created_by": "ci", "git_commit": "abcdef1"})
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["compatibility"]["compatible"] is True
    assert answer["validation"]["status"] == "queued"
    assert answer["validation"]["base"] == "tiny-llama"
    assert hot.get("/api/v1/adapters/team/bot/versions/1").json() == answer
    child = plain.post(PUSH.format(name="team/bot"), json={
        "files": _files(clients, adapters_dir["lora_v2"]), "base_model": "tiny-llama",
        "parent": "team/bot:1"})
    assert child.status_code == 201, child.text
    assert child.json()["parent"] == {"name": "team/bot", "version": 1}
    assert hot.get("/api/v1/adapters/team/bot/versions/2").json() == child.json()


def test_the_same_files_against_another_base_get_that_base_verdict(clients, context,
                                                                   adapters_dir, base_dirs):
    """A push of files checked before reuses their inspection and verdicts (kept by content),
    but a verdict belongs to a base: the same files linked to another base get its own."""
    local = LocalRegistry(context.settings)
    try:
        for name, kind in (("tiny-llama", "llama"), ("tiny-gpt2", "gpt2")):
            register_base_dir(local, name=name, directory=base_dirs[kind],
                              settings=context.settings)
    finally:
        local.close()
    hot, _ = clients
    files = _files(clients, adapters_dir["lora"])
    answers = []
    for base in ("tiny-llama", "tiny-llama", "tiny-gpt2", "tiny-llama"):
        r = hot.post(PUSH.format(name="team/bot"), json={"files": files, "base_model": base})
        assert r.status_code == 201, r.text
        answers.append(r.json())
    assert [a["compatibility"]["compatible"] for a in answers] == [True, True, False, True]
    assert answers[2]["compatibility"]["reasons"]
    assert answers[0]["compatibility"] == answers[1]["compatibility"] == answers[3][
        "compatibility"]
    # Every version has a verdict against each base, stored as computed the first time.
    listed = hot.get("/api/v1/adapters/team/bot/versions/4/compat").json()
    assert sorted(b["name"] for b in listed) == ["tiny-llama"]


def test_a_push_keeps_what_it_parsed_with_the_blobs(clients, context, adapters_dir):
    """The first push of a file keeps its parsed header (or its text) with the blob row
    (``blobs.parsed``): on PostgreSQL by a statement of its own outside the version's write."""
    files = _files(clients, adapters_dir["lora"])
    hot, _ = clients
    assert hot.post(PUSH.format(name="team/bot"), json={"files": files}).status_code == 201
    with session_scope(context.sessions) as s:
        parsed = {digest: s.scalar(select(Blob.parsed).where(Blob.digest == digest))
                  for digest in files.values()}
    weights = parsed[files["adapter_model.safetensors"]]
    assert weights is not None and set(weights["safetensors"]["tensors"])
    assert json.loads(parsed[files["adapter_config.json"]]["text"])["peft_type"] == "LORA"
