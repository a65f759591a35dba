"""Register many small versions of one adapter through the HTTP API and report versions/s.

    python -m bench.bench_register [--count 1000] [--push-count 100] [--backends sqlite,postgres]

The server runs as a subprocess (``adapter-registry server``); the client is ``HttpRegistry``
in this process. The adapter's blobs are uploaded once; each version then differs only by its
metadata, so the timed loop is exactly ``POST /api/v1/adapters/{name}/versions`` (the server
still re-validates the config and safetensors header of every version from the blob store).

A second, shorter loop times ``registry.clientside.transfer.push`` end to end (client-side
checks, hashing, HEAD per blob, create), which is what ``adapter-registry push`` costs minus
process start-up.

Backends: ``sqlite`` (the embedded default: SQLite + local store) and, when PostgreSQL answers
at $REGISTRY_TEST_PG_HOST:$REGISTRY_TEST_PG_PORT (default 127.0.0.1:5432), ``postgres``
(a database created for the run and dropped after, local blob store). Unreachable: skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    LoraShape,
    machine_info,
    mib,
    percentile,
    postgres_database,
    read_hwm,
    registry_server,
    tree_rss,
    write_lora_adapter,
    write_results,
)

ADAPTER = "bench-small"


def make_small_adapter(directory: Path, kind: str) -> str:
    """A tiny real LoRA adapter (peft on a tiny Llama) or, without peft/torch, a handwritten one."""
    if kind == "peft":
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.peft_factory import make_adapter

            make_adapter(directory, "lora", base_model_name_or_path="tiny-llama")
            return "peft (tests.peft_factory.make_adapter, kind=lora)"
        except ImportError as exc:
            print(f"peft factory unavailable ({exc}); writing the adapter by hand",
                  file=sys.stderr)
    write_lora_adapter(directory, LoraShape(layers=2, hidden=32, r=4, dtype="F32",
                                            modules=("q_proj", "v_proj")))
    return "handwritten (bench.common.write_lora_adapter, 2 layers, hidden 32, r 4, F32)"


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata(i: int) -> dict[str, str]:
    return {"run_id": f"bench-{i:05d}", "step": str(1000 * i), "lr": f"{1e-4 * (1 + i % 7):.1e}",
            "dataset": f"shard-{i % 13}"}


def _run_backend(backend: str, adapter_dir: Path, home: Path, count: int, push_count: int,
                 env_extra: dict[str, str]) -> dict[str, Any]:
    from registry.adapters.schemas import CreateVersionIn
    from registry.client import HttpRegistry

    files = {p.name: _digest(p) for p in sorted(adapter_dir.iterdir()) if p.is_file()}
    out: dict[str, Any] = {"backend": backend, "files": len(files),
                           "adapter_bytes": sum(p.stat().st_size for p in adapter_dir.iterdir())}
    with registry_server(home, env_extra=env_extra) as server:
        client = HttpRegistry(server.url)
        try:
            for path, digest in files.items():
                if not client.blob_exists(digest):
                    client.upload_blob(digest, adapter_dir / path)
            out["server_rss_before_mib"] = mib(tree_rss(server.pid))

            latencies = []
            start = time.perf_counter()
            for i in range(1, count + 1):
                t = time.perf_counter()
                version, created = client.create_version(
                    ADAPTER, CreateVersionIn(files=files, metadata=_metadata(i))
                )
                latencies.append(time.perf_counter() - t)
                if not created or version.version != i:
                    raise RuntimeError(f"create {i}: got version {version.version}, "
                                       f"created={created}")
            wall = time.perf_counter() - start
            out["create"] = {
                "count": count,
                "seconds": round(wall, 3),
                "versions_per_s": round(count / wall, 1),
                "latency_ms": _latency_ms(latencies),
                "first_ms": round(latencies[0] * 1000, 2),
                # Does creating get slower as the adapter accumulates versions?
                "mean_ms_first_100": round(statistics.mean(latencies[:100]) * 1000, 2),
                "mean_ms_last_100": round(statistics.mean(latencies[-100:]) * 1000, 2),
            }

            t = time.perf_counter()
            versions = client.list_versions(ADAPTER)
            out["list_versions"] = {"count": len(versions),
                                    "seconds": round(time.perf_counter() - t, 3)}
            assert len(versions) == count, len(versions)
            assert client.get_version(ADAPTER, None).version == count

            if push_count:
                from registry.clientside.transfer import push
                from registry.config import Settings

                settings = Settings()
                push_lat = []
                start = time.perf_counter()
                for i in range(count + 1, count + push_count + 1):
                    t = time.perf_counter()
                    res = push(client, name=ADAPTER, directory=adapter_dir, settings=settings,
                               metadata=_metadata(i))
                    push_lat.append(time.perf_counter() - t)
                    if res.uploaded:
                        raise RuntimeError(f"push {i} uploaded {res.uploaded}: dedupe failed")
                wall = time.perf_counter() - start
                out["push"] = {"count": push_count, "seconds": round(wall, 3),
                               "versions_per_s": round(push_count / wall, 1),
                               "latency_ms": _latency_ms(push_lat)}
            out["server_rss_after_mib"] = mib(tree_rss(server.pid))
            out["server_peak_rss_mib"] = mib(read_hwm(server.pid))
        finally:
            client.close()
    return out


def _latency_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2),
            "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2),
            "mean": round(statistics.mean(ms), 2)}


def run(count: int = 1000, push_count: int = 100, backends: list[str] | None = None,
        adapter_kind: str = "peft", results_name: str = "register") -> dict[str, Any]:
    backends = backends or ["sqlite", "postgres"]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="adapter-registry-bench-reg-"))
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        adapter_dir = root / "adapter"
        made_with = make_small_adapter(adapter_dir, adapter_kind)
        for backend in backends:
            print(f"[{backend}] registering {count} versions ...", file=sys.stderr)
            if backend == "sqlite":
                results[backend] = _run_backend(backend, adapter_dir, root / backend, count,
                                                push_count, {})
            elif backend == "postgres":
                with postgres_database() as url:
                    if url is None:
                        skipped[backend] = "PostgreSQL not reachable"
                        print("[postgres] not reachable: skipped", file=sys.stderr)
                        continue
                    results[backend] = _run_backend(
                        backend, adapter_dir, root / backend, count, push_count,
                        {"REGISTRY_DATABASE_URL": url, "REGISTRY_AUTO_MIGRATE": "1"},
                    )
                    results[backend]["database_url"] = url.rsplit("/", 1)[0] + "/<created+dropped>"
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            r = results[backend]
            print(f"[{backend}] {r['create']['versions_per_s']} versions/s, create p50 "
                  f"{r['create']['latency_ms']['p50']} ms p95 {r['create']['latency_ms']['p95']} "
                  f"ms" + (f"; full push {r['push']['versions_per_s']} versions/s"
                           if "push" in r else ""), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data = {
        "benchmark": "register",
        "machine": {**machine_info(), "load_average_at_start": load_at_start},
        "parameters": {"count": count, "push_count": push_count, "backends": backends,
                       "adapter": made_with, "client": "registry.client.HttpRegistry in-process",
                       "server": "adapter-registry server subprocess, local blob store"},
        "results": results,
        "skipped": skipped,
    }
    path = write_results(results_name, data)
    print(f"wrote {path}", file=sys.stderr)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--push-count", type=int, default=100,
                   help="versions registered afterwards with "
                        "registry.clientside.transfer.push (0: skip)")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--adapter", choices=["peft", "handwritten"], default="peft")
    p.add_argument("--results-name", default="register")
    args = p.parse_args(argv)
    run(args.count, args.push_count, [b.strip() for b in args.backends.split(",") if b.strip()],
        args.adapter, args.results_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
