"""Validation throughput: 20 LoRA versions on one ~0.5B-parameter Llama-style base, one worker,
with the base kept loaded (``--max-cached-bases 1``) and loaded per job (``0``), in one run.

``python -m bench.bench_validate [--versions 20] [--texts 32] [--small] [--device cpu]``

The base is built here with random weights (bfloat16 on disk, ~0.94 GB; the worker computes in
float32 on the CPU) plus a character-level tokenizer; every version is a LoRA (r=8 on q_proj and
v_proj) with its own random weights. The server is ``adapter-registry server`` (embedded SQLite +
local store) and the worker ``adapter-registry --url URL worker --once``, each a subprocess;
the worker's peak RSS is the kernel's (wait4). Each mode validates all versions with the smoke
checks and a 32-text perplexity suite (its own suite per mode, so each computes the base's
perplexity once) and starts with an empty file cache. Results: bench/results/validate.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    CLI,
    REPO,
    base_env,
    machine_info,
    mib,
    registry_server,
    run_measured,
    write_results,
)

STAGES = ("fetch_s", "base_load_s", "attach_s", "eval_s", "detach_s")
WORDS = ["adapter", "registry", "validates", "versions", "on", "their", "base", "model", "with",
         "smoke", "checks", "and", "a", "perplexity", "suite", "before", "release"]


def build_base(directory: Path, *, hidden: int, layers: int, intermediate: int, vocab: int,
               heads: int) -> int:
    """A Llama-style checkpoint with random bfloat16 weights; returns its parameter count."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.peft_factory import save_char_tokenizer

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, vocab_size=vocab,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         torch_dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(directory)
    save_char_tokenizer(directory)
    return sum(t.numel() for t in tensors.values())


def build_lora(directory: Path, *, seed: int, hidden: int, layers: int, rank: int = 8) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1000 + seed)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{stem}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.02
            tensors[f"{stem}.lora_B.weight"] = torch.randn(hidden, rank, generator=gen) * 0.02
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none",
        "base_model_name_or_path": "bench-llama"}))


def texts(count: int, chars: int) -> list[str]:
    out = []
    for i in range(count):
        words, line = WORDS[i % len(WORDS):] + WORDS, f"{i}:"
        for w in words:
            if len(line) + 1 + len(w) > chars:
                break
            line += " " + w
        out.append(line)
    return out


def cli(url: str, *args: str, env: dict[str, str]) -> Any:
    measured = run_measured([CLI, "--url", url, "--json", *args], env=env).check()
    return measured.json()


def run_mode(url: str, env: dict[str, str], *, cached: int, versions: int, suite: str,
             workdir: Path, device: str) -> dict[str, Any]:
    job_ids = [cli(url, "validate", f"bench-bot:{v}", "--suite", suite, env=env)["job"]
               for v in range(1, versions + 1)]
    worker = run_measured(
        [CLI, "--url", url, "--json", "worker", "--once", "--device", device,
         "--max-cached-bases", str(cached), "--cache-dir", str(workdir / f"cache-{cached}")],
        env=env, timeout=7200).check()
    jobs = [httpx.get(f"{url}/api/v1/jobs/{j}", timeout=60).json() for j in job_ids]
    bad = [j for j in jobs if j["verdict"] != "validated"]
    if bad:
        raise RuntimeError(f"{len(bad)} validation(s) did not pass: {bad[0]['error']}")
    durations = [(_ts(j["finished_at"]) - _ts(j["started_at"])) for j in jobs]
    rest = jobs[1:]  # the first job of a mode fetches the base and computes its perplexity
    breakdown = {s: round(statistics.median(j["timings"][s] for j in rest), 3) for s in STAGES}
    return {
        "max_cached_bases": cached,
        "jobs": len(jobs),
        "worker_wall_s": round(worker.seconds, 1),
        "jobs_per_min_wall": round(60 * len(jobs) / worker.seconds, 2),
        "jobs_sum_s": round(sum(durations), 1),
        "jobs_per_min_jobs": round(60 * len(jobs) / sum(durations), 2),
        "jobs_per_min_after_first": round(60 * len(rest) / sum(durations[1:]), 2),
        "median_job_s_after_first": round(statistics.median(durations[1:]), 3),
        "median_breakdown_after_first": breakdown,
        "first_job": {s: round(jobs[0]["timings"][s], 3) for s in STAGES},
        "base_cache_hits": sum(1 for j in jobs if j["base_cache_hit"]),
        "worker_peak_rss_mib": mib(worker.peak_rss),
        "device": jobs[0]["result"]["device"],
        "dtype": jobs[0]["result"]["dtype"],
    }


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--versions", type=int, default=20)
    p.add_argument("--texts", type=int, default=32, help="perplexity suite size")
    p.add_argument("--text-chars", type=int, default=24, help="characters per text (≈ tokens)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the worker (default: torch's own)")
    p.add_argument("--small", action="store_true", help="a tiny base: checks the harness only")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--name", default=None, help="results file name (default: validate)")
    args = p.parse_args(argv)
    if args.small:
        args.hidden, args.layers, args.intermediate, args.vocab, args.heads = 64, 2, 128, 256, 4
        args.versions, args.texts = min(args.versions, 4), min(args.texts, 8)
    root = Path(tempfile.mkdtemp(prefix="bench-validate-", dir=args.workdir))
    try:
        start = time.perf_counter()
        params = build_base(root / "base", hidden=args.hidden, layers=args.layers,
                            intermediate=args.intermediate, vocab=args.vocab, heads=args.heads)
        for v in range(1, args.versions + 1):
            build_lora(root / f"lora-{v}", seed=v, hidden=args.hidden, layers=args.layers)
        suite = root / "ppl.jsonl"
        suite.write_text("".join(json.dumps({"text": t}) + "\n"
                                 for t in texts(args.texts, args.text_chars)))
        build_s = time.perf_counter() - start
        print(f"built a {params / 1e9:.2f}B-parameter base and {args.versions} LoRAs "
              f"in {build_s:.0f} s", flush=True)
        # PYTHONPATH: the subprocesses run this checkout's code, whichever install the venv has.
        extra = {"REGISTRY_AUTO_VALIDATE": "0", "PYTHONPATH": str(REPO)}
        if args.threads:
            extra["OMP_NUM_THREADS"] = str(args.threads)
        env = base_env(REGISTRY_HOME=str(root / "home"), **extra)
        modes = []
        with registry_server(root / "home", env_extra=extra) as server:
            url = server.url
            cli(url, "base", "register", "bench-llama", str(root / "base"), env=env)
            for v in range(1, args.versions + 1):
                cli(url, "push", "bench-bot", str(root / f"lora-{v}"), "--base", "bench-llama",
                    env=env)
            for cached in (1, 0):
                name = f"ppl-cached-{cached}"
                cli(url, "suite", "add", name, str(suite), "--kind", "perplexity", env=env)
                modes.append(run_mode(url, env, cached=cached, versions=args.versions,
                                      suite=name, workdir=root, device=args.device))
                print(json.dumps(modes[-1], indent=2), flush=True)
        warm, cold = modes
        result = {
            "benchmark": "validate",
            "machine": machine_info(),
            "params": {"base_parameters": params, "hidden": args.hidden, "layers": args.layers,
                       "intermediate": args.intermediate, "vocab": args.vocab,
                       "base_dtype_on_disk": "bfloat16", "versions": args.versions,
                       "lora": "r=8 on q_proj, v_proj", "perplexity_texts": args.texts,
                       "text_chars": args.text_chars, "device": args.device,
                       "omp_num_threads": args.threads, "small": args.small},
            "modes": {"max_cached_bases_1": warm, "max_cached_bases_0": cold},
            "warm_vs_cold": {
                "speedup_jobs_per_min_after_first": round(
                    warm["jobs_per_min_after_first"] / cold["jobs_per_min_after_first"], 2),
                "base_load_s_saved_per_job": round(
                    cold["median_breakdown_after_first"]["base_load_s"]
                    - warm["median_breakdown_after_first"]["base_load_s"], 3),
            },
        }
        path = write_results(args.name or ("validate_small" if args.small else "validate"),
                             result)
        print(f"results: {path}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
