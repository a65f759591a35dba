"""Test helpers for the validation worker: worker subprocesses, adapters that must fail, suites,
and an independent perplexity computed with transformers + peft alone."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
# Tiny models gain nothing from more threads, and on a busy 2-core machine OpenMP threads
# waiting on each other made one forward pass 80x slower (268 ms instead of 3.4 ms).
TORCH_THREADS = 1
PPL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Adapters are small: a few megabytes next to a model of many gigabytes.",
    "def add(a, b):\n    return a + b",
    "x",
]


def worker_env(home: Path, *, url: bool, lease_seconds: int | None = None) -> dict[str, str]:
    """The environment of a worker process. With ``url`` it gets no database or storage
    settings at all: the registry's URL is all a remote worker has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REGISTRY_", "AWS_"))}
    env.update({"REGISTRY_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(TORCH_THREADS)})
    if lease_seconds is not None:
        env["REGISTRY_JOB_LEASE_SECONDS"] = str(lease_seconds)
    return env


def worker_cmd(*args: str, url: str | None = None) -> list[str]:
    base = [sys.executable, "-m", "cli.main"]
    if url is not None:
        base += ["--url", url]
    return [*base, "--json", "worker", *args]


def run_worker(home: Path, *args: str, url: str | None = None,
               timeout: float = 600) -> dict:
    """``worker --once`` to the end; returns its JSON summary (``{"worker", "jobs"}``)."""
    proc = subprocess.run(worker_cmd("--once", *args, url=url), cwd=REPO,
                          env=worker_env(home, url=url is not None), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def start_worker(home: Path, *args: str, url: str | None = None,
                 lease_seconds: int | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(worker_cmd(*args, url=url), cwd=REPO,
                            env={**worker_env(home, url=url is not None,
                                              lease_seconds=lease_seconds), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def variant(src: Path, dest: Path, edit: Callable[[dict[str, torch.Tensor]], None],
            config_edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of adapter ``src`` with its tensors (and config) edited."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    if config_edit is not None:
        config = json.loads((dest / "adapter_config.json").read_text())
        config_edit(config)
        (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def with_nan(tensors: dict[str, torch.Tensor]) -> None:
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")


def zero_lora_b(tensors: dict[str, torch.Tensor]) -> None:
    for key in tensors:
        if "lora_B" in key:
            tensors[key] = torch.zeros_like(tensors[key])


def add_unused_module(tensors: dict[str, torch.Tensor]) -> None:
    """A modules_to_save tensor for a module the model does not have: the static check cannot
    tell (the name fits PEFT's rules), PEFT drops it on load."""
    tensors["base_model.model.score.weight"] = torch.ones(2, 32)


def save_unused_module(config: dict) -> None:
    config["modules_to_save"] = ["score"]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


@torch.no_grad()
def reference_perplexity(base_dir: Path, adapter_dir: Path, texts: list[str]) -> float:
    """Perplexity as transformers computes a causal LM's loss, on base + adapter by peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32),
        str(adapter_dir)).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        predicted = ids.shape[1] - 1
        if predicted < 1:
            continue
        total += float(model(input_ids=ids, labels=ids).loss) * predicted
        count += predicted
    return math.exp(total / count)
