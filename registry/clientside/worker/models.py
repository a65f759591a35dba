"""Base models kept loaded on the worker's device, with their probe inputs and outputs.

Up to ``max_loaded`` bases stay in memory (least recently used out; 0 loads one per job and
drops it after). Each entry holds the probes (the base's tokenizer on a few built-in texts, or
seeded random ids when the base has no tokenizer) and the base's own outputs on them, which
every adapter's outputs are compared with and the base must reproduce bit for bit once an
adapter is detached.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from registry.clientside.worker.device import Device, empty_cache

PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France?\nAnswer:",
    "def add(a, b):\n    return a + b\n",
    "Translate to German: Good morning, how are you?",
    "1, 1, 2, 3, 5, 8, 13, 21,",
)
PROBE_SEED = 1234
PROBE_COUNT = 4
PROBE_LENGTH = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")


def model_class(task_type: str | None, architectures: Iterable[str] | None) -> Any:
    """The transformers Auto class to load a base with, for an adapter of ``task_type``."""
    by_task = {
        "CAUSAL_LM": transformers.AutoModelForCausalLM,
        "SEQ_CLS": transformers.AutoModelForSequenceClassification,
        "TOKEN_CLS": transformers.AutoModelForTokenClassification,
        "SEQ_2_SEQ_LM": transformers.AutoModelForSeq2SeqLM,
        "QUESTION_ANS": transformers.AutoModelForQuestionAnswering,
        "FEATURE_EXTRACTION": transformers.AutoModel,
    }
    if task_type in by_task:
        return by_task[task_type]
    archs = list(architectures or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return transformers.AutoModelForSequenceClassification
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def main_output(output: Any) -> torch.Tensor:
    """The tensor a model's output is judged by: logits, else the last hidden state."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read the outputs of a {type(output).__name__}")


@dataclass
class LoadedBase:
    """A base model on the device, its tokenizer (if any), probes and outputs on them."""

    key: str
    model: Any
    tokenizer: Any
    probes: list[torch.Tensor]
    outputs: list[torch.Tensor]
    path: Path
    load_seconds: float
    # Per suite version: the base's own perplexity, computed once per base in this worker.
    base_scores: dict[tuple[str, int], float] = field(default_factory=dict)

    @torch.no_grad()
    def run(self, model: Any) -> list[torch.Tensor]:
        """``model``'s main output on every probe (one at a time: no padding to get wrong)."""
        return [main_output(model(input_ids=ids)) for ids in self.probes]


def _tokenizer(path: Path) -> Any:
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        return None
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _probes(tokenizer: Any, config: Any, device: Device) -> list[torch.Tensor]:
    if tokenizer is not None:
        return [tokenizer(text, return_tensors="pt")["input_ids"].to(device.torch_device)
                for text in PROBE_TEXTS]
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise ValueError("the base has neither a tokenizer nor a vocab_size to make probes from")
    gen = torch.Generator().manual_seed(PROBE_SEED)
    ids = torch.randint(0, vocab, (PROBE_COUNT, PROBE_LENGTH), generator=gen)
    return [row.unsqueeze(0).to(device.torch_device) for row in ids]


def load_base(path: Path, *, key: str, cls: Any, device: Device) -> LoadedBase:
    """Load a checkpoint directory onto the device and compute its probe outputs."""
    start = time.perf_counter()
    # Weights a checkpoint lacks (a task head) are initialised from a fixed seed, so two loads
    # of one base are the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls.from_pretrained(str(path), dtype=device.dtype, local_files_only=True)
    model = model.to(device.torch_device).eval()
    tokenizer = _tokenizer(path)
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    probes = _probes(tokenizer, model.config, device)
    base = LoadedBase(key=key, model=model, tokenizer=tokenizer, probes=probes, outputs=[],
                      path=path, load_seconds=0.0)
    base.outputs = base.run(model)
    if device.is_cuda:
        torch.cuda.synchronize(device.torch_device)
    base.load_seconds = time.perf_counter() - start
    return base


class ModelCache:
    """Up to ``max_loaded`` bases kept loaded, least recently used out."""

    def __init__(self, device: Device, *, max_loaded: int) -> None:
        self.device = device
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedBase] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._loaded

    def get(self, path: Path, *, key: str, cls: Any) -> tuple[LoadedBase, bool]:
        """The base loaded with ``cls``; True when it was loaded already (a cache hit)."""
        full = f"{key}:{cls.__name__}"
        if full in self._loaded:
            self._loaded.move_to_end(full)
            return self._loaded[full], True
        # Make room first: two large bases need not fit on the device at once.
        while self._loaded and len(self._loaded) >= max(self.max_loaded, 1):
            self._drop(next(iter(self._loaded)))
        base = load_base(path, key=full, cls=cls, device=self.device)
        self._loaded[full] = base
        return base, False

    def release(self, base: LoadedBase) -> None:
        """After a job: with ``max_loaded`` 0 nothing stays loaded."""
        if self.max_loaded == 0:
            self._drop(base.key)

    def evict(self, base: LoadedBase) -> None:
        """Drop a base whose state cannot be trusted (an adapter leaked into it)."""
        self._drop(base.key)

    def clear(self) -> None:
        for key in list(self._loaded):
            self._drop(key)

    def _drop(self, key: str) -> None:
        base = self._loaded.pop(key, None)
        if base is None:
            return
        del base
        gc.collect()
        empty_cache(self.device)
