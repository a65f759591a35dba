"""Build real PEFT adapters on tiny random transformers models, for tests.

Everything is created from configs (no Hub access) and kept tiny (hidden size 32) so that one
adapter takes well under a second. Nothing is cached between calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import (
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

ADAPTER_KINDS: tuple[str, ...] = (
    "lora",
    "lora_rank_pattern",
    "dora",
    "ia3",
    "loha",
    "lokr",
    "modules_to_save",
    "embedding",
    "prompt_tuning",
    "gpt2_lora",
    "bert_lora",
)

# Shapes of the tiny models, so tests can state expectations without rebuilding a model.
HIDDEN = 32
VOCAB = 128
LAYERS = 2


def _seeded(seed: int, build: Any) -> Any:
    # fork_rng keeps the global torch RNG untouched, so callers cannot observe our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_llama(
    *, hidden: int = HIDDEN, layers: int = LAYERS, vocab: int = VOCAB, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised LlamaForCausalLM (4 heads, 2 kv heads, intermediate 64)."""
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return _seeded(seed, lambda: LlamaForCausalLM(config).eval())


def tiny_gpt2(
    *, hidden: int = HIDDEN, layers: int = LAYERS, vocab: int = VOCAB, seed: int = 0
) -> GPT2LMHeadModel:
    """A randomly initialised GPT2LMHeadModel (Conv1D projections, 4 heads)."""
    config = GPT2Config(
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        vocab_size=vocab,
        n_positions=128,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
    )
    return _seeded(seed, lambda: GPT2LMHeadModel(config).eval())


def tiny_bert(
    *, hidden: int = HIDDEN, layers: int = LAYERS, vocab: int = VOCAB, seed: int = 0
) -> BertForSequenceClassification:
    """A randomly initialised BertForSequenceClassification with 2 labels."""
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        vocab_size=vocab,
        max_position_embeddings=128,
        num_labels=2,
    )
    return _seeded(seed, lambda: BertForSequenceClassification(config).eval())


def save_base(model: PreTrainedModel, path: Path) -> Path:
    """Save a base model with safetensors weights; returns `path`."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


_LLAMA_ATTN = ["q_proj", "v_proj"]


def _peft_config(kind: str) -> tuple[str, PeftConfig]:
    """The base model name and the PEFT config for an adapter kind."""
    causal = TaskType.CAUSAL_LM
    if kind == "lora":
        return "llama", LoraConfig(task_type=causal, r=4, lora_alpha=8, target_modules=_LLAMA_ATTN)
    if kind == "lora_rank_pattern":
        return "llama", LoraConfig(
            task_type=causal,
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            rank_pattern={"o_proj": 2, "model.layers.1.self_attn.q_proj": 8},
            alpha_pattern={"o_proj": 4.0},
        )
    if kind == "dora":
        return "llama", LoraConfig(
            task_type=causal, r=4, lora_alpha=8, target_modules=_LLAMA_ATTN, use_dora=True
        )
    if kind == "ia3":
        return "llama", IA3Config(
            task_type=causal,
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
        )
    if kind == "loha":
        return "llama", LoHaConfig(task_type=causal, r=4, alpha=8, target_modules=_LLAMA_ATTN)
    if kind == "lokr":
        return "llama", LoKrConfig(task_type=causal, r=4, alpha=8, target_modules=_LLAMA_ATTN)
    if kind == "modules_to_save":
        return "llama", LoraConfig(
            task_type=causal,
            r=4,
            lora_alpha=8,
            target_modules=_LLAMA_ATTN,
            modules_to_save=["lm_head"],
        )
    if kind == "embedding":
        return "llama", LoraConfig(
            task_type=causal, r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]
        )
    if kind == "prompt_tuning":
        return "llama", PromptTuningConfig(task_type=causal, num_virtual_tokens=4)
    if kind == "gpt2_lora":
        return "gpt2", LoraConfig(
            task_type=causal, r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True
        )
    if kind == "bert_lora":
        return "bert", LoraConfig(
            task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"]
        )
    raise ValueError(f"unknown adapter kind {kind!r}; expected one of {', '.join(ADAPTER_KINDS)}")


_BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def make_adapter(
    path: Path,
    kind: str = "lora",
    *,
    base: str = "llama",
    base_model_name_or_path: str | None = None,
    seed: int = 0,
) -> Path:
    """Build a tiny model, wrap it with a PEFT method, randomise the adapter and save it.

    Args:
        path: Directory to write adapter_config.json and adapter_model.safetensors into.
        kind: One of ADAPTER_KINDS.
        base: "llama", "gpt2" or "bert". Only "lora" can change base (it becomes "gpt2_lora"
            or "bert_lora"); "gpt2_lora" and "bert_lora" always use their own base, and every
            other kind targets Llama modules, so it requires "llama".
        base_model_name_or_path: Written into the saved adapter_config.json when given.
        seed: Seeds both the base model and the adapter perturbation.

    Returns:
        `path`.
    """
    if base not in _BUILDERS:
        raise ValueError(f"unknown base {base!r}; expected one of {', '.join(_BUILDERS)}")
    if base != "llama" and kind == "lora":
        kind = f"{base}_lora"
    base_kind, config = _peft_config(kind)
    if base != "llama" and base_kind != base and kind not in ("gpt2_lora", "bert_lora"):
        raise ValueError(f"adapter kind {kind!r} targets Llama modules; it needs base='llama'")
    model = _BUILDERS[base_kind](seed=seed)
    peft_model = get_peft_model(model, config)
    _perturb(peft_model, seed=seed)
    path = Path(path)
    # The base name is written only after saving: with a name set, peft's save_pretrained would
    # look the base model up (locally, then on the Hub) to detect a resized vocabulary.
    peft_model.save_pretrained(path, safe_serialization=True)
    if base_model_name_or_path is not None:
        config_path = path / "adapter_config.json"
        saved = json.loads(config_path.read_text())
        saved["base_model_name_or_path"] = base_model_name_or_path
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    return path


def _perturb(model: torch.nn.Module, *, seed: int) -> None:
    # PEFT initialises some adapter weights to zero or one (lora_B, IA3 vectors), which would make
    # loading checks vacuous; small non-zero noise keeps the adapter well-behaved but observable.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                param.add_((0.05 * noise).to(param.dtype))


CHAR_TOKENS: tuple[str, ...] = (
    "<unk>", "<s>", "</s>", "<pad>", *(chr(c) for c in range(32, 127)), "\n",
)


def save_char_tokenizer(path: Path) -> Path:
    """Save a character-level tokenizer (100 tokens, fits VOCAB) that prepends ``<s>``, so the
    tiny bases have an ``AutoTokenizer`` like real ones, without the Hub."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(CHAR_TOKENS)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(str(path))
    return Path(path)
