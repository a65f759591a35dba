"""Push then pull one big adapter file through the HTTP API, against the local store and S3.

    python -m bench.bench_transfer [--size-mib 1024] [--stores local,s3] [--workdir DIR]

Targets (issue): peak RSS of the server and of the client each under 250 MiB (streaming, not
buffering); local-store push+pull throughput at least 40% of a plain ``cp`` of the same file on the
same disk, measured in the same run.

Definitions:
    push+pull throughput = 2 x size / (push_s + pull_s)   (wall time of the two CLI commands)
    cp throughput        = size / cp_s                    (median of --cp-repeats plain `cp`)
    ratio                = push+pull throughput / cp throughput; target >= 0.40

The server (``adapter-registry server``), the client (``adapter-registry push`` / ``pull``) and
moto each run in their own process. Client peak RSS is exact (the kernel's ru_maxrss of that
process, from wait4); server peak RSS per phase is the kernel's VmHWM, reset before each phase
(/proc/PID/clear_refs), cross-checked by 50 ms sampling.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CLI,
    S3_ENV,
    SERVER_CMD,
    MiB,
    Primer,
    RssSampler,
    base_env,
    machine_info,
    mib,
    moto_server,
    read_hwm,
    registry_server,
    reset_hwm,
    run_measured,
    shape_for_size,
    tree_rss,
    write_lora_adapter,
    write_results,
)

RSS_LIMIT = 250 * MiB
RATIO_TARGET = 0.40
ADAPTER = "bench-big"


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _drop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _cp_once(src: Path, scratch: Path, prime: Primer) -> float:
    dst = scratch / "cp.bin"
    prime()
    os.sync()  # every timed phase starts with no dirty pages pending writeback
    t = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    elapsed = time.perf_counter() - t
    dst.unlink()
    return elapsed


def _cp_baseline(src: Path, scratch: Path, repeats: int, prime: Primer) -> dict[str, Any]:
    """Plain `cp` (what the target is defined against) and `cp` + fsync of the copy (context: the
    registry fsyncs every blob it stores and every file it pulls)."""
    plain, synced = [], []
    for i in range(repeats):
        dst = scratch / f"cp-{i}.bin"
        prime()
        os.sync()  # every timed phase starts with no dirty pages pending writeback
        t = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        plain.append(time.perf_counter() - t)
        dst.unlink()
        prime()
        os.sync()
        t = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        subprocess.run(["sync", str(dst)], check=True)  # coreutils sync FILE = fsync(FILE)
        synced.append(time.perf_counter() - t)
        dst.unlink()
    return {
        "cp_seconds": [round(x, 4) for x in plain],
        "cp_seconds_median": round(statistics.median(plain), 4),
        "cp_fsync_seconds": [round(x, 4) for x in synced],
        "cp_fsync_seconds_median": round(statistics.median(synced), 4),
    }


def _hash_baseline(path: Path) -> float:
    """sha256 of the file in 1 MiB reads, as the client does before upload (context only)."""
    t = time.perf_counter()
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(MiB):
            h.update(data)
    return time.perf_counter() - t


def _cli_overhead(url: str, env: dict[str, str]) -> dict[str, float | None]:
    """Fixed cost of one CLI command: ``show`` of a missing adapter imports what push and pull
    import (registry.clientside.transfer) and makes one request, then exits 3 (not found)."""
    runs = [run_measured([CLI, "--url", url, "--json", "show", "bench-no-such-adapter"], env=env)
            for _ in range(3)]
    for r in runs:
        if r.returncode != 3:
            r.check()
    return {"seconds_median": round(statistics.median(r.seconds for r in runs), 4),
            "peak_rss_mib": mib(max(r.peak_rss for r in runs))}


def _phase(server_pid: int, argv: list[str], env: dict[str, str], prime: Primer
           ) -> dict[str, Any]:
    prime()
    os.sync()
    reset_ok = reset_hwm(server_pid)
    with RssSampler(server_pid) as sampler:
        m = run_measured(argv, env=env).check()
    hwm = read_hwm(server_pid) if reset_ok else None
    return {
        "seconds": round(m.seconds, 4),
        "client_peak_rss_mib": mib(m.peak_rss),
        "client_sampled_peak_rss_mib": mib(m.sampled_peak_rss),
        "server_peak_rss_mib": mib(hwm if hwm is not None else sampler.peak),
        "server_peak_rss_source": "VmHWM reset per phase" if hwm is not None else "50ms samples",
        "server_sampled_peak_rss_mib": mib(sampler.peak),
        "output": m.json(),
    }


def _round(store: str, *, src: Path, work: Path, s3_part_mib: int | None,
           with_overhead: bool, prime: Primer) -> dict[str, Any]:
    """One push + pull against a fresh server (and, for S3, a fresh moto), so the push uploads."""
    home = work / "server-home"
    client_env = base_env(REGISTRY_HOME=str(work / "client-home"))
    env_extra: dict[str, str] = {}
    if s3_part_mib:
        env_extra["REGISTRY_S3_PART_BYTES"] = str(s3_part_mib * MiB)
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        moto = stack.enter_context(moto_server(work / "moto")) if store == "s3" else None
        moto_sampler = stack.enter_context(RssSampler(moto.pid)) if moto is not None else None
        if moto is not None:
            env_extra.update(S3_ENV)
            env_extra["AWS_ENDPOINT_URL"] = moto.url
            env_extra["REGISTRY_BLOB_URL"] = f"s3://{moto.extra['bucket']}/bench-{os.getpid()}"
            env_extra["REGISTRY_DATABASE_URL"] = f"sqlite:///{home / 'registry.db'}"
        result["server_env"] = {k: v for k, v in env_extra.items()
                                if k not in ("AWS_SECRET_ACCESS_KEY",)}
        with registry_server(home, env_extra=env_extra) as server:
            result["server_idle_rss_mib"] = mib(tree_rss(server.pid))
            if with_overhead:
                result["cli_overhead"] = _cli_overhead(server.url, client_env)
            result["push"] = _phase(server.pid, [CLI, "--url", server.url, "--json", "push",
                                                 ADAPTER, str(src)], client_env, prime)
            out = work / "pulled"
            result["pull"] = _phase(server.pid, [CLI, "--url", server.url, "--json", "pull",
                                                 f"{ADAPTER}:1", str(out)], client_env, prime)
            result["pulled_identical"] = subprocess.run(
                ["cmp", "-s", str(src / "adapter_model.safetensors"),
                 str(out / "adapter_model.safetensors")]).returncode == 0
            _drop(out)
        result["server_lifetime_peak_rss_mib"] = mib(server.lifetime_peak_rss)
        if moto is not None and moto_sampler is not None:
            moto_sampler.__exit__()
            result["moto_sampled_peak_rss_mib"] = mib(moto_sampler.peak)
    if moto is not None:
        result["moto_lifetime_peak_rss_mib"] = mib(moto.lifetime_peak_rss)
    _drop(work)
    if not result["pulled_identical"]:
        raise RuntimeError(f"[{store}] the pulled file differs from the pushed one")
    return result


def _run_store(store: str, *, src: Path, root: Path, size: int, s3_part_mib: int | None,
               repeats: int, cp_times: list[float], prime: Primer) -> dict[str, Any]:
    """``repeats`` rounds; throughput from the fastest push and the fastest pull (the machine is
    shared, so the minimum is the least disturbed), memory from the highest peaks (worst case).
    A plain cp is timed before each round too, so the cp baseline spans the same period."""
    rounds = []
    for i in range(repeats):
        cp_times.append(_cp_once(src / "adapter_model.safetensors", root, prime))
        r = _round(store, src=src, work=root / f"{store}-{i}", s3_part_mib=s3_part_mib,
                   with_overhead=(i == 0), prime=prime)
        rounds.append(r)
        print(f"[{store}] round {i + 1}/{repeats}: push {r['push']['seconds']:.2f}s "
              f"pull {r['pull']['seconds']:.2f}s", file=sys.stderr)
    first = rounds[0]
    push_s = min(r["push"]["seconds"] for r in rounds)
    pull_s = min(r["pull"]["seconds"] for r in rounds)
    result: dict[str, Any] = {
        "store": store,
        "repeats": repeats,
        "server_env": first["server_env"],
        "cli_overhead": first["cli_overhead"],
        "push_seconds": push_s,
        "pull_seconds": pull_s,
        "push_seconds_all": [r["push"]["seconds"] for r in rounds],
        "pull_seconds_all": [r["pull"]["seconds"] for r in rounds],
        "pulled_identical": all(r["pulled_identical"] for r in rounds),
    }
    for phase in ("push", "pull"):
        for key in ("client_peak_rss_mib", "client_sampled_peak_rss_mib", "server_peak_rss_mib",
                    "server_sampled_peak_rss_mib"):
            result[f"{phase}_{key}"] = max(r[phase][key] for r in rounds)
    for key in ("server_idle_rss_mib", "server_lifetime_peak_rss_mib",
                "moto_sampled_peak_rss_mib", "moto_lifetime_peak_rss_mib"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            result[key] = max(values)
    result["server_peak_rss_source"] = first["push"]["server_peak_rss_source"]
    result["push_output"] = first["push"]["output"]
    overhead = result["cli_overhead"]["seconds_median"]
    result["push_mib_s"] = round(size / MiB / push_s, 1)
    result["pull_mib_s"] = round(size / MiB / pull_s, 1)
    result["push_pull_mib_s"] = round(2 * size / MiB / (push_s + pull_s), 1)
    net = push_s + pull_s - 2 * overhead
    result["push_pull_mib_s_excl_cli_startup"] = round(2 * size / MiB / net, 1) if net > 0 else None
    peaks = [result[f"{phase}_{who}_peak_rss_mib"]
             for phase in ("push", "pull") for who in ("server", "client")]
    result["rss_pass"] = all(p is not None and p < RSS_LIMIT / MiB for p in peaks)
    return result


def run(size_mib: int = 1024, stores: list[str] | None = None, workdir: Path | None = None,
        cp_repeats: int = 3, s3_part_mib: int | None = None, results_name: str | None = None,
        repeats: int = 2, prime_copies: int = 2) -> dict[str, Any]:
    stores = stores or ["local", "s3"]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="adapter-registry-bench-", dir=workdir))
    try:
        shape = shape_for_size(size_mib)
        src = root / "src"
        t = time.perf_counter()
        write_lora_adapter(src, shape, seed=os.urandom(16))
        build_s = time.perf_counter() - t
        os.sync()
        size = _dir_bytes(src)
        file_size = (src / "adapter_model.safetensors").stat().st_size
        # An independent reader agrees the file is valid safetensors.
        from safetensors import safe_open

        with safe_open(str(src / "adapter_model.safetensors"), "np") as f:
            assert len(list(f.keys())) == 2 * shape.layers * len(shape.modules)

        print(f"adapter: {file_size / MiB:.1f} MiB safetensors ({shape.layers} layers, "
              f"r={shape.r}, hidden={shape.hidden}, {shape.dtype}) in {root}", file=sys.stderr)
        prime = Primer(src / "adapter_model.safetensors", root / "prime",
                       prime_copies * file_size, enabled=prime_copies > 0)
        baselines = _cp_baseline(src / "adapter_model.safetensors", root, cp_repeats, prime)
        baselines["sha256_seconds"] = round(_hash_baseline(src / "adapter_model.safetensors"), 4)
        baselines["sha256_mib_s"] = round(file_size / MiB / baselines["sha256_seconds"], 1)
        print(f"cp: {baselines['cp_seconds_median']:.3f}s; cp+fsync: "
              f"{baselines['cp_fsync_seconds_median']:.3f}s; sha256: "
              f"{baselines['sha256_seconds']:.3f}s", file=sys.stderr)

        cp_times: list[float] = list(baselines["cp_seconds"])
        results: dict[str, Any] = {}
        for store in stores:
            print(f"[{store}] push + pull ...", file=sys.stderr)
            results[store] = _run_store(store, src=src, root=root, size=file_size,
                                        s3_part_mib=s3_part_mib, repeats=repeats,
                                        cp_times=cp_times, prime=prime)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    # The cp baseline: median of every plain cp of this run (up front and before each round).
    cp_s = statistics.median(cp_times)
    baselines["cp_seconds_all"] = [round(x, 4) for x in cp_times]
    baselines["cp_seconds_median"] = round(cp_s, 4)
    baselines["cp_mib_s"] = round(file_size / MiB / cp_s, 1)
    baselines["cp_fsync_mib_s"] = round(file_size / MiB / baselines["cp_fsync_seconds_median"], 1)
    for store, r in results.items():
        r["ratio_to_cp"] = round(r["push_pull_mib_s"] / baselines["cp_mib_s"], 3)
        r["ratio_to_cp_fsync"] = round(r["push_pull_mib_s"] / baselines["cp_fsync_mib_s"], 3)
        print(f"[{store}] push {r['push_seconds']:.2f}s pull {r['pull_seconds']:.2f}s "
              f"-> {r['push_pull_mib_s']} MiB/s; cp {baselines['cp_mib_s']} MiB/s; ratio "
              f"{r['ratio_to_cp']} (to cp+fsync {r['ratio_to_cp_fsync']}); server peak "
              f"{r['push_server_peak_rss_mib']}/{r['pull_server_peak_rss_mib']} MiB, client peak "
              f"{r['push_client_peak_rss_mib']}/{r['pull_client_peak_rss_mib']} MiB",
              file=sys.stderr)

    targets: dict[str, Any] = {}
    for store, r in results.items():
        targets[f"{store}_rss_under_250mib"] = r["rss_pass"]
    if "local" in results:
        ratio = results["local"]["ratio_to_cp"]
        targets["local_throughput_ratio_at_least_0.40"] = ratio >= RATIO_TARGET
    data = {
        "benchmark": "transfer",
        "machine": {**machine_info(), "load_average_at_start": load_at_start},
        "parameters": {
            "size_mib": size_mib,
            "file_bytes": file_size,
            "adapter_bytes": size,
            "lora": {"layers": shape.layers, "hidden": shape.hidden, "r": shape.r,
                     "dtype": shape.dtype, "modules": list(shape.modules)},
            "stores": stores,
            "server_command": SERVER_CMD,
            "client_command": [CLI],
            "cp_repeats": cp_repeats,
            "repeats": repeats,
            "s3_part_mib": s3_part_mib,
            "prime": prime.describe(),
            "build_seconds": round(build_s, 3),
            "rss_limit_mib": RSS_LIMIT // MiB,
            "ratio_target": RATIO_TARGET,
            "definitions": {
                "push_pull_mib_s": "2 * file_bytes / (push_s + pull_s), CLI wall times, "
                                   "fastest push and fastest pull of `repeats` rounds",
                "cp_mib_s": "file_bytes / median of all plain cp runs, same disk, same run",
                "peak_rss": "highest over the rounds",
                "ratio_to_cp": "push_pull_mib_s / cp_mib_s",
            },
        },
        "baselines": baselines,
        "results": results,
        "targets": targets,
        "pass": all(targets.values()),
    }
    path = write_results(results_name or f"transfer_{size_mib}mib", data)
    print(f"wrote {path}", file=sys.stderr)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="adapter size (default 1024)")
    p.add_argument("--stores", default="local,s3", help="comma-separated: local,s3")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the files go (default: the system temp dir)")
    p.add_argument("--cp-repeats", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2,
                   help="push+pull rounds per store, each on a fresh server (default 2)")
    p.add_argument("--s3-part-mib", type=int, default=None,
                   help="REGISTRY_S3_PART_BYTES for the server, in MiB (default: the server's)")
    p.add_argument("--results-name", default=None,
                   help="results file name without .json (default transfer_<size>mib)")
    p.add_argument("--prime-copies", type=int, default=2,
                   help="before every timed phase write and delete this many copies of the file "
                        "(untimed; see bench.common.Primer); 0 turns priming off (default 2)")
    args = p.parse_args(argv)
    data = run(args.size_mib, [s.strip() for s in args.stores.split(",") if s.strip()],
               args.workdir, args.cp_repeats, args.s3_part_mib, args.results_name,
               args.repeats, args.prime_copies)
    for name, ok in data["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if data["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
