"""Every malformed push is a clear 4xx naming the problem, and stores no version."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import digest_of, push_raw, read_dir, safetensors_bytes

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _edit_header(files: dict[str, bytes], edit: Callable[[dict], None]) -> dict[str, bytes]:
    header, body = _header(files[WEIGHTS])
    edit(header)
    return {**files, WEIGHTS: safetensors_bytes(header, body)}


def _first_tensor(header: dict, suffix: str = "") -> str:
    return next(k for k in sorted(header) if k != "__metadata__" and k.endswith(suffix))


def _truncated(f):
    return {**f, WEIGHTS: f[WEIGHTS][: len(f[WEIGHTS]) - 16]}


def _header_too_long(f):
    return {**f, WEIGHTS: struct.pack("<Q", 10**6) + f[WEIGHTS][8:]}


def _overlap(f):
    def edit(h):
        tensors = [k for k in h if k != "__metadata__"]
        names = sorted(tensors, key=lambda k: h[k]["data_offsets"][0])
        a, b = names[0], names[1]
        size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]
    return _edit_header(f, edit)


def _out_of_range(f):
    def edit(h):
        k = _first_tensor(h)
        begin, end = h[k]["data_offsets"]
        h[k]["data_offsets"] = [begin + 10**6, end + 10**6]
    return _edit_header(f, edit)


def _unknown_dtype(f):
    return _edit_header(f, lambda h: h[_first_tensor(h)].update(dtype="F128"))


def _pickle(f):
    return {**{k: v for k, v in f.items() if k != WEIGHTS}, "adapter_model.bin": b"\x80\x04."}


def _no_config(f):
    return {k: v for k, v in f.items() if k != CONFIG}


def _config_not_json(f):
    return {**f, CONFIG: b"{not json"}


def _unknown_peft_type(f):
    cfg = json.loads(f[CONFIG])
    cfg["peft_type"] = "MAGIC"
    return {**f, CONFIG: json.dumps(cfg).encode()}


def _rank_mismatch(f):
    cfg = json.loads(f[CONFIG])
    cfg["r"] = cfg["r"] * 2
    cfg["rank_pattern"] = {}
    return {**f, CONFIG: json.dumps(cfg).encode()}


def _foreign_tensor_name(f):
    def edit(h):
        k = _first_tensor(h, "lora_A.weight")
        h[k.replace("lora_A.weight", "mystery.weight")] = h.pop(k)
    return _edit_header(f, edit)


def _ia3_config_with_lora_tensors(f):
    cfg = json.loads(f[CONFIG])
    cfg["peft_type"] = "IA3"
    return {**f, CONFIG: json.dumps(cfg).encode()}


def _path(bad: str):
    return lambda f: {**f, bad: b"x"}


def _file_and_directory(f):
    return {**f, "notes": b"a", "notes/more.txt": b"b"}


CASES = [
    ("truncated safetensors", _truncated, 422, "invalid_safetensors"),
    ("header length beyond the file", _header_too_long, 422, "invalid_safetensors"),
    ("overlapping offsets", _overlap, 422, "invalid_safetensors"),
    ("offsets out of range", _out_of_range, 422, "invalid_safetensors"),
    ("unknown dtype", _unknown_dtype, 422, "invalid_safetensors"),
    ("pickle weights", _pickle, 422, "unsafe_format"),
    ("missing adapter_config.json", _no_config, 422, "invalid_adapter_config"),
    ("adapter_config.json not JSON", _config_not_json, 422, "invalid_adapter_config"),
    ("unknown peft_type", _unknown_peft_type, 422, "invalid_adapter_config"),
    ("LoRA rank mismatch", _rank_mismatch, 422, "tensor_mismatch"),
    ("tensor name foreign to LoRA", _foreign_tensor_name, 422, "tensor_mismatch"),
    ("LoRA tensors under an IA3 config", _ia3_config_with_lora_tensors, 422, "tensor_mismatch"),
    ("path with ..", _path("../escape.txt"), 422, "invalid_path"),
    ("absolute path", _path("/etc/passwd"), 422, "invalid_path"),
    ("backslash path", _path("sub\\file.txt"), 422, "invalid_path"),
    # Accepted once, then no pull could write them (or wrote a deceptive name).
    ("name over 255 bytes", _path("n" * 300), 422, "invalid_path"),
    ("a file that is also a directory", _file_and_directory, 422, "invalid_path"),
    ("right-to-left override", _path("README\u202etxt.exe"), 422, "invalid_path"),
    ("names differing only by case", _path("Adapter_Config.json"), 422, "invalid_path"),
    ("C1 control character", _path("a\x9bb.txt"), 422, "invalid_path"),
]


@pytest.fixture
def lora_files(adapters_dir) -> dict[str, bytes]:
    return read_dir(adapters_dir["lora"])


@pytest.mark.parametrize(("case", "mutate", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_push_is_refused_and_stores_nothing(live_server, lora_files, case, mutate, status,
                                                code):
    r = push_raw(live_server.url, "victim", mutate(lora_files))
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    assert body["detail"] and "\n" not in body["detail"]
    assert httpx.get(f"{live_server.url}/api/v1/adapters/victim/versions").status_code == 404
    assert httpx.get(f"{live_server.url}/api/v1/adapters").json() == []


def test_pickle_message_says_how_to_convert(live_server, lora_files):
    r = push_raw(live_server.url, "victim", _pickle(lora_files))
    assert "safetensors" in r.json()["detail"]


def test_header_over_limit(live_server, lora_files, settings):
    settings.max_header_bytes = 64
    r = push_raw(live_server.url, "victim", lora_files)
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_file_over_limit_at_version_create(live_server, lora_files, settings):
    for data in lora_files.values():
        httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)
    settings.max_file_bytes = 100  # lowered after upload: the create step checks again
    body = {"files": {p: digest_of(d) for p, d in lora_files.items()}}
    r = httpx.post(f"{live_server.url}/api/v1/adapters/victim/versions", json=body)
    assert r.status_code == 413


# Percent-encoded so the HTTP client does not normalise the path before the server sees it
# ("%2E%2E" is "..": sent bare, the client would resolve it and ask for another route).
@pytest.mark.parametrize(("name", "code"), [
    ("Upper", "invalid_name"), ("-dash", "invalid_name"), ("a/b/c", "invalid_name"),
    ("sp%20ace", "invalid_name"), ("x" * 201, "invalid_input"), ("a%2F..%2Fb", "invalid_name"),
    ("%2E%2E", "invalid_name"), ("a%00b", "invalid_name"),
])
def test_invalid_adapter_name(live_server, lora_files, name, code):
    for data in lora_files.values():
        httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)
    body = {"files": {p: digest_of(d) for p, d in lora_files.items()}}
    r = httpx.post(f"{live_server.url}/api/v1/adapters/{name}/versions", json=body)
    assert r.status_code == 422 and r.json()["error"] == code, r.text
    assert httpx.get(f"{live_server.url}/api/v1/adapters").json() == []


STORED = "<stored>"  # replaced by the digests of the uploaded adapter: the blobs exist


@pytest.mark.parametrize(("body", "code"), [
    ({"files": {}}, "invalid_input"),
    ({"files": {"adapter_config.json": "sha256:nothex"}}, "invalid_digest"),
    ({"files": "nope"}, "invalid_input"),
    ({"files": STORED, "metadata": {"bad key!": "v"}}, "invalid_input"),
    ({"files": STORED, "unexpected": 1}, "invalid_input"),
    ({"files": STORED, "parent": "not a ref"}, "invalid_reference"),
    ({"files": STORED, "parent": "x"}, "invalid_reference"),  # a parent names its version
    ({"files": STORED, "base_model": "Bad Base"}, "invalid_name"),
])
def test_malformed_version_requests(live_server, lora_files, body, code):
    for data in lora_files.values():
        httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)
    if body["files"] == STORED:
        body = {**body, "files": {p: digest_of(d) for p, d in lora_files.items()}}
    r = httpx.post(f"{live_server.url}/api/v1/adapters/x/versions", json=body)
    assert r.status_code == 422 and r.json()["error"] == code, r.text
    assert set(r.json()) == {"error", "detail"}
    assert httpx.get(f"{live_server.url}/api/v1/adapters").json() == []


def test_non_json_body(live_server):
    r = httpx.post(f"{live_server.url}/api/v1/adapters/x/versions", content=b"\xff\xfe",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"


def test_client_refuses_before_uploading(live_server, settings, tmp_path: Path, lora_files):
    from registry import errors
    from registry.client import HttpRegistry
    from registry.clientside.transfer import push

    bad = tmp_path / "bad"
    bad.mkdir()
    for path, data in _truncated(lora_files).items():
        (bad / path).write_bytes(data)
    client = HttpRegistry(live_server.url)
    with pytest.raises(errors.InvalidSafetensors):
        push(client, name="victim", directory=bad, settings=settings)
    client.close()
    for data in lora_files.values():  # nothing was uploaded
        assert httpx.head(f"{live_server.url}/api/v1/blobs/{digest_of(data)}").status_code == 404


def test_oversized_json_body_is_413(live_server):
    r = httpx.post(f"{live_server.url}/api/v1/adapters/x/versions",
                   content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
