"""Merged export of a ~1B-parameter Llama + LoRA: our streaming merge vs PEFT vs a plain copy.

    python -m bench.bench_export [--small] [--repeats N] [--workdir DIR] [--keep]

Generates a Llama-style checkpoint (TinyLlama-1.1B shapes: hidden 2048, 22 layers, intermediate
5632, vocab 32000, 4 KV heads; float16, 4 shards; random weights written shard by shard, never
held in memory) and a rank-16 LoRA on every linear layer (q, k, v, o, gate, up, down). Then, in
the same run, each in its own process:

    ours  merge_to_dir(...)                                    (registry.merge.stream)
    peft  AutoModelForCausalLM.from_pretrained + PeftModel.from_pretrained
          + merge_and_unload() + save_pretrained               (what users do today)
    cp    cp -r of the base directory                          (the I/O floor)

Targets (issue): our peak RSS <= 30% of PEFT's; our wall time <= 60% of PEFT's and <= 2.5x the
plain copy. Peak RSS is the kernel's ru_maxrss of the step's process (wait4); wall time is the
whole process, interpreter start, imports and exit included (the ours step exits the way the
CLI does: registry.clientside.process.exit_process skips torch's interpreter teardown).
Every step starts
after os.sync() with the base in the page cache (it was just written) and on freshly recycled
pages (bench.common.Primer, untimed), and writes its output to the same disk; the median of
--repeats runs is reported. Both merged outputs are compared
tensor by tensor (they must agree to fp16 rounding). Results: bench/results/export.json
(export-small.json for --small).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, Primer, base_env, machine_info, mib, run_measured, write_results

RSS_RATIO_TARGET = 0.30
PEFT_TIME_TARGET = 0.60
CP_TIME_TARGET = 2.5


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    shards: int = 4
    rank: int = 16

    def tensors(self) -> list[tuple[str, list[int]]]:
        """Every tensor of LlamaForCausalLM in module order."""
        h, i = self.hidden, self.intermediate
        kv = self.kv_heads * (h // self.heads)
        out: list[tuple[str, list[int]]] = [("model.embed_tokens.weight", [self.vocab, h])]
        for n in range(self.layers):
            p = f"model.layers.{n}"
            out += [
                (f"{p}.self_attn.q_proj.weight", [h, h]),
                (f"{p}.self_attn.k_proj.weight", [kv, h]),
                (f"{p}.self_attn.v_proj.weight", [kv, h]),
                (f"{p}.self_attn.o_proj.weight", [h, h]),
                (f"{p}.mlp.gate_proj.weight", [i, h]),
                (f"{p}.mlp.up_proj.weight", [i, h]),
                (f"{p}.mlp.down_proj.weight", [h, i]),
                (f"{p}.input_layernorm.weight", [h]),
                (f"{p}.post_attention_layernorm.weight", [h]),
            ]
        out += [("model.norm.weight", [h]), ("lm_head.weight", [self.vocab, h])]
        return out

    @property
    def params(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())


FULL = ModelShape(hidden=2048, layers=22, intermediate=5632, vocab=32000, heads=32, kv_heads=4)
SMALL = ModelShape(hidden=256, layers=4, intermediate=688, vocab=1000, heads=8, kv_heads=2)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- generating the inputs --------------------------------------------------------------------


def write_base(directory: Path, shape: ModelShape) -> int:
    """Write config, generation config and `shape.shards` float16 shards; returns total bytes.

    One random pool (64 MiB, std 0.02) is cycled through, so memory stays at the pool size.
    """
    import torch

    directory.mkdir(parents=True)
    tensors = shape.tensors()
    total = sum(math.prod(s) * 2 for _, s in tensors)
    per_shard = total / shape.shards
    groups: list[list[tuple[str, list[int]]]] = [[]]
    acc = 0
    for name, dims in tensors:
        if groups[-1] and acc + math.prod(dims) * 2 > per_shard * len(groups) and (
            len(groups) < shape.shards
        ):
            groups.append([])
        groups[-1].append((name, dims))
        acc += math.prod(dims) * 2
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(32 * 1024 * 1024, generator=gen) * 0.02).half()
    pool_bytes = pool.view(torch.uint8).numpy().data.cast("B")
    cursor = 0
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dims in group:
            n = math.prod(dims) * 2
            header[name] = {"dtype": "F16", "shape": dims, "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with (directory / fname).open("wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            left = offset
            while left:
                n = min(left, len(pool_bytes) - cursor)
                f.write(pool_bytes[cursor : cursor + n])
                cursor = (cursor + n) % (len(pool_bytes) - 1024)
                left -= n
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2)
    )
    return total


def write_adapter(directory: Path, shape: ModelShape, base: Path) -> None:
    """A rank-`shape.rank` LoRA (float32, non-zero B) on every linear layer."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for name, dims in shape.tensors():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in LINEAR:
            continue
        out_f, in_f = dims
        stem = f"base_model.model.{module}"
        tensors[f"{stem}.lora_A.weight"] = torch.randn(shape.rank, in_f, generator=gen) * 0.01
        tensors[f"{stem}.lora_B.weight"] = torch.randn(out_f, shape.rank, generator=gen) * 0.01
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": shape.rank,
        "lora_alpha": 2 * shape.rank,
        "lora_dropout": 0.0,
        "target_modules": list(LINEAR),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": str(base),
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))


# --- the measured steps (each runs in its own process) ----------------------------------------


def step_ours(base: Path, adapter: Path, out: Path, max_shard_bytes: int) -> dict[str, Any]:
    from registry.formats.peft import parse_adapter_config
    from registry.merge import LocalDirFiles, merge_to_dir

    t = time.perf_counter()
    result = merge_to_dir(
        base=LocalDirFiles(base),
        adapter_config=parse_adapter_config((adapter / "adapter_config.json").read_bytes()),
        adapter_weights=adapter / "adapter_model.safetensors",
        out_dir=out,
        max_shard_bytes=max_shard_bytes,
    )
    return {
        "inner_seconds": time.perf_counter() - t,
        "shards": result.shards,
        "merged_modules": result.merged_modules,
        "dtype": result.dtype,
    }


def step_floor(base: Path, out: Path) -> dict[str, Any]:
    """The least an export that reports sha256 digests costs: an in-kernel copy of every file
    (copy_file_range, as cp does) plus sha256 of the bytes, one file per core (sha256 releases
    the GIL). No merge, no torch."""
    import hashlib
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    def copy_and_hash(src: Path) -> str:
        n = src.stat().st_size
        with src.open("rb") as f, (out / src.name).open("wb") as g:
            done = 0
            while done < n:
                done += os.copy_file_range(f.fileno(), g.fileno(), n - done, done, done)
            if n == 0:
                return hashlib.sha256().hexdigest()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return hashlib.sha256(mm).hexdigest()

    t = time.perf_counter()
    out.mkdir()
    files = sorted(base.iterdir(), key=lambda p: -p.stat().st_size)  # biggest first
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = dict(zip((f.name for f in files), pool.map(copy_and_hash, files),
                           strict=True))
    return {"inner_seconds": time.perf_counter() - t, "files": len(digests)}


def step_peft(base: Path, adapter: Path, out: Path, max_shard_bytes: int) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
    peft_model = PeftModel.from_pretrained(model, adapter)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out, max_shard_size=max_shard_bytes)
    return {"inner_seconds": time.perf_counter() - t}


def _compare(ours: Path, theirs: Path, names: list[str]) -> dict[str, float]:
    """Max abs difference per tensor between two merged outputs (fp16 rounding expected)."""
    from safetensors import safe_open

    def where(directory: Path) -> dict[str, str]:
        index = directory / "model.safetensors.index.json"
        if index.exists():
            return dict(json.loads(index.read_text())["weight_map"])
        return dict.fromkeys(names, "model.safetensors")

    a_map, b_map = where(ours), where(theirs)
    out = {}
    for name in names:
        with safe_open(ours / a_map[name], "pt") as fa, safe_open(theirs / b_map[name], "pt") as fb:
            a, b = fa.get_tensor(name).float(), fb.get_tensor(name).float()
        out[name] = float((a - b).abs().max())
    return out


# --- driver -----------------------------------------------------------------------------------


def _self_peak_rss() -> int:
    import resource

    # The floor of every child's ru_maxrss (see run()); reported so it can be checked small.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _measure(argv: list[str], out: Path, prime: Primer) -> dict[str, Any]:
    prime()
    os.sync()
    m = run_measured(argv, env=base_env(), cwd=REPO, timeout=3600).check()
    info: dict[str, Any] = {"seconds": round(m.seconds, 3), "peak_rss_bytes": m.peak_rss,
                            "peak_rss_mib": mib(m.peak_rss),
                            "sampled_peak_rss_mib": mib(m.sampled_peak_rss)}
    if m.stdout.strip().startswith("{"):
        info.update(json.loads(m.stdout))
    info["output_bytes"] = _dir_bytes(out)
    return info


def run(*, small: bool, repeats: int, workdir: Path | None, keep: bool, prime_copies: int = 2
        ) -> dict[str, Any]:
    shape = SMALL if small else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=workdir))
    base, adapter = work / "base", work / "adapter"
    me = [sys.executable, "-m", "bench.bench_export"]
    try:
        # Generated in a child too: a forked child starts with its parent's peak RSS
        # (ru_maxrss survives exec), so this driver must never grow (it never imports torch).
        t = time.perf_counter()
        gen = run_measured([*me, "--step", "generate", "--base", str(base), "--adapter",
                            str(adapter), *(["--small"] if small else [])],
                           env=base_env(), cwd=REPO, timeout=3600).check()
        base_bytes = int(gen.json()["base_bytes"])
        gen_seconds = time.perf_counter() - t
        max_shard = math.ceil(base_bytes / shape.shards) + 64 * 1024 * 1024
        common = ["--base", str(base), "--adapter", str(adapter), "--max-shard", str(max_shard)]
        # Every step writes a new copy of the base: each starts on freshly recycled pages.
        shard = max(base.glob("*.safetensors"), key=lambda p: p.stat().st_size)
        prime = Primer(shard, work / "prime", prime_copies * base_bytes,
                       enabled=prime_copies > 0)
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "peft": [], "cp": [], "floor": []}
        comparison: dict[str, float] = {}
        for i in range(repeats):
            for step in ("cp", "floor", "ours", "peft"):
                out = work / f"out-{step}"
                argv = (["cp", "-r", str(base), str(out)] if step == "cp"
                        else [*me, "--step", step, *common, "--out", str(out)])
                runs[step].append(_measure(argv, out, prime))
                print(f"[{i + 1}/{repeats}] {step}: {runs[step][-1]['seconds']:.2f}s, "
                      f"peak RSS {runs[step][-1]['peak_rss_mib']} MiB", flush=True)
                if step in ("cp", "floor"):
                    shutil.rmtree(out)
            if i == 0:
                names = [n for n, _ in shape.tensors()]
                picked = [names[1], names[7], names[-3], names[-5], names[-1]]
                cmp = run_measured([*me, "--step", "compare", "--base", str(work / "out-ours"),
                                    "--out", str(work / "out-peft"), "--names", *picked],
                                   env=base_env(), cwd=REPO, timeout=3600).check()
                comparison = cmp.json()
            shutil.rmtree(work / "out-ours")
            shutil.rmtree(work / "out-peft")

        def med(step: str, key: str) -> float:
            return float(statistics.median(r[key] for r in runs[step]))

        ours_s, peft_s, cp_s = med("ours", "seconds"), med("peft", "seconds"), med("cp", "seconds")
        ours_rss, peft_rss = med("ours", "peak_rss_bytes"), med("peft", "peak_rss_bytes")
        ratios = {
            "rss_ours_over_peft": round(ours_rss / peft_rss, 3),
            "time_ours_over_peft": round(ours_s / peft_s, 3),
            "time_ours_over_cp": round(ours_s / cp_s, 3),
            "time_floor_over_cp": round(med("floor", "seconds") / cp_s, 3),
            "time_ours_over_floor": round(ours_s / med("floor", "seconds"), 3),
        }
        targets = {
            f"peak RSS <= {RSS_RATIO_TARGET:.0%} of PEFT's":
                ratios["rss_ours_over_peft"] <= RSS_RATIO_TARGET,
            f"wall time <= {PEFT_TIME_TARGET:.0%} of PEFT's":
                ratios["time_ours_over_peft"] <= PEFT_TIME_TARGET,
            f"wall time <= {CP_TIME_TARGET}x cp -r": ratios["time_ours_over_cp"] <= CP_TIME_TARGET,
        }
        results = {
            "benchmark": "export",
            "machine": machine_info(),
            "model": {**asdict(shape), "params": shape.params, "base_bytes": base_bytes,
                      "dtype": "float16", "max_shard_bytes": max_shard},
            "adapter": {"peft_type": "LORA", "r": shape.rank, "target_modules": list(LINEAR)},
            "generate_seconds": round(gen_seconds, 2),
            "repeats": repeats,
            "prime": prime.describe(),
            "median": {
                "ours": {"seconds": ours_s, "peak_rss_mib": mib(ours_rss)},
                "peft": {"seconds": peft_s, "peak_rss_mib": mib(peft_rss)},
                "cp": {"seconds": cp_s, "peak_rss_mib": mib(med("cp", "peak_rss_bytes"))},
                "floor": {"seconds": med("floor", "seconds"),
                          "peak_rss_mib": mib(med("floor", "peak_rss_bytes"))},
            },
            "driver_peak_rss_mib": mib(_self_peak_rss()),
            "ratios": ratios,
            "targets": targets,
            "pass": all(targets.values()),
            "max_abs_diff_ours_vs_peft": comparison,
            "runs": runs,
        }
        write_results("export-small" if small else "export", results)
        return results
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny model: a smoke run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None, help="where to generate (same disk)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--prime-copies", type=int, default=2,
                   help="before every step write and delete this many times the base's size "
                        "(untimed; see bench.common.Primer); 0 turns priming off (default 2)")
    p.add_argument("--step", choices=("generate", "ours", "peft", "compare", "floor"),
                   help=argparse.SUPPRESS)
    p.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--max-shard", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step == "generate":
        shape = SMALL if args.small else FULL
        base_bytes = write_base(args.base, shape)
        write_adapter(args.adapter, shape, args.base)
        print(json.dumps({"base_bytes": base_bytes}))
        return 0
    if args.step == "floor":
        print(json.dumps(step_floor(args.base, args.out)))
        return 0
    if args.step == "compare":
        print(json.dumps(_compare(args.base, args.out, args.names)))
        return 0
    if args.step == "ours":
        print(json.dumps(step_ours(args.base, args.adapter, args.out, args.max_shard)))
        # Ends the way `adapter-registry export` ends (registry.clientside.process.exit_process).
        from registry.clientside.process import exit_process

        exit_process(0)
    if args.step == "peft":
        print(json.dumps(step_peft(args.base, args.adapter, args.out, args.max_shard)))
        return 0
    results = run(small=args.small, repeats=args.repeats, workdir=args.workdir, keep=args.keep,
                  prime_copies=args.prime_copies)
    print(json.dumps({"median": results["median"], "ratios": results["ratios"],
                      "max_abs_diff_ours_vs_peft": results["max_abs_diff_ours_vs_peft"]},
                     indent=2))
    for name, ok in results["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if results["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
