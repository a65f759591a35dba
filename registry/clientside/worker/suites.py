"""Eval suite runners: perplexity, generate, classify (on the cached base with the adapter
attached) and lm-eval (lm-evaluation-harness's HFLM with the adapter as ``peft``).

Perplexity is ``exp(total NLL / predicted tokens)`` over every text, each tokenized as the
base's ``AutoTokenizer`` returns it (special tokens included), with the standard shift (the
logits at position i predict token i + 1), the log-softmax computed in float32.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from registry.clientside.worker.models import LoadedBase, main_output
from registry.evals.suites import lm_eval_data_files
from registry.validation.schemas import SuiteSpec

Check = Callable[[], None]


class SuiteError(Exception):
    """A suite could not run on this adapter (the validation fails with the reason)."""


@dataclass
class SuiteScores:
    metrics: dict[str, float] = field(default_factory=dict)
    n: int = 0
    seconds: float = 0.0


def read_items(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a suite file (checked when the suite was added)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def nll_from_logits(logits: torch.Tensor, ids: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of ``ids[:, 1:]`` under ``logits[:, :-1]``, and its token
    count.

    Args:
        logits: ``[B, T, V]`` (a prompt-learning model's extra leading positions are dropped).
        ids: ``[B, T]`` token ids.
        mask: ``[B, T]``, 1 for a text's tokens and 0 for the padding after them (a batch of
            texts of different lengths, right-padded); None when every position is a token.
    """
    length = ids.shape[1]
    if length < 2:
        return 0.0, 0
    logits = logits[:, -length:].float()
    logprobs = F.log_softmax(logits[:, :-1], dim=-1)
    target = ids[:, 1:].to(logprobs.device)
    picked = logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if mask is None:
        return float(-picked.sum(dtype=torch.float64)), int(target.numel())
    # Right padding: token i + 1 is predicted (and counted) exactly when it is a text's own.
    keep = mask[:, 1:].to(picked.device).bool()
    return float(-picked[keep].sum(dtype=torch.float64)), int(keep.sum())


# A perplexity suite's texts go through the model in batches (right-padded, with an attention
# mask) of at most this many positions: one forward pass per text is launch-bound on a GPU
# (~40 ms for a 0.5B model on an H200 whatever the text's length), so a batch costs about what
# one text did. A text longer than this runs alone, as every text did before; the logits of a
# batch ([B, T, vocabulary] in float32) stay within what such a text needed.
PERPLEXITY_BATCH_POSITIONS = 1024


def _batch_nll(model: Any, texts: list[torch.Tensor], device: torch.device) -> tuple[float, int]:
    if len(texts) == 1:
        ids = texts[0].unsqueeze(0).to(device)
        return nll_from_logits(main_output(model(input_ids=ids)), ids)
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, :len(text)] = text
        mask[row, :len(text)] = 1
    ids, mask = ids.to(device), mask.to(device)
    return nll_from_logits(main_output(model(input_ids=ids, attention_mask=mask)), ids, mask)


def _max_length(base: LoadedBase, options: dict[str, int]) -> int | None:
    if "max_length" in options:
        return options["max_length"]
    limit = getattr(base.model.config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def _require_tokenizer(base: LoadedBase, suite: SuiteSpec) -> Any:
    if base.tokenizer is None:
        raise SuiteError(f"a {suite.kind} suite needs the base model's tokenizer, and the base "
                         "has none (register it with its tokenizer files)")
    return base.tokenizer


@torch.no_grad()
def perplexity(model: Any, base: LoadedBase, suite: SuiteSpec, data: Path,
               check: Check) -> SuiteScores:
    """The model's perplexity on the suite's texts."""
    tokenizer = _require_tokenizer(base, suite)
    limit = _max_length(base, suite.options)
    device = base.model.device
    start = time.perf_counter()
    total, count, texts = 0.0, 0, 0
    batch: list[torch.Tensor] = []

    def score_batch() -> None:
        nonlocal total, count
        if batch:
            nll, n = _batch_nll(model, batch, device)
            total += nll
            count += n
            batch.clear()

    for item in read_items(data):
        check()
        ids = tokenizer(item["text"], return_tensors="pt")["input_ids"][0]
        if limit is not None:
            ids = ids[:limit]
        texts += 1
        width = max([len(ids), *(len(t) for t in batch)])
        if batch and width * (len(batch) + 1) > PERPLEXITY_BATCH_POSITIONS:
            score_batch()
        batch.append(ids)
    score_batch()
    if count == 0:
        raise SuiteError(f"suite {suite.name}: no text is longer than one token")
    return SuiteScores({"perplexity": math.exp(total / count), "tokens": float(count)}, texts,
                       time.perf_counter() - start)


def _matches(text: str, expected: str, mode: str) -> bool:
    if mode == "exact":
        return text.strip() == expected.strip()
    if mode == "regex":
        return re.search(expected, text) is not None
    return expected in text


@torch.no_grad()
def generate(model: Any, base: LoadedBase, suite: SuiteSpec, data: Path,
             check: Check) -> SuiteScores:
    """Greedy generation of ``max_new_tokens`` per prompt; the share whose output matches."""
    tokenizer = _require_tokenizer(base, suite)
    max_new = suite.options.get("max_new_tokens", 32)
    device = base.model.device
    start = time.perf_counter()
    passed = total = 0
    for item in read_items(data):
        check()
        enc = tokenizer(item["prompt"], return_tensors="pt").to(device)
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        passed += _matches(text, item["expected"], item.get("match") or "contains")
        total += 1
    return SuiteScores({"pass_rate": passed / total}, total, time.perf_counter() - start)


@torch.no_grad()
def classify(model: Any, base: LoadedBase, suite: SuiteSpec, data: Path,
             check: Check) -> SuiteScores:
    """The share of texts whose predicted label is the expected one."""
    tokenizer = _require_tokenizer(base, suite)
    id2label = {int(k): str(v) for k, v in (base.model.config.id2label or {}).items()}
    label2id = {v: k for k, v in id2label.items()}
    limit = _max_length(base, suite.options)
    device = base.model.device
    start = time.perf_counter()
    correct = total = 0
    for item in read_items(data):
        check()
        label = item["label"]
        gold = label if isinstance(label, int) else label2id.get(str(label))
        if gold is None or gold not in id2label:
            raise SuiteError(f"suite {suite.name}: label {label!r} is not one of the model's "
                             f"labels {sorted(label2id) or sorted(id2label)}")
        ids = tokenizer(item["text"], return_tensors="pt")["input_ids"]
        if limit is not None:
            ids = ids[:, :limit]
        logits = main_output(model(input_ids=ids.to(device)))
        correct += int(int(logits[0].argmax(-1)) == gold)
        total += 1
    return SuiteScores({"accuracy": correct / total}, total, time.perf_counter() - start)


def lm_eval(suite: SuiteSpec, suite_dir: Path, *, base_dir: Path, adapter_dir: Path,
            device: str, dtype: str) -> SuiteScores:
    """Run the suite's lm-evaluation-harness task with ``HFLM(pretrained=…, peft=…)``.

    The task's data files are rewritten to absolute paths of this job's copy; nothing is
    fetched from a hub (offline mode is forced for datasets and the hub).

    Raises:
        SuiteError: lm-eval is not installed, or the task did not produce metrics.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    try:
        import lm_eval as harness  # the optional extra (`pip install '.[evals]'`)
        import yaml  # installed with lm-eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SuiteError("lm-eval suites need lm-evaluation-harness on the worker: "
                         "pip install 'adapter-registry[evals]'") from None
    [task_file] = [f.path for f in suite.files if f.path.endswith((".yaml", ".yml"))]
    config = yaml.safe_load((suite_dir / task_file).read_text())
    data_files = config["dataset_kwargs"]["data_files"]

    def absolute(value: Any) -> Any:
        if isinstance(value, str):
            return str((suite_dir / value).resolve())
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return {k: absolute(v) for k, v in value.items()}

    lm_eval_data_files(config)  # the paths were checked at `suite add`; check them again
    config["dataset_kwargs"]["data_files"] = absolute(data_files)
    # The datasets cache of this job's copy goes away with it.
    config["dataset_kwargs"]["cache_dir"] = str(suite_dir / ".datasets")
    tasks_dir = suite_dir / ".tasks"
    tasks_dir.mkdir(exist_ok=True)
    (tasks_dir / "task.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    options = suite.options
    lm = HFLM(pretrained=str(base_dir), peft=str(adapter_dir), device=device, dtype=dtype,
              batch_size=options.get("batch_size", 1))
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    results = harness.simple_evaluate(model=lm, tasks=[config["task"]], task_manager=manager,
                                      limit=options.get("limit"),
                                      num_fewshot=options.get("num_fewshot"))
    del lm
    found = (results or {}).get("results", {}).get(config["task"], {})
    # lm-eval names its metrics "metric,filter" (acc,none; acc_stderr,none); other keys of a
    # task's results (alias, sample_len) are not scores.
    metrics = {k: float(v) for k, v in found.items()
               if "," in k and isinstance(v, int | float) and not isinstance(v, bool)
               and math.isfinite(v)}
    if not metrics:
        raise SuiteError(f"suite {suite.name}: lm-eval task {config['task']} produced no metric")
    samples = (results.get("n-samples", {}) or {}).get(config["task"], {})
    n = int(samples.get("effective", 0)) if isinstance(samples, dict) else 0
    return SuiteScores(metrics, n, time.perf_counter() - start)


RUNNERS = {"perplexity": perplexity, "generate": generate, "classify": classify}
