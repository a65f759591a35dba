"""Test helpers: raw HTTP pushes (bypassing the client's own checks) and crafted safetensors."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from registry.context import RegistryContext


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def read_dir(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` but a pull's manifest (not one of the version's files)."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() != ".adapter-registry.json"
    }


def put_blob(base_url: str, data: bytes) -> httpx.Response:
    return httpx.put(f"{base_url}/api/v1/blobs/{digest_of(data)}", content=data, timeout=60)


def push_raw(
    base_url: str, name: str, files: dict[str, bytes], **extra: object
) -> httpx.Response:
    """Upload every file, then create the version: what a client that skips its checks does."""
    for data in files.values():
        r = put_blob(base_url, data)
        assert r.status_code == 201, r.text
    body = {"files": {p: digest_of(d) for p, d in files.items()}, **extra}
    return httpx.post(f"{base_url}/api/v1/adapters/{name}/versions", json=body, timeout=60)


def safetensors_bytes(header: dict, data: bytes, *, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    return struct.pack("<Q", n) + raw + data


def version_count(base_url: str, name: str) -> int:
    r = httpx.get(f"{base_url}/api/v1/adapters/{name}/versions", timeout=30)
    if r.status_code == 404:
        return 0
    r.raise_for_status()
    return len(r.json())


def big_lora_dir(directory: Path, seed: int) -> Path:
    """A valid LoRA directory whose weights file is over transfer.UNHASHED_UPLOAD_MIN (10.5 MB)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    directory.mkdir(parents=True)
    save_file({f"{stem}.lora_A.weight": rng.standard_normal((16, 81920), dtype=np.float32),
               f"{stem}.lora_B.weight": rng.standard_normal((81920, 16), dtype=np.float32)},
              str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}))
    return directory


def file_size_limit(limit: int):  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` for subprocess: in the child, writes past ``limit`` bytes of any file fail
    with EFBIG, the way a full disk fails a write (the SIGXFSZ the kernel would send instead is
    ignored). Nothing of ours is patched: the kernel refuses the write."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@contextmanager
def serve(context: RegistryContext) -> Iterator[str]:
    """The API on a real socket (uvicorn in a thread), like the live_server fixture."""
    import uvicorn

    from registry.api.app import create_app

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(context=context), log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
