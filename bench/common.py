"""Shared benchmark plumbing: subprocess servers (registry, moto S3, PostgreSQL database), peak-RSS
measurement, adapter files written by streaming, and results written atomically as JSON.

Everything the benchmarks measure runs in its own process (registry server, CLI client, moto) so
that each peak RSS is that process's own and nothing of the benchmark harness is counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "adapter-registry")
# Experiments only: run the server with another command, e.g. a venv that adds httptools/uvloop:
# BENCH_SERVER_CMD="/tmp/venv/bin/python -m cli.main". Results record the command used.
SERVER_CMD = shlex.split(os.environ.get("BENCH_SERVER_CMD", "")) or [CLI]

PG_HOST = os.environ.get("REGISTRY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("REGISTRY_TEST_PG_PORT", "5432")
PG_USER = os.environ.get("REGISTRY_TEST_PG_USER", "postgres")

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- ports and environment ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """Environment for a registry process: ours without REGISTRY_*/AWS_*, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REGISTRY_", "AWS_")) and k not in ("PYTHONPATH",)
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


# --- memory -------------------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    procs = [proc]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs.extend(proc.children(recursive=True))
    return procs


def tree_rss(pid: int) -> int:
    """Current RSS in bytes of ``pid`` and all its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid`` (Linux >= 4.0); False if not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def read_hwm(pid: int) -> int | None:
    """The kernel's exact peak RSS (VmHWM) of ``pid`` in bytes, since start or the last reset."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    """One CLI invocation: wall time, exact peak RSS (wait4's ru_maxrss) and the sampled peak."""

    argv: list[str]
    returncode: int
    seconds: float
    peak_rss: int  # exact, from the kernel: max RSS of the process (children not included)
    sampled_peak_rss: int  # 50 ms samples of the process tree (children included)
    stdout: str
    stderr: str

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.argv)} exited {self.returncode}:\n{self.stderr[-4000:]}"
                f"\n{self.stdout[-2000:]}"
            )
        return self

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_measured(argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None,
                 timeout: float = 1800) -> Measured:
    """Run a command, timing it and measuring its peak RSS both exactly and by sampling."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err)
        with RssSampler(proc.pid) as sampler:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, rusage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.005)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            argv=list(argv),
            returncode=proc.returncode,
            seconds=seconds,
            peak_rss=rusage.ru_maxrss * 1024,
            sampled_peak_rss=sampler.peak,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Service:
    """A subprocess we started; ``stop()`` ends it and returns its exact lifetime peak RSS."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    lifetime_peak_rss: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> int | None:
        """SIGINT (uvicorn and werkzeug shut down cleanly), then SIGKILL; reaps with wait4."""
        if self.proc.returncode is not None:
            return self.lifetime_peak_rss
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        rusage = None
        while time.monotonic() < deadline:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            _pid, status, rusage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.lifetime_peak_rss = rusage.ru_maxrss * 1024 if rusage is not None else None
        return self.lifetime_peak_rss


def _wait_http(service: Service, path: str, timeout: float, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.proc.returncode} before it was ready; "
                f"log tail:\n{service.log_tail()}"
            )
        try:
            r = httpx.get(service.url + path, timeout=2)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"{service.name} not ready after {timeout}s ({last}); log tail:\n"
                       f"{service.log_tail()}")


@contextlib.contextmanager
def registry_server(home: Path, *, env_extra: dict[str, str] | None = None,
                    log_level: str = "warning", ready_timeout: float = 60) -> Iterator[Service]:
    """``adapter-registry server`` as a subprocess, ``REGISTRY_HOME=home``; waits for /readyz."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = base_env(REGISTRY_HOME=str(home), **(env_extra or {}))
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*SERVER_CMD, "server", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", log_level],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home,
        )
    service = Service("registry server", proc, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_http(service, "/readyz", ready_timeout)
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def moto_server(workdir: Path, *, bucket: str = "bench", ready_timeout: float = 60
                ) -> Iterator[Service]:
    """moto's S3 server as a subprocess (its memory is not ours); creates ``bucket``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "moto.log"
    moto = VENV_BIN / "moto_server"
    argv = ([str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]) + [
        "-H", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=base_env(**S3_ENV), stdout=log,
                                stderr=subprocess.STDOUT, cwd=workdir)
    service = Service("moto S3 server", proc, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_http(service, "/moto-api/", ready_timeout, ok=(200, 404))
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=service.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket=bucket)
        service.extra["bucket"] = bucket
        yield service
    finally:
        service.stop()


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database (created here, dropped after), or None if PG is unreachable."""
    try:
        from sqlalchemy import create_engine, text
    except ImportError:
        yield None
        return
    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        admin.dispose()
        yield None
        return
    name = f"adapter_registry_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- adapters -----------------------------------------------------------------------------------

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


@dataclass(frozen=True)
class LoraShape:
    """A LoRA adapter on a Llama-like model: ``layers`` x ``modules``, each lora_A [r, hidden]
    and lora_B [hidden, r]."""

    layers: int
    hidden: int
    r: int
    dtype: str = "F16"
    modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    @property
    def tensor_bytes(self) -> int:
        return self.hidden * self.r * DTYPE_BYTES[self.dtype]

    @property
    def data_bytes(self) -> int:
        return 2 * self.layers * len(self.modules) * self.tensor_bytes

    def tensors(self) -> list[tuple[str, list[int]]]:
        out = []
        for i in range(self.layers):
            for m in self.modules:
                stem = f"base_model.model.model.layers.{i}.self_attn.{m}"
                out.append((f"{stem}.lora_A.weight", [self.r, self.hidden]))
                out.append((f"{stem}.lora_B.weight", [self.hidden, self.r]))
        return sorted(out)


def shape_for_size(size_mib: int) -> LoraShape:
    """A LoRA shape whose tensor data is about ``size_mib`` MiB: hidden 8192, r 256, F16,
    4 attention projections per layer, i.e. 32 MiB per layer (1 GiB = 32 layers)."""
    layers = max(1, round(size_mib / 32))
    return LoraShape(layers=layers, hidden=8192, r=256, dtype="F16")


def adapter_config(shape: LoraShape, base: str = "bench/llama-like-8k") -> dict[str, Any]:
    return {
        "alpha_pattern": {},
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": 2 * shape.r,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": shape.r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": list(shape.modules),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def write_lora_adapter(directory: Path, shape: LoraShape, *, chunk_bytes: int = 8 * MiB,
                       seed: bytes | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors for ``shape`` without ever holding
    more than one chunk in memory. The data is one random chunk repeated (dedupe is per whole file,
    so repetition inside a file changes nothing); ``seed`` makes files of different runs differ."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config(shape), indent=2))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shape.tensors():
        header[name] = {"dtype": shape.dtype, "shape": dims,
                        "data_offsets": [offset, offset + shape.tensor_bytes]}
        offset += shape.tensor_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the safetensors library pads the header to 8 bytes
    chunk = bytearray(os.urandom(chunk_bytes))
    if seed:
        chunk[: len(seed)] = seed
    # Random bytes, so some F16 values are NaN/Inf: no reader here looks at tensor values.
    view = memoryview(chunk)
    path = directory / "adapter_model.safetensors"
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        left = offset
        while left:
            n = min(left, chunk_bytes)
            f.write(view[:n])
            left -= n
    return directory


# --- results ------------------------------------------------------------------------------------


@dataclass
class Primer:
    """Gives every timed phase the same memory conditions: freshly recycled pages.

    On a VM that returns free guest memory to the host (free page reporting, as on the
    benchmark machine), the first write to a page the host took back costs a host page fault:
    about 2 s of system time per GiB of new page cache, against 0.2 s on a page freed a moment
    earlier. A ``cp`` right after another ``cp`` whose copy was deleted always gets recycled
    pages; a pull, which writes a new file while the pushed blob and the source still exist,
    got them or not depending on what ran before (pulls of 1 GiB took 1.0 s or 2.5 s with
    nothing else changed). Before each timed phase, baselines included, the primer copies
    ``src`` into ``scratch`` until ``nbytes`` are written and deletes the copies (untimed), so
    every phase writes onto pages touched a moment earlier. ``enabled=False`` skips it (the
    numbers then depend on the machine's recent history).
    """

    src: Path
    scratch: Path
    nbytes: int
    enabled: bool = True
    seconds: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        if not self.enabled:
            return
        t = time.perf_counter()
        self.scratch.mkdir(parents=True, exist_ok=True)
        copies: list[Path] = []
        written = 0
        while written < self.nbytes:
            dst = self.scratch / f".prime-{len(copies)}"
            subprocess.run(["cp", str(self.src), str(dst)], check=True)
            copies.append(dst)
            written += dst.stat().st_size
        for dst in copies:
            dst.unlink()
        os.sync()
        self.seconds.append(round(time.perf_counter() - t, 3))

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "bytes_per_phase": self.nbytes if self.enabled else 0,
                "seconds": self.seconds}


def machine_info() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(str(REPO))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_bytes": vm.total,
        "memory_total_gib": round(vm.total / 1024**3, 1),
        "disk_free_gib": round(disk.free / 1024**3, 1),
        # Other work on the machine skews timings (2 cores here): look at this before comparing.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically (temp file + rename)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = RESULTS_DIR / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".json.tmp", dir=RESULTS_DIR)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def mib(n: int | float | None) -> float | None:
    return None if n is None else round(n / MiB, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]
