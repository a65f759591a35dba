"""Static compatibility benchmarks.

1. Header-only: checking one adapter against a 2 GiB base and against a 20 MiB base reads only
   safetensors headers; bytes read and time are reported for both (they must be close).
2. Query: with 10,000 adapter versions over 5 base models on PostgreSQL, `compat --base B` over
   HTTP (GET /api/v1/compat?base=B), median of 20 runs, target < 200 ms.

Run: python -m bench.bench_compat [--versions N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MiB,
    base_env,
    machine_info,
    postgres_database,
    registry_server,
    write_results,
)

HIDDEN_2G = 4096


class CountingFiles:
    """FileAccess over a directory that counts the bytes it hands out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bytes_read = 0
        self.reads = 0

    def size(self, path: str) -> int:
        return (self.root / path).stat().st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        with (self.root / path).open("rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        self.bytes_read += len(data)
        self.reads += 1
        return data


def write_llama_like_base(directory: Path, *, hidden: int, layers: int, vocab: int) -> int:
    """A Llama-shaped checkpoint: real header, F16 data region written as zeros, sparse on disk.

    The data bytes are never read by a static check, so their content does not matter; the file
    has the full logical size a real checkpoint of these shapes has.
    """
    directory.mkdir(parents=True, exist_ok=True)
    inter = hidden * 2
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, hidden],
                                    "lm_head.weight": [vocab, hidden],
                                    "model.norm.weight": [hidden]}
    for i in range(layers):
        p = f"model.layers.{i}"
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}.self_attn.{m}.weight"] = [hidden, hidden]
        shapes[f"{p}.mlp.gate_proj.weight"] = [inter, hidden]
        shapes[f"{p}.mlp.up_proj.weight"] = [inter, hidden]
        shapes[f"{p}.mlp.down_proj.weight"] = [hidden, inter]
        shapes[f"{p}.input_layernorm.weight"] = [hidden]
        shapes[f"{p}.post_attention_layernorm.weight"] = [hidden]
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(shapes):
        n = 2
        for d in shapes[name]:
            n *= d
        header[name] = {"dtype": "F16", "shape": shapes[name], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = directory / "model.safetensors"
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": vocab, "tie_word_embeddings": False,
    }))
    return path.stat().st_size


def adapter_for(hidden: int, layers: int, *, r: int = 8) -> tuple[Any, dict[str, Any]]:
    from registry.formats import TensorInfo, parse_adapter_config

    config = parse_adapter_config(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }).encode())
    tensors = {}
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{stem}.lora_A.weight"] = TensorInfo("F16", (r, hidden))
            tensors[f"{stem}.lora_B.weight"] = TensorInfo("F16", (hidden, r))
    return config, tensors


def header_only(work: Path) -> dict[str, Any]:
    from registry.compat.manifest import base_manifest
    from registry.compat.rules import check_compatibility
    from registry.formats.checkpoint import read_checkpoint

    # Same layer count, so both headers list the same tensors: only the weight bytes differ.
    cases = {"2GiB": (HIDDEN_2G, 5, 32000), "20MiB": (256, 5, 16000)}
    out: dict[str, Any] = {}
    for label, (hidden, layers, vocab) in cases.items():
        d = work / f"base-{label}"
        size = write_llama_like_base(d, hidden=hidden, layers=layers, vocab=vocab)
        files = CountingFiles(d)
        config, tensors = adapter_for(hidden, layers)
        start = time.perf_counter()
        checkpoint = read_checkpoint(["config.json", "model.safetensors"], files,
                                     max_header_bytes=100 * MiB, max_config_bytes=MiB)
        manifest = base_manifest(checkpoint.config, checkpoint.tensors)
        verdict = check_compatibility(config, tensors, manifest)
        seconds = time.perf_counter() - start
        out[label] = {
            "base_file_bytes": size,
            "bytes_read": files.bytes_read,
            "reads": files.reads,
            "seconds": round(seconds, 5),
            "compatible": verdict.compatible,
        }
    ratio = out["2GiB"]["bytes_read"] / out["20MiB"]["bytes_read"]
    out["bytes_read_ratio_2GiB_vs_20MiB"] = round(ratio, 3)
    out["tensor_bytes_read"] = any(
        out[k]["bytes_read"] > 2 * MiB for k in ("2GiB", "20MiB")
    )
    return out


def seed_registry(url: str, db_url: str, work: Path, versions: int) -> dict[str, Any]:
    """5 bases and ``versions`` versions spread over 5 adapters (one family per base).

    The first version of each family is pushed through the API (real checks, real verdicts
    against all 5 bases). The rest are copies of it made in SQL, verdict rows included: a copy
    has the same manifests, so the registry would compute the same verdicts, and seeding 10,000
    versions through the API would take far longer than the query being measured.
    """
    from registry.client import HttpRegistry
    from registry.clientside.transfer import push, register_base_dir
    from registry.config import Settings

    client = HttpRegistry(url, timeout=600)
    settings = Settings(home=work / "client-home")
    families = [(64, 2), (96, 2), (128, 2), (64, 4), (160, 2)]
    started = time.perf_counter()
    digests: list[tuple[str, dict[str, str]]] = []
    for i, (hidden, layers) in enumerate(families):
        bdir = work / f"seed-base-{i}"
        write_llama_like_base(bdir, hidden=hidden, layers=layers, vocab=512)
        register_base_dir(client, name=f"base-{i}", directory=bdir, settings=settings)
        adir = work / f"seed-adapter-{i}"
        write_adapter_dir(adir, hidden=hidden, layers=layers, base=f"base-{i}")
        first = push(client, name=f"family-{i}", directory=adir, settings=settings,
                     base_model=f"base-{i}")
        digests.append((f"base-{i}", {f.path: f.digest for f in first.version.files}))
    client.close()
    copies = versions // len(families) - 1
    _copy_versions(db_url, copies)
    return {"versions": versions // len(families) * len(families), "bases": len(families),
            "pushed_through_api": len(families), "copied_in_sql": copies * len(families),
            "seed_seconds": round(time.perf_counter() - started, 1)}


def _copy_versions(db_url: str, copies: int) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    version_cols = (
        "status, peft_type, task_type, r, lora_alpha, target_modules, adapter_config, "
        "tensor_manifest, tensor_count, total_size, content_digest, base_model_id, "
        "declared_base_model, parent_id, metadata, git_commit, ci_run_url, created_at, created_by"
    )
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO adapter_versions (adapter_id, version, {version_cols})
            SELECT v.adapter_id, v.version + g.n, {", ".join("v." + c.strip()
                                                             for c in version_cols.split(","))}
            FROM adapter_versions v CROSS JOIN generate_series(1, :copies) AS g(n)
            WHERE v.version = 1
        """), {"copies": copies})
        conn.execute(text("""
            INSERT INTO version_files (version_id, path, blob_id)
            SELECT c.id, f.path, f.blob_id FROM adapter_versions c
            JOIN adapter_versions o ON o.adapter_id = c.adapter_id AND o.version = 1
            JOIN version_files f ON f.version_id = o.id WHERE c.version > 1
        """))
        conn.execute(text("""
            INSERT INTO compatibility (adapter_version_id, base_model_id, compatible, method,
                                       reasons, warnings, serving, checked_at)
            SELECT c.id, k.base_model_id, k.compatible, k.method, k.reasons, k.warnings,
                   k.serving, k.checked_at
            FROM adapter_versions c
            JOIN adapter_versions o ON o.adapter_id = c.adapter_id AND o.version = 1
            JOIN compatibility k ON k.adapter_version_id = o.id WHERE c.version > 1
        """))
        conn.execute(text("UPDATE adapters SET version_counter = :n"), {"n": copies + 1})
        conn.execute(text("ANALYZE"))
    engine.dispose()


def write_adapter_dir(d: Path, *, hidden: int, layers: int, base: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    _, tensors = adapter_for(hidden, layers)
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        n = 2 * tensors[name].numel
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (d / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(offset))
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": base,
    }))


def query_latency(versions: int, runs: int, work: Path) -> dict[str, Any]:
    with postgres_database() as db_url:
        if db_url is None:
            return {"skipped": "PostgreSQL not reachable"}
        env = {"REGISTRY_DATABASE_URL": db_url, "REGISTRY_AUTO_MIGRATE": "true"}
        with registry_server(work / "server-home", env_extra=env) as server:
            seeded = seed_registry(server.url, db_url, work, versions)
            timings: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for b in ("base-0", "base-2"):
                    http.get("/api/v1/compat", params={"base": b}).raise_for_status()  # warm
                    samples = []
                    for _ in range(runs):
                        start = time.perf_counter()
                        r = http.get("/api/v1/compat", params={"base": b})
                        samples.append(time.perf_counter() - start)
                        r.raise_for_status()
                    timings[b] = samples
                    counts[b] = len(r.json())
    medians = {b: round(statistics.median(s) * 1000, 2) for b, s in timings.items()}
    return {
        **seeded,
        "runs": runs,
        "median_ms": medians,
        "p95_ms": {b: round(sorted(s)[int(0.95 * (len(s) - 1))] * 1000, 2)
                   for b, s in timings.items()},
        "results_per_query": counts,
        "target_ms": 200,
        "pass": all(m < 200 for m in medians.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    base_env()  # validates the environment helpers import cleanly
    with tempfile.TemporaryDirectory(prefix="adapter-registry-bench-compat-") as tmp:
        work = Path(tmp)
        results = {
            "benchmark": "compat",
            "machine": machine_info(),
            "parameters": {"versions": args.versions, "runs": args.runs},
            "header_only": header_only(work),
            "query": query_latency(args.versions, args.runs, work),
        }
    path = write_results("compat", results)
    print(json.dumps({"header_only": results["header_only"], "query": results["query"]},
                     indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
