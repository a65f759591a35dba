"""The API answers what its OpenAPI schema says: schemathesis, every check, against a live server
(both deployment shapes), with a stored adapter so lookups also find something."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import push_raw, safetensors_bytes

CONFIG = Path(__file__).with_name("openapi_contract.toml")


def _tiny_lora() -> dict[str, bytes]:
    """A valid rank-2 LoRA on one q_proj, built by hand (no torch needed)."""
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"
    header = {a: {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
              b: {"dtype": "F32", "shape": [8, 2], "data_offsets": [64, 128]}}
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    return {"adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": safetensors_bytes(header, bytes(128))}


@pytest.mark.slow
def test_schemathesis_all_checks(live_server, tmp_path):
    r = push_raw(live_server.url, "seeded", _tiny_lora())
    assert r.status_code == 201, r.text
    exe = Path(sys.executable).with_name("schemathesis")
    argv = [
        str(exe), "--config-file", str(CONFIG), "run", f"{live_server.url}/openapi.json",
        "--checks", "all",
        # Bounded: under a minute per deployment shape on 2 cores.
        "--max-examples", "20",
        # Reproducible in CI; change the seed to explore further.
        "--seed", "20261203",
        "--generation-database", "none",
        "--request-timeout", "30",
        # One worker: hypothesis describes strategies with ast.parse, which CPython 3.11 does
        # not survive from several threads at once ("AST constructor recursion depth").
        "--workers", "1",
        "--no-color",
    ]
    # Run from a scratch directory: schemathesis keeps a cache (.schemathesis/) where it runs.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # Non-zero on any failed check or error; the report names each case with a curl line.
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    # The server is still healthy after a few thousand hostile requests.
    assert httpx.get(f"{live_server.url}/readyz", timeout=30).status_code == 200


def test_every_error_response_is_documented_with_the_error_model(live_server):
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    assert set(spec["components"]["schemas"]["ErrorOut"]["required"]) == {"error", "detail"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # not what 422 returns
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "head":  # no body, so no body model
                continue
            for status, response in operation["responses"].items():
                if path.startswith("/api/v1/") and int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == error_ref, (method, path, status)
    blob = spec["paths"]["/api/v1/blobs/{digest}"]
    assert {"200", "206", "404", "416", "422", "503"} <= set(blob["get"]["responses"])
    assert {"201", "400", "413", "422", "503", "507"} <= set(blob["put"]["responses"])
    assert "content" not in blob["put"]["responses"]["201"]  # PUT answers 201 without a body
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    create = spec["paths"]["/api/v1/adapters/{name}/versions"]["post"]["responses"]
    assert {"201", "200", "404", "409", "413", "422", "503"} <= set(create)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/api/v1/adapters", "GET"),
    ("PATCH", "/api/v1/adapters/x/versions", "GET, POST"),
    ("DELETE", f"/api/v1/blobs/sha256:{'0' * 64}", "GET, HEAD, PUT"),
    ("PUT", "/api/v1/blobs/uploads", "POST"),
    ("GET", "/api/v1/blobs/uploads", "POST"),
    ("POST", "/healthz", "GET"),
])
def test_405_says_what_is_allowed(live_server, method, path, allow):
    r = httpx.request(method, live_server.url + path)
    assert r.status_code == 405, r.text
    assert r.json()["error"] == "method_not_allowed"
    assert r.headers["allow"] == allow


def test_a_body_that_is_not_utf8_is_422(live_server):
    r = httpx.post(f"{live_server.url}/api/v1/admin/gc", content=b'{"dry_run": "\xe9"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", r.text


@pytest.mark.parametrize("body", [{"grace_seconds": 10**19}, {"grace_seconds": False},
                                  {"dry_run": 0}, {"grace_seconds": "60"}])
def test_gc_refuses_what_its_schema_refuses(live_server, body):
    r = httpx.post(f"{live_server.url}/api/v1/admin/gc", json=body)
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", r.text
