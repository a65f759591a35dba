"""Test helpers: raw HTTP pushes (bypassing the client's own checks), crafted safetensors, and
servers (in a thread, or as `adapter-registry server` processes)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from registry.config import Settings
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a server process on ``settings``' database and store (no other
    REGISTRY_* variable leaks in from the test run), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["REGISTRY_HOME"] = str(settings.home)
    if settings.database_url:
        env["REGISTRY_DATABASE_URL"] = settings.database_url
    if settings.blob_url:
        env["REGISTRY_BLOB_URL"] = settings.blob_url
    env["REGISTRY_S3_PART_BYTES"] = str(5 << 20)
    env.update(extra)
    return env


def start_server(env: dict[str, str], *args: str,
                 **popen: Any) -> tuple[subprocess.Popen[bytes], str]:
    """`adapter-registry server` as a process, once it answers /readyz: (process, base URL).
    ``popen``: more arguments for subprocess.Popen (e.g. ``preexec_fn``)."""
    port = free_port()
    exe = Path(sys.executable).with_name("adapter-registry")
    proc = subprocess.Popen([str(exe), "server", "--port", str(port), "--log-level", "error",
                             *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("server did not start")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
