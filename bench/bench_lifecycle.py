"""Registry operations against MLflow's model registry, side by side, in one run.

    python -m bench.bench_lifecycle [--count 1000] [--fresh 300] [--resolves 2000]
                                    [--moves 1000] [--round 50] [--warmup 50] [--py-spy PATH]

Both servers run as subprocesses with one worker process each, on the same PostgreSQL cluster
(one database each, created for the run and dropped after) and this machine; the clients are
raw HTTP clients in this process (``http.client``, one keep-alive connection per server: a
client library's own cost, ~0.4 ms a request for httpx here, would fall on both sides).
Operations:

(a) register a version whose files are already uploaded: ours ``POST
    /api/v1/adapters/{name}/versions`` with the file manifest and 4 metadata entries (the
    server checks config and safetensors header, links the base, computes the compatibility
    verdict against the registered base, writes the version, its files and the event); MLflow
    ``POST /api/2.0/mlflow/model-versions/create`` with a source URI and 4 tags.
(a') the same with a weights file no version had before, each time (``--fresh``; reported,
    not a target): what a push after a fresh training run costs.
(b) resolve an alias: ours ``GET /api/v1/adapters/{name}/aliases/{alias}`` (the full version
    object); MLflow ``GET /api/2.0/mlflow/registered-models/alias``.
(c) move an alias: ours ``PUT /api/v1/adapters/{name}/aliases/{alias}`` (no policy: the two
    rules that always hold are still evaluated; the move writes the history entry and the
    event); MLflow ``POST /api/2.0/mlflow/registered-models/alias``.

The two servers take turns in rounds of ``--round`` operations, so a change in the machine's
load (it is shared) falls on both; before the timed runs each server registers ``--warmup``
versions of another name, untimed (first statements compiled, caches and pools filled).
MLflow is installed into ``bench/.mlflow-venv`` when missing (``MLFLOW_SPEC``), and runs
without its job runner. ``--py-spy PATH`` also samples our server during an extra create
loop and records where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    Service,
    _wait_http,
    base_env,
    free_port,
    machine_info,
    percentile,
    postgres_database,
    registry_server,
    write_results,
)

MLFLOW_VENV = REPO / "bench" / ".mlflow-venv"
# 3.18.0's own mlflow-tracing 3.18.0 was not installable when this was written; 3.17.2 is.
MLFLOW_SPEC = os.environ.get("MLFLOW_SPEC", "mlflow==3.17.2")
NAME = "bench-adapter"
WARMUP_NAME = "bench-warmup"
FRESH_NAME = "bench-fresh"
WEIGHTS = "adapter_model.safetensors"
ALIAS = "production"


def ensure_mlflow() -> Path:
    """``bench/.mlflow-venv/bin/mlflow``, installing MLflow (and psycopg2) there if missing."""
    exe = MLFLOW_VENV / "bin" / "mlflow"
    if exe.exists():
        return exe
    print(f"installing {MLFLOW_SPEC} into {MLFLOW_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
    subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", MLFLOW_SPEC,
                    "psycopg2-binary"], check=True)
    return exe


def mlflow_version(exe: Path) -> str:
    out = subprocess.run([str(exe.with_name("python")), "-c",
                          "import mlflow; print(mlflow.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextlib.contextmanager
def mlflow_server(exe: Path, db_url: str, workdir: Path) -> Iterator[Service]:
    """``mlflow server`` with one worker on PostgreSQL (psycopg2, the driver MLflow documents),
    artifacts on local disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pg = db_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    log_path = workdir / "mlflow.log"
    argv = [str(exe), "server", "--backend-store-uri", pg,
            "--default-artifact-root", (workdir / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log_path.open("wb") as log:
        # MLflow 3 starts a job runner beside the server (seven huey consumer processes, each
        # importing mlflow: ~10 s of both cores after start-up) for its GenAI jobs; the
        # registry calls measured here never use it, and "one worker process" excludes it.
        proc = subprocess.Popen(argv, env=base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    service = Service("mlflow server", proc, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_http(service, "/health", 180)
        yield service
    finally:
        service.stop()


def make_inputs(root: Path) -> tuple[Path, Path | None, str]:
    """A tiny real LoRA (peft) and the tiny Llama base it fits, or a handwritten LoRA alone."""
    adapter = root / "adapter"
    try:
        sys.path.insert(0, str(REPO))
        from tests.peft_factory import make_adapter, save_base, tiny_llama

        make_adapter(adapter, "lora", base_model_name_or_path="tiny-llama")
        base = save_base(tiny_llama(), root / "tiny-llama")
        return adapter, base, "peft LoRA (tests.peft_factory) on a registered tiny Llama base"
    except ImportError as exc:
        from bench.bench_register import make_small_adapter

        print(f"peft unavailable ({exc}): a handwritten LoRA, no base", file=sys.stderr)
        return adapter, None, make_small_adapter(adapter, "handwritten")


@dataclasses.dataclass
class RawResponse:
    method: str
    path: str
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class RawClient:
    """One keep-alive HTTP/1.1 connection (stdlib ``http.client``): the least a client can
    add to a request, the same for both servers."""

    def __init__(self, base_url: str) -> None:
        url = urllib.parse.urlsplit(base_url)
        self._conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                                timeout=60)

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict[str, str] | None = None) -> RawResponse:
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        headers = {}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        self._conn.request(method, path, body=body, headers=headers)
        r = self._conn.getresponse()
        return RawResponse(method, path, r.status, r.read())

    def get(self, path: str, *, params: dict[str, str] | None = None) -> RawResponse:
        return self.request("GET", path, params=params)

    def post(self, path: str, *, json: Any) -> RawResponse:
        return self.request("POST", path, json_body=json)

    def put(self, path: str, *, json: Any) -> RawResponse:
        return self.request("PUT", path, json_body=json)

    def close(self) -> None:
        self._conn.close()


def _ok(r: RawResponse, *codes: int) -> RawResponse:
    if r.status_code not in codes:
        raise RuntimeError(f"{r.method} {r.path}: {r.status_code} {r.text[:300]}")
    return r


class Timer:
    """Latencies of one operation on one server, accumulated over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.wall = 0.0

    def run(self, n: int, op: Callable[[int], None], start: int) -> None:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            t = time.perf_counter()
            op(i)
            self.latencies.append(time.perf_counter() - t)
        self.wall += time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        return {"count": len(ms), "seconds": round(self.wall, 3),
                "ops_per_s": round(len(ms) / self.wall, 1),
                "latency_ms": {"p50": round(percentile(ms, 50), 2),
                               "p95": round(percentile(ms, 95), 2),
                               "p99": round(percentile(ms, 99), 2),
                               "mean": round(statistics.mean(ms), 2),
                               "max": round(max(ms), 2)}}


def alternate(count: int, per_round: int, ours: Callable[[int], None],
              theirs: Callable[[int], None]) -> tuple[Timer, Timer]:
    """Run ``count`` operations on each server, taking turns every ``per_round``."""
    a, b = Timer(), Timer()
    done = 0
    while done < count:
        n = min(per_round, count - done)
        a.run(n, ours, done)
        b.run(n, theirs, done)
        done += n
    return a, b


def _fresh_weights(weights: Path, directory: Path, count: int) -> list[tuple[str, Path]]:
    """``count`` copies of a safetensors file, each with other tensor bytes (the last 4 of its
    data region; the header unchanged), and their digests."""
    data = weights.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - start >= 4, "no tensor data to vary"
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        variant = data[:-4] + (0x7F000000 + i).to_bytes(4, "little")
        path = directory / f"{i:05d}.safetensors"
        path.write_bytes(variant)
        out.append(("sha256:" + hashlib.sha256(variant).hexdigest(), path))
    return out


def _metadata(i: int) -> dict[str, str]:
    return {"run_id": f"bench-{i:05d}", "step": str(1000 * i), "lr": f"{1e-4 * (1 + i % 7):.1e}",
            "dataset": f"shard-{i % 13}"}


def _py_spy_summary(raw: Path, top: int = 25) -> list[str]:
    """Inclusive share of the sampled time per frame of our code, from py-spy's raw output."""
    total = 0
    per_frame: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "create_version (registry/adapters/router.py" not in stack:
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            if "registry/" in frame or "sqlalchemy/engine/base.py" in frame or \
                    "psycopg/connection.py" in frame or "fastapi/routing.py" in frame:
                per_frame[frame] += int(count)
    return [f"{100 * c / total:5.1f}% {f}" for f, c in per_frame.most_common(top)] if total else []


def run(count: int, resolves: int, moves: int, per_round: int, py_spy: str | None,
        warmup: int = 50, fresh_count: int = 300) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    exe = ensure_mlflow()
    root = Path(tempfile.mkdtemp(prefix="adapter-registry-bench-lifecycle-"))
    results: dict[str, Any] = {}
    try:
        adapter, base_dir, made_with = make_inputs(root)
        files = {p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(adapter.iterdir()) if p.is_file()}
        with postgres_database() as ours_db, postgres_database() as mlflow_db:
            if ours_db is None or mlflow_db is None:
                raise SystemExit("PostgreSQL is not reachable: this benchmark needs it")
            # PYTHONPATH: the server runs this checkout's code, whatever the venv installed.
            with (registry_server(root / "ours", env_extra={
                    "REGISTRY_DATABASE_URL": ours_db, "REGISTRY_AUTO_MIGRATE": "1",
                    "PYTHONPATH": str(REPO)}) as ours,
                  mlflow_server(exe, mlflow_db, root / "mlflow") as mlflow,
                  contextlib.closing(RawClient(ours.url)) as a,
                  contextlib.closing(RawClient(mlflow.url)) as b):
                from registry.client import HttpRegistry
                from registry.clientside.transfer import register_base_dir
                from registry.config import Settings

                setup = HttpRegistry(ours.url)
                if base_dir is not None:
                    register_base_dir(setup, name="tiny-llama", directory=base_dir,
                                      settings=Settings())
                for path, digest in files.items():
                    if not setup.blob_exists(digest):
                        setup.upload_blob(digest, adapter / path)
                setup.close()
                _ok(b.post("/api/2.0/mlflow/registered-models/create", json={"name": NAME}),
                    200)

                _ok(b.post("/api/2.0/mlflow/registered-models/create",
                           json={"name": WARMUP_NAME}), 200)

                def ours_create(i: int, name: str = NAME) -> None:
                    body = {"files": files, "metadata": _metadata(i), "created_by": "bench"}
                    if base_dir is not None:
                        body["base_model"] = "tiny-llama"
                    _ok(a.post(f"/api/v1/adapters/{name}/versions", json=body), 201)

                def mlflow_create(i: int, name: str = NAME) -> None:
                    tags = [{"key": k, "value": v} for k, v in _metadata(i).items()]
                    # Files already in object storage: MLflow records the URI (it refuses a
                    # local path without a run), and reads nothing.
                    _ok(b.post("/api/2.0/mlflow/model-versions/create",
                               json={"name": name, "source": f"s3://bench/adapters/{i:05d}",
                                     "tags": tags}), 200)

                # Untimed warm-up on another name: each stack's first requests compile
                # statements, fill caches and open connections.
                alternate(warmup, per_round, lambda i: ours_create(i, WARMUP_NAME),
                          lambda i: mlflow_create(i, WARMUP_NAME))

                print(f"(a) {count} creates on each server ...", file=sys.stderr)
                ta, tb = alternate(count, per_round, ours_create, mlflow_create)
                results["register"] = {"ours": ta.summary(), "mlflow": tb.summary()}
                v = a.get(f"/api/v1/adapters/{NAME}/versions/latest").json()
                assert v["version"] == count, v
                assert base_dir is None or v["compatibility"]["compatible"], v

                # (a') Each version with a weights file no version had before (uploaded
                # untimed), as after a fresh training run: our server reads the blob rows and
                # parses the new header from the store, where (a) found them kept.
                if fresh_count:
                    fresh = _fresh_weights(adapter / WEIGHTS, root / "fresh", fresh_count)
                    uploader = HttpRegistry(ours.url)
                    for digest, path in fresh:
                        uploader.upload_blob(digest, path)
                    uploader.close()
                    _ok(b.post("/api/2.0/mlflow/registered-models/create",
                               json={"name": FRESH_NAME}), 200)

                    def ours_create_fresh(i: int) -> None:
                        body = {"files": {**files, WEIGHTS: fresh[i][0]},
                                "metadata": _metadata(i), "created_by": "bench"}
                        if base_dir is not None:
                            body["base_model"] = "tiny-llama"
                        _ok(a.post(f"/api/v1/adapters/{FRESH_NAME}/versions", json=body), 201)

                    print(f"(a') {fresh_count} creates of new files on each server ...",
                          file=sys.stderr)
                    ta, tb = alternate(fresh_count, per_round, ours_create_fresh,
                                       lambda i: mlflow_create(i, FRESH_NAME))
                    results["register_fresh_files"] = {"ours": ta.summary(),
                                                       "mlflow": tb.summary()}

                # The alias exists on both; (b) resolves it, (c) moves it over every version.
                _ok(a.put(f"/api/v1/adapters/{NAME}/aliases/{ALIAS}",
                          json={"version": 1, "actor": "bench"}), 200)
                _ok(b.post("/api/2.0/mlflow/registered-models/alias",
                           json={"name": NAME, "alias": ALIAS, "version": "1"}), 200)

                def ours_resolve(_: int) -> None:
                    _ok(a.get(f"/api/v1/adapters/{NAME}/aliases/{ALIAS}"), 200)

                def mlflow_resolve(_: int) -> None:
                    _ok(b.get("/api/2.0/mlflow/registered-models/alias",
                              params={"name": NAME, "alias": ALIAS}), 200)

                # The floor: a request that touches no database (each stack's own cost).
                ta, tb = alternate(resolves // 2, per_round,
                                   lambda _: _ok(a.get("/healthz"), 200) and None,
                                   lambda _: _ok(b.get("/health"), 200) and None)
                results["floor_no_database"] = {"ours": ta.summary(), "mlflow": tb.summary()}

                print(f"(b) {resolves} resolves on each server ...", file=sys.stderr)
                ta, tb = alternate(resolves, per_round, ours_resolve, mlflow_resolve)
                results["resolve"] = {"ours": ta.summary(), "mlflow": tb.summary()}

                def target(i: int) -> int:
                    return 2 + i % (count - 1)  # 2..count, never the current one

                def ours_move(i: int) -> None:
                    _ok(a.put(f"/api/v1/adapters/{NAME}/aliases/{ALIAS}",
                              json={"version": target(i), "actor": "bench"}), 200)

                def mlflow_move(i: int) -> None:
                    _ok(b.post("/api/2.0/mlflow/registered-models/alias",
                               json={"name": NAME, "alias": ALIAS, "version": str(target(i))}),
                        200)

                print(f"(c) {moves} alias moves on each server ...", file=sys.stderr)
                ta, tb = alternate(moves, per_round, ours_move, mlflow_move)
                results["move"] = {"ours": ta.summary(), "mlflow": tb.summary()}
                history = a.get(f"/api/v1/adapters/{NAME}/history",
                                params={"alias": ALIAS}).json()
                assert len(history) == moves + 1, len(history)  # every move recorded
                results["move"]["ours"]["history_entries"] = len(history)

                if py_spy:
                    results["profile_create"] = profile_creates(py_spy, ours, ours_create,
                                                                count, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    r = results
    ratios = {
        "register_versions_per_s_ours_over_mlflow": round(
            r["register"]["ours"]["ops_per_s"] / r["register"]["mlflow"]["ops_per_s"], 2),
        "resolve_p50_ours_over_mlflow": round(
            r["resolve"]["ours"]["latency_ms"]["p50"] / r["resolve"]["mlflow"]["latency_ms"]["p50"],
            3),
        "move_per_s_ours_over_mlflow": round(
            r["move"]["ours"]["ops_per_s"] / r["move"]["mlflow"]["ops_per_s"], 2),
    }
    if "register_fresh_files" in r:  # reported, not a target: (a) is the issue's
        fresh = r["register_fresh_files"]
        ratios["register_fresh_files_versions_per_s_ours_over_mlflow"] = round(
            fresh["ours"]["ops_per_s"] / fresh["mlflow"]["ops_per_s"], 2)
    targets = {
        "register >= 3x MLflow versions/s": ratios["register_versions_per_s_ours_over_mlflow"] >= 3,
        "resolve p50 <= 1/3 of MLflow's": ratios["resolve_p50_ours_over_mlflow"] <= 1 / 3,
        "move >= MLflow's set-alias rate (recording history)":
            ratios["move_per_s_ours_over_mlflow"] >= 1,
    }
    data = {
        "benchmark": "lifecycle",
        "machine": {**machine_info(), "load_average_at_start": load_at_start},
        "parameters": {"count": count, "fresh_count": fresh_count, "resolves": resolves,
                       "moves": moves,
                       "round": per_round, "warmup_creates": warmup, "adapter": made_with,
                       "mlflow": f"mlflow {mlflow_version(exe)} (mlflow server --workers 1, "
                                 "PostgreSQL via psycopg2, file artifact root)",
                       "ours": "adapter-registry server (uvicorn, one process), PostgreSQL "
                               "via psycopg 3, local blob store",
                       "client": "http.client per server, one keep-alive connection, in this "
                                 "process"},
        "results": results,
        "ratios": ratios,
        "targets_met": targets,
    }
    path = write_results("lifecycle", data)
    print(f"wrote {path}", file=sys.stderr)
    for k, v in ratios.items():
        print(f"{k}: {v}", file=sys.stderr)
    return data


def profile_creates(py_spy: str, ours: Service, create: Callable[[int], None], start: int,
                    root: Path) -> dict[str, Any]:
    """py-spy samples our server while it registers 300 more versions."""
    raw = root / "create.raw"
    proc = subprocess.Popen([py_spy, "record", "--pid", str(ours.pid), "--format", "raw",
                             "--output", str(raw), "--rate", "250", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    t = Timer()
    t.run(300, create, start + 1)
    proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
    proc.wait(timeout=60)
    return {"creates": t.summary(), "top_frames": _py_spy_summary(raw) if raw.exists() else []}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000, help="versions created on each server")
    p.add_argument("--resolves", type=int, default=2000)
    p.add_argument("--moves", type=int, default=1000)
    p.add_argument("--round", type=int, default=50, help="operations per turn")
    p.add_argument("--warmup", type=int, default=50,
                   help="untimed creates on each server first (another name)")
    p.add_argument("--py-spy", default=None, metavar="PATH",
                   help="py-spy executable: profile our server's creates too")
    p.add_argument("--fresh", type=int, default=300, metavar="N",
                   help="(a') creates whose weights file is new each time (0: skip)")
    args = p.parse_args(argv)
    run(args.count, args.resolves, args.moves, args.round, args.py_spy, args.warmup,
        args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
