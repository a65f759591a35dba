"""Where does push/pull time go? Times each stage of one big blob's round trip in-process.

    python -m bench.profile_transfer [--size-mib 1024] [--repeats 2] [--prime-copies 2]

The server is ``adapter-registry server`` in a subprocess (``BENCH_SERVER_CMD`` can swap it, e.g.
for a venv with httptools/uvloop); the client stages run here, with ``HttpRegistry`` as the CLI
uses it, plus alternatives for comparison:

    client_sha256         the pre-upload hash (registry.storage.sha256_file)
    upload_body           HttpRegistry.upload_blob until the last byte is handed to httpx
    upload_commit_wait    from there until the 201 (the server's hash check, fsync, rename, row)
    download_client       HttpRegistry.download_blob (stdlib http.client readinto, two 1 MiB
                          buffers in turn) into a plain hash + file sink (not the threaded one)
    download_http_client  the same GET written out here: http.client readinto(1 MiB), one buffer
    download_fsync        fsync of the pulled file (transfer.pull does it)
    python_copy / fsync   plain read/write copy of the file in Python, then fsync (disk reference)

Each stage starts on freshly recycled memory (bench.common.Primer). Minimum over --repeats of
each stage; results in bench/results/transfer_breakdown_<size>mib.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    SERVER_CMD,
    MiB,
    Primer,
    machine_info,
    read_hwm,
    registry_server,
    shape_for_size,
    write_lora_adapter,
    write_results,
)


class _HashFile:
    def __init__(self, path: Path) -> None:
        self.f = path.open("wb")
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)


def _once(url: str, src: Path, scratch: Path, size: int, prime: Primer) -> dict[str, float]:
    from registry.client import HttpRegistry
    from registry.storage import sha256_file

    s: dict[str, float] = {}
    prime()
    os.sync()
    t = time.perf_counter()
    digest, _ = sha256_file(src)
    s["client_sha256"] = time.perf_counter() - t

    client = HttpRegistry(url)
    try:
        last = [0.0]

        def progress(_n: int) -> None:
            last[0] = time.perf_counter()

        prime()
        os.sync()
        t = time.perf_counter()
        client.upload_blob(digest, src, progress=progress)
        end = time.perf_counter()
        s["upload_body"] = last[0] - t
        s["upload_commit_wait"] = end - last[0]
        s["upload_total"] = end - t

        out = scratch / "pulled.bin"
        prime()
        os.sync()
        sink = _HashFile(out)
        t = time.perf_counter()
        client.download_blob(digest, sink)  # type: ignore[arg-type]
        s["download_client"] = time.perf_counter() - t
        sink.f.flush()
        t = time.perf_counter()
        os.fsync(sink.f.fileno())
        s["download_fsync"] = time.perf_counter() - t
        sink.f.close()
        assert f"sha256:{sink.h.hexdigest()}" == digest and sink.size == size
        out.unlink()
    finally:
        client.close()

    prime()
    os.sync()
    parts = urlsplit(url)
    sink = _HashFile(out)
    t = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
    conn.request("GET", f"/api/v1/blobs/{digest}")
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    buf = memoryview(bytearray(MiB))
    while n := resp.readinto(buf):
        sink.write(buf[:n])
    conn.close()
    s["download_http_client"] = time.perf_counter() - t
    sink.f.close()
    assert f"sha256:{sink.h.hexdigest()}" == digest and sink.size == size
    out.unlink()

    prime()
    os.sync()
    t = time.perf_counter()
    with src.open("rb") as fin, out.open("wb") as fout:
        while data := fin.read(MiB):
            fout.write(data)
        fout.flush()
        s["python_copy"] = time.perf_counter() - t
        t = time.perf_counter()
        os.fsync(fout.fileno())
        s["python_copy_fsync"] = time.perf_counter() - t
    out.unlink()
    return s


def run(size_mib: int = 1024, repeats: int = 2, workdir: Path | None = None,
        results_name: str | None = None, prime_copies: int = 2) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="adapter-registry-prof-", dir=workdir))
    runs = []
    try:
        src_dir = root / "src"
        write_lora_adapter(src_dir, shape_for_size(size_mib), seed=os.urandom(16))
        src = src_dir / "adapter_model.safetensors"
        size = src.stat().st_size
        prime = Primer(src, root / "prime", prime_copies * size, enabled=prime_copies > 0)
        for i in range(repeats):
            # A fresh server (and store) per repeat, so every upload really uploads.
            with registry_server(root / f"home-{i}") as server:
                r = _once(server.url, src, root, size, prime)
                r["server_peak_rss_mib"] = round((read_hwm(server.pid) or 0) / MiB, 1)
            shutil.rmtree(root / f"home-{i}", ignore_errors=True)
            runs.append(r)
            print(f"run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()),
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: round(min(r[k] for r in runs), 3) for k in runs[0]}
    rates = {k: round(size / MiB / v, 1) for k, v in best.items()
             if v > 0 and not k.startswith(("server_", "upload_commit"))}
    data = {
        "benchmark": "transfer_breakdown",
        "machine": {**machine_info(), "load_average_at_start": load_at_start},
        "parameters": {"size_mib": size_mib, "file_bytes": size, "repeats": repeats,
                       "server_command": SERVER_CMD, "aggregate": "min over repeats",
                       "prime": prime.describe()},
        "seconds": best,
        "mib_per_s": rates,
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    write_results(results_name or f"transfer_breakdown_{size_mib}mib", data)
    for k, v in best.items():
        print(f"{k:24s} {v:8.3f}" + (f"  {rates[k]:8.1f} MiB/s" if k in rates else ""))
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--results-name", default=None)
    p.add_argument("--prime-copies", type=int, default=2,
                   help="copies written and deleted before every timed stage (0: off)")
    args = p.parse_args(argv)
    run(args.size_mib, args.repeats, args.workdir, args.results_name, args.prime_copies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
