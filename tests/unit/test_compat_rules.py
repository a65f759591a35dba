"""registry.compat on hand-built manifests: every rule, warning and serving report, no models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from registry.compat import (
    BaseManifest,
    Verdict,
    base_manifest,
    check_compatibility,
    config_summary,
    serving_support,
    shape_fingerprint,
)
from registry.compat.shapes import factorization
from registry.formats.peft import AdapterConfig, parse_adapter_config
from registry.formats.safetensors import TensorInfo

P = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj"


def t(*shape: int, dtype: str = "F32") -> TensorInfo:
    return TensorInfo(dtype, tuple(shape))


def config(**fields: Any) -> AdapterConfig:
    fields.setdefault("peft_type", "LORA")
    return parse_adapter_config(json.dumps(fields).encode())


def lora_config(**fields: Any) -> AdapterConfig:
    base = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
    }
    return config(**{**base, **fields})


def llama_tensors(
    *,
    hidden: int = 32,
    layers: int = 2,
    vocab: int = 128,
    kv: int = 16,
    prefix: str = "model.",
    lm_head: bool = True,
) -> dict[str, TensorInfo]:
    out = {f"{prefix}embed_tokens.weight": t(vocab, hidden), f"{prefix}norm.weight": t(hidden)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        out |= {
            f"{p}self_attn.q_proj.weight": t(hidden, hidden),
            f"{p}self_attn.k_proj.weight": t(kv, hidden),
            f"{p}self_attn.v_proj.weight": t(kv, hidden),
            f"{p}self_attn.o_proj.weight": t(hidden, hidden),
            f"{p}mlp.gate_proj.weight": t(2 * hidden, hidden),
            f"{p}mlp.up_proj.weight": t(2 * hidden, hidden),
            f"{p}mlp.down_proj.weight": t(hidden, 2 * hidden),
            f"{p}input_layernorm.weight": t(hidden),
            f"{p}post_attention_layernorm.weight": t(hidden),
        }
    if lm_head:
        out["lm_head.weight"] = t(vocab, hidden)
    return out


def llama_base(
    *,
    hidden: int = 32,
    layers: int = 2,
    vocab: int = 128,
    prefix: str = "model.",
    lm_head: bool = True,
    revision: str | None = None,
) -> BaseManifest:
    tensors = llama_tensors(
        hidden=hidden, layers=layers, vocab=vocab, kv=hidden // 2, prefix=prefix, lm_head=lm_head
    )
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "vocab_size": vocab,
        "num_hidden_layers": layers,
        "tie_word_embeddings": not lm_head,
    }
    return base_manifest(cfg, tensors, revision=revision)


def gpt2_base(*, hidden: int = 32, model_type: str | None = "gpt2") -> BaseManifest:
    tensors = {"transformer.wte.weight": t(128, hidden), "transformer.wpe.weight": t(128, hidden)}
    for i in range(2):
        p = f"transformer.h.{i}."
        tensors |= {
            f"{p}attn.c_attn.weight": t(hidden, 3 * hidden),  # Conv1D: [in, out]
            f"{p}attn.c_attn.bias": t(3 * hidden),
            f"{p}attn.c_proj.weight": t(hidden, hidden),
            f"{p}mlp.c_fc.weight": t(hidden, 4 * hidden),
            f"{p}mlp.c_proj.weight": t(4 * hidden, hidden),
            f"{p}ln_1.weight": t(hidden),
        }
    cfg = {"model_type": model_type, "n_embd": hidden, "n_layer": 2, "vocab_size": 128}
    return base_manifest(cfg, tensors)


def lora(module: str, d_in: int, d_out: int, r: int = 4) -> dict[str, TensorInfo]:
    return {f"{P}{module}.lora_A.weight": t(r, d_in), f"{P}{module}.lora_B.weight": t(d_out, r)}


def llama_lora(*, r: int = 4, hidden: int = 32, layers: int = 2) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for i in range(layers):
        out |= lora(f"model.layers.{i}.self_attn.q_proj", hidden, hidden, r)
        out |= lora(f"model.layers.{i}.self_attn.v_proj", hidden, hidden // 2, r)
    return out


def check(
    cfg: AdapterConfig, tensors: Mapping[str, TensorInfo], base: BaseManifest, **kw: Any
) -> Verdict:
    verdict = check_compatibility(cfg, tensors, base, **kw)
    json.dumps(verdict.to_json())  # always JSON-ready
    assert verdict.compatible == (not verdict.reasons)
    return verdict


def reason_codes(v: Verdict) -> set[str]:
    return {f.code for f in v.reasons}


def warning_codes(v: Verdict) -> set[str]:
    return {f.code for f in v.warnings}


# --- manifest ------------------------------------------------------------------------------------


def test_shape_fingerprint_ignores_order_and_dtype() -> None:
    a = {"b.weight": t(4, 2), "a.weight": t(3)}
    b = {"a.weight": t(3, dtype="BF16"), "b.weight": t(4, 2, dtype="F16")}
    assert shape_fingerprint(a) == shape_fingerprint(b)
    assert shape_fingerprint(a).startswith("sha256:") and len(shape_fingerprint(a)) == 71


def test_shape_fingerprint_changes_with_a_shape_or_a_name() -> None:
    base = {"a.weight": t(4, 2)}
    assert shape_fingerprint(base) != shape_fingerprint({"a.weight": t(2, 4)})
    assert shape_fingerprint(base) != shape_fingerprint({"b.weight": t(4, 2)})
    assert shape_fingerprint(base) != shape_fingerprint({**base, "c": t(1)})


def test_base_manifest_computes_fingerprint_and_round_trips() -> None:
    base = llama_base(revision="abc123")
    assert base.fingerprint == shape_fingerprint(base.tensors)
    data = json.loads(json.dumps(base.to_json()))
    assert BaseManifest.from_json(data) == base
    del data["fingerprint"]
    assert BaseManifest.from_json(data).fingerprint == base.fingerprint


def test_base_manifest_refuses_a_fingerprint_that_does_not_match() -> None:
    data = llama_base().to_json()
    data["fingerprint"] = "sha256:" + "0" * 64
    with pytest.raises(ValueError, match="does not match"):
        BaseManifest.from_json(data)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tensors", []),
        ("hidden_size", "32"),
        ("hidden_size", True),
        ("architectures", "Llama"),
        ("tie_word_embeddings", "yes"),
        ("model_type", 3),
    ],
)
def test_base_manifest_from_json_refuses_bad_fields(field: str, value: Any) -> None:
    data = llama_base().to_json()
    data[field] = value
    with pytest.raises(ValueError):
        BaseManifest.from_json(data)


def test_config_summary_falls_back_across_naming_conventions() -> None:
    gpt2 = config_summary({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "vocab_size": 50257})
    assert (gpt2["hidden_size"], gpt2["num_hidden_layers"]) == (768, 12)
    t5 = config_summary({"model_type": "t5", "d_model": 512, "num_layers": 6})
    assert (t5["hidden_size"], t5["num_hidden_layers"]) == (512, 6)
    nested = config_summary(
        {
            "architectures": ["LlavaForConditionalGeneration"],
            "text_config": {"hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 100},
        }
    )
    sizes = (nested["hidden_size"], nested["num_hidden_layers"], nested["vocab_size"])
    assert sizes == (64, 3, 100)
    assert nested["architectures"] == ["LlavaForConditionalGeneration"]


def test_config_summary_tie_word_embeddings_defaults_to_true_when_absent() -> None:
    assert config_summary({})["tie_word_embeddings"] is True
    assert config_summary({"tie_word_embeddings": False})["tie_word_embeddings"] is False
    assert config_summary({"tie_word_embeddings": "no"})["tie_word_embeddings"] is None
    assert config_summary({"hidden_size": True})["hidden_size"] is None


# --- LoRA shapes ---------------------------------------------------------------------------------


def test_matching_lora_is_compatible() -> None:
    v = check(lora_config(), llama_lora(), llama_base())
    assert v.compatible and not v.warnings
    assert v.checked_modules == 4
    assert all(report["supported"] for report in v.serving.values())


def test_hidden_size_mismatch_names_module_expected_and_found() -> None:
    v = check(lora_config(), llama_lora(), llama_base(hidden=48))
    assert reason_codes(v) == {"shape_mismatch"}
    q_a = next(f for f in v.reasons if f.tensor == f"{P}{Q0}.lora_A.weight")
    assert (q_a.module, q_a.expected, q_a.found) == (Q0, [4, 48], [4, 32])
    v_b_name = f"{P}model.layers.0.self_attn.v_proj.lora_B.weight"
    v_b = next(f for f in v.reasons if f.tensor == v_b_name)
    assert (v_b.expected, v_b.found) == ([24, 4], [16, 4])


def test_module_the_base_lacks_is_missing() -> None:
    tensors = {**llama_lora(), **lora("model.layers.0.mlp.gate2_proj", 32, 64)}
    v = check(lora_config(target_modules=["q_proj", "v_proj", "gate2_proj"]), tensors, llama_base())
    (finding,) = v.reasons
    assert (finding.code, finding.module) == ("missing_module", "model.layers.0.mlp.gate2_proj")


def test_conv1d_weights_are_in_out() -> None:
    tensors = {
        **lora("transformer.h.0.attn.c_attn", 32, 96),
        **lora("transformer.h.1.attn.c_attn", 32, 96),
    }
    cfg = lora_config(target_modules=["c_attn"], fan_in_fan_out=True)
    assert check(cfg, tensors, gpt2_base()).compatible
    # Without the model type, fan_in_fan_out is the only sign of Conv1D.
    assert check(cfg, tensors, gpt2_base(model_type=None)).compatible
    linear = check(lora_config(target_modules=["c_attn"]), tensors, gpt2_base(model_type=None))
    assert reason_codes(linear) == {"shape_mismatch"}


def test_embedding_lora_shapes_and_resized_vocabulary() -> None:
    emb = "model.embed_tokens"
    tensors = {
        f"{P}{emb}.lora_embedding_A": t(4, 128),  # [r, vocab]
        f"{P}{emb}.lora_embedding_B": t(32, 4),  # [dim, r]
    }
    cfg = lora_config(target_modules=["embed_tokens"])
    assert check(cfg, tensors, llama_base()).compatible
    resized = {**tensors, f"{P}{emb}.lora_embedding_A": t(4, 136)}
    (finding,) = check(cfg, resized, llama_base()).reasons
    assert (finding.code, finding.module, finding.expected, finding.found) == (
        "vocab_resized",
        emb,
        128,
        136,
    )


def test_dora_magnitude_is_out_features() -> None:
    tensors = dict(llama_lora())
    for i in range(2):
        tensors[f"{P}model.layers.{i}.self_attn.q_proj.lora_magnitude_vector"] = t(32)
        tensors[f"{P}model.layers.{i}.self_attn.v_proj.lora_magnitude_vector"] = t(16)
    cfg = lora_config(use_dora=True)
    assert check(cfg, tensors, llama_base()).compatible
    tensors[f"{P}{Q0}.lora_magnitude_vector"] = t(48)
    (finding,) = check(cfg, tensors, llama_base()).reasons
    assert (finding.code, finding.expected, finding.found) == ("shape_mismatch", [32], [48])
    # Without use_dora PEFT builds no magnitude, so the saved one is an unexpected key.
    assert "unexpected_tensor" in reason_codes(check(lora_config(), tensors, llama_base()))


def test_lora_bias_is_out_features() -> None:
    tensors = {**llama_lora(), f"{P}{Q0}.lora_B.bias": t(32)}
    tensors |= {
        f"{P}model.layers.1.self_attn.q_proj.lora_B.bias": t(32),
        f"{P}model.layers.0.self_attn.v_proj.lora_B.bias": t(16),
        f"{P}model.layers.1.self_attn.v_proj.lora_B.bias": t(16),
    }
    assert check(lora_config(lora_bias=True), tensors, llama_base()).compatible
    del tensors[f"{P}{Q0}.lora_B.bias"]
    (finding,) = check(lora_config(lora_bias=True), tensors, llama_base()).reasons
    assert (finding.code, finding.module, finding.expected) == ("missing_adapter_weights", Q0, [32])


def test_rank_pattern_sets_the_effective_rank() -> None:
    tensors = {**llama_lora(), **lora("model.layers.1.self_attn.q_proj", 32, 32, r=8)}
    pattern = {"model.layers.1.self_attn.q_proj": 8}
    assert check(lora_config(rank_pattern=pattern), tensors, llama_base()).compatible
    (finding,) = check(lora_config(), tensors, llama_base()).reasons
    assert (finding.code, finding.module, finding.expected, finding.found) == (
        "rank_mismatch",
        "model.layers.1.self_attn.q_proj",
        4,
        8,
    )


def test_rank_mismatch_still_reports_base_shape_differences() -> None:
    v = check(lora_config(r=8), llama_lora(), llama_base(hidden=48))
    assert reason_codes(v) == {"rank_mismatch", "shape_mismatch"}
    q_a = next(
        f for f in v.reasons if f.tensor == f"{P}{Q0}.lora_A.weight" and f.code == "shape_mismatch"
    )
    assert (q_a.expected, q_a.found) == ([4, 48], [4, 32])  # compared at the saved rank


def test_alpha_pattern_does_not_change_shapes() -> None:
    cfg = lora_config(alpha_pattern={"q_proj": 32.0}, use_rslora=True)
    assert check(cfg, llama_lora(), llama_base()).compatible


# --- IA3, LoHa, LoKr ----------------------------------------------------------------------------


def ia3_tensors(*, hidden: int = 32) -> dict[str, TensorInfo]:
    out = {}
    for i in range(2):
        p = f"{P}model.layers.{i}."
        out[f"{p}self_attn.k_proj.ia3_l"] = t(hidden // 2, 1)  # [out, 1]
        out[f"{p}mlp.down_proj.ia3_l"] = t(1, 2 * hidden)  # feedforward: [1, in]
    return out


def test_ia3_vectors_follow_feedforward_modules() -> None:
    cfg = config(
        peft_type="IA3", target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
    )
    assert check(cfg, ia3_tensors(), llama_base()).compatible
    v = check(cfg, ia3_tensors(), llama_base(hidden=48))
    found = {(f.module, tuple(f.expected), tuple(f.found)) for f in v.reasons}
    assert ("model.layers.0.mlp.down_proj", (1, 96), (1, 64)) in found
    assert ("model.layers.0.self_attn.k_proj", (24, 1), (16, 1)) in found
    # Not feedforward: PEFT would build [out, 1] for down_proj.
    wrong = config(peft_type="IA3", target_modules=["k_proj", "down_proj"], feedforward_modules=[])
    assert reason_codes(check(wrong, ia3_tensors(), llama_base())) == {"shape_mismatch"}
    # Not recorded at all: the saved orientation decides.
    unknown = config(peft_type="IA3", target_modules=["k_proj", "down_proj"])
    assert check(unknown, ia3_tensors(), llama_base()).compatible


def loha_tensors(module: str, d_in: int, d_out: int, r: int = 4) -> dict[str, TensorInfo]:
    p = f"{P}{module}."
    return {
        f"{p}hada_w1_a": t(d_out, r),
        f"{p}hada_w1_b": t(r, d_in),
        f"{p}hada_w2_a": t(d_out, r),
        f"{p}hada_w2_b": t(r, d_in),
    }


def test_loha_factors_multiply_to_the_base_shape() -> None:
    cfg = config(peft_type="LOHA", r=4, alpha=8, target_modules=["q_proj"])
    q1 = "model.layers.1.self_attn.q_proj"
    tensors = {**loha_tensors(Q0, 32, 32), **loha_tensors(q1, 32, 32)}
    assert check(cfg, tensors, llama_base()).compatible
    v = check(cfg, tensors, llama_base(hidden=48))
    assert reason_codes(v) == {"shape_mismatch"}
    assert all("is [32, 32] but the base weight is [48, 48]" in f.message for f in v.reasons)


def test_lokr_factorisation_matches_peft() -> None:
    assert factorization(256) == (16, 16)
    assert factorization(128) == (8, 16)
    assert factorization(127) == (1, 127)
    assert factorization(128, 4) == (4, 32)
    assert factorization(48) == (6, 8)


def test_lokr_expected_factors() -> None:
    cfg = config(peft_type="LOKR", r=4, alpha=8, target_modules=["q_proj"])
    # q_proj [32, 32]: out (4, 8), in (4, 8); r=4 is not below max(8, 8) / 2 so w2 is full.
    tensors: dict[str, TensorInfo] = {}
    for i in range(2):
        p = f"{P}model.layers.{i}.self_attn.q_proj."
        tensors |= {f"{p}lokr_w1": t(4, 4), f"{p}lokr_w2": t(8, 8)}
    assert check(cfg, tensors, llama_base()).compatible
    v = check(cfg, tensors, llama_base(hidden=48))  # 48 = 6 * 8: w1 must be [6, 6]
    (finding, _) = v.reasons
    assert (finding.module, finding.expected, finding.found) == (Q0, [6, 6], [4, 4])
    assert "kron(lokr_w1, lokr_w2) is [32, 32] but the base weight is [48, 48]" in finding.message
    # A small rank makes PEFT factor w2 (and, with decompose_both, w1) into low-rank pairs.
    small = config(peft_type="LOKR", r=1, alpha=8, target_modules=["q_proj"], decompose_both=True)
    low: dict[str, TensorInfo] = {}
    for i in range(2):
        p = f"{P}model.layers.{i}.self_attn.q_proj."
        low |= {
            f"{p}lokr_w1_a": t(4, 1),
            f"{p}lokr_w1_b": t(1, 4),
            f"{p}lokr_w2_a": t(8, 1),
            f"{p}lokr_w2_b": t(1, 8),
        }
    assert check(small, low, llama_base()).compatible
    with_both = config(peft_type="LOKR", r=4, target_modules=["q_proj"], decompose_both=True)
    v = check(with_both, low, llama_base())
    assert {(f.code, f.expected, f.found) for f in v.reasons} == {("rank_mismatch", 4, 1)}
    # Without decompose_both w1 stays full, so the saved w1_a/w1_b have no counterpart.
    no_both = config(peft_type="LOKR", r=1, alpha=8, target_modules=["q_proj"])
    assert reason_codes(check(no_both, low, llama_base())) == {
        "missing_adapter_weights",
        "unexpected_tensor",
    }


def test_loha_and_lokr_cannot_wrap_conv1d() -> None:
    cfg = config(peft_type="LOHA", r=4, target_modules=["c_attn"])
    tensors = loha_tensors("transformer.h.0.attn.c_attn", 32, 96)
    v = check(cfg, tensors, gpt2_base())
    assert "unsupported_module" in reason_codes(v)


# --- full tensors: modules_to_save, vocabulary, heads ------------------------------------------


def test_modules_to_save_must_have_the_base_shape() -> None:
    cfg = lora_config(modules_to_save=["lm_head", "embed_tokens"])
    tensors = {
        **llama_lora(),
        f"{P}lm_head.weight": t(128, 32),
        f"{P}model.embed_tokens.weight": t(128, 32),
    }
    assert check(cfg, tensors, llama_base()).checked_modules == 6
    resized = {
        **tensors,
        f"{P}lm_head.weight": t(136, 32),
        f"{P}model.embed_tokens.weight": t(136, 32),
    }
    v = check(cfg, resized, llama_base())
    assert {(f.code, f.module, f.expected, f.found) for f in v.reasons} == {
        ("vocab_resized", "lm_head", 128, 136),
        ("vocab_resized", "model.embed_tokens", 128, 136),
    }
    narrower = {**tensors, f"{P}lm_head.weight": t(128, 48)}
    (finding,) = check(cfg, narrower, llama_base()).reasons
    assert (finding.code, finding.expected, finding.found) == (
        "shape_mismatch",
        [128, 32],
        [128, 48],
    )


def test_tied_lm_head_absent_from_the_base_is_the_embedding() -> None:
    cfg = lora_config(modules_to_save=["lm_head"])
    tensors = {**llama_lora(), f"{P}lm_head.weight": t(128, 32)}
    base = llama_base(lm_head=False)
    assert "lm_head.weight" not in base.tensors
    assert check(cfg, tensors, base).compatible
    v = check(cfg, {**tensors, f"{P}lm_head.weight": t(130, 32)}, base)
    assert [(f.code, f.expected, f.found) for f in v.reasons] == [("vocab_resized", 128, 130)]


def test_head_absent_from_the_base_is_a_new_module() -> None:
    cfg = lora_config(task_type="SEQ_CLS", modules_to_save=["classifier", "score"])
    tensors = {**llama_lora(), f"{P}score.weight": t(2, 32)}
    v = check(cfg, tensors, llama_base())
    assert v.compatible
    (new,) = [f for f in v.warnings if f.code == "new_module"]
    assert (new.module, new.found) == ("score", {"weight": [2, 32]})


def test_nested_module_to_save_absent_from_the_base_is_missing() -> None:
    cfg = lora_config(modules_to_save=["extra"])
    tensors = {**llama_lora(), f"{P}model.layers.0.extra.weight": t(4, 32)}
    (finding,) = check(cfg, tensors, llama_base()).reasons
    assert (finding.code, finding.module) == ("missing_module", "model.layers.0.extra")


def test_parameter_the_base_module_lacks() -> None:
    cfg = lora_config(bias="all")
    tensors = {**llama_lora(), f"{P}{Q0}.bias": t(32)}  # Llama projections have no bias
    (finding,) = check(cfg, tensors, llama_base()).reasons
    assert (finding.code, finding.module) == ("missing_parameter", Q0)


def test_saved_base_layer_weight_of_a_targeted_embedding() -> None:
    emb = "model.embed_tokens"
    tensors = {
        f"{P}{emb}.lora_embedding_A": t(4, 128),
        f"{P}{emb}.lora_embedding_B": t(32, 4),
        f"{P}{emb}.base_layer.weight": t(128, 32),
    }
    cfg = lora_config(target_modules=["embed_tokens"])
    assert check(cfg, tensors, llama_base()).compatible
    v = check(cfg, tensors, llama_base(vocab=120))
    assert {(f.code, f.expected, f.found) for f in v.reasons} == {("vocab_resized", 120, 128)}


def test_trainable_tokens_need_the_embedding_width() -> None:
    cfg = lora_config(trainable_token_indices=[1, 2])
    tensors = {
        **llama_lora(),
        f"{P}model.embed_tokens.token_adapter.trainable_tokens_delta": t(2, 32),
    }
    assert check(cfg, tensors, llama_base()).compatible
    narrow = {
        **llama_lora(hidden=48),
        f"{P}model.embed_tokens.token_adapter.trainable_tokens_delta": t(2, 32),
    }
    v = check(cfg, narrow, llama_base(hidden=48))
    (finding,) = v.reasons
    assert (finding.module, finding.expected, finding.found) == (
        "model.embed_tokens",
        [2, 48],
        [2, 32],
    )


# --- namespaces, coverage, layer count -------------------------------------------------------


def test_bare_backbone_checkpoint_is_matched_without_its_prefix() -> None:
    base = llama_base(prefix="", lm_head=False)
    assert "layers.0.self_attn.q_proj.weight" in base.tensors
    cfg = lora_config(modules_to_save=["lm_head"])
    v = check(cfg, {**llama_lora(), f"{P}lm_head.weight": t(128, 32)}, base)
    assert v.compatible and v.checked_modules == 5
    (mapped,) = [f for f in v.warnings if f.code == "namespace_mapped"]
    assert mapped.found == {"drop_prefix": "model."}
    # Findings name the base's own module paths.
    v = check(lora_config(), llama_lora(hidden=32), llama_base(prefix="", hidden=48))
    assert {f.module for f in v.reasons} >= {"layers.0.self_attn.q_proj"}


def test_bare_adapter_on_a_task_checkpoint() -> None:
    tensors = {name.replace(f"{P}model.", P): info for name, info in llama_lora().items()}
    v = check(lora_config(task_type=None), tensors, llama_base())
    assert v.compatible
    assert [f.found for f in v.warnings if f.code == "namespace_mapped"] == [
        {"add_prefix": "model."}
    ]


def test_adapter_deeper_than_the_base() -> None:
    v = check(lora_config(), llama_lora(layers=4), llama_base(layers=2))
    assert reason_codes(v) == {"layer_count", "missing_module"}
    assert v.reasons[0].code == "layer_count"
    assert (v.reasons[0].expected, v.reasons[0].found) == (2, 4)
    assert len(v.reasons) == 5


def test_base_deeper_than_the_adapter() -> None:
    v = check(lora_config(), llama_lora(layers=2), llama_base(layers=4))
    assert reason_codes(v) == {"layer_count", "missing_adapter_weights"}
    assert (v.reasons[0].expected, v.reasons[0].found) == (4, 2)
    assert {f.module for f in v.reasons[1:]} == {
        f"model.layers.{i}.self_attn.{m}" for i in (2, 3) for m in ("q_proj", "v_proj")
    }


def test_layers_to_transform_limits_what_peft_adapts() -> None:
    cfg = lora_config(layers_to_transform=[0, 1], layers_pattern="layers")
    assert check(cfg, llama_lora(layers=2), llama_base(layers=4)).compatible


def test_exclude_modules_and_regex_targets() -> None:
    excluded = lora_config(
        exclude_modules=["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    )
    tensors = {k: v for k, v in llama_lora().items() if "layers.0" in k}
    assert check(excluded, tensors, llama_base()).compatible
    regex = lora_config(target_modules=r".*\.0\.self_attn\.(q|v)_proj")
    assert check(regex, tensors, llama_base()).compatible
    assert not check(lora_config(), tensors, llama_base()).compatible


def test_unresolved_all_linear_uses_the_adapted_module_names() -> None:
    cfg = lora_config(target_modules="all-linear")
    assert check(cfg, llama_lora(), llama_base()).compatible
    assert "layer_count" in reason_codes(check(cfg, llama_lora(), llama_base(layers=3)))


def test_norm_weight_is_not_a_layer() -> None:
    tensors = lora("model.norm", 32, 32)
    v = check(lora_config(target_modules=["norm"]), tensors, llama_base())
    assert reason_codes(v) == {"unsupported_module"}


def test_convolution_weights_are_not_checked() -> None:
    base = base_manifest({"model_type": "custom"}, {"conv.weight": t(8, 3, 3, 3)})
    tensors = {f"{P}conv.lora_A.weight": t(4, 3, 3, 3), f"{P}conv.lora_B.weight": t(8, 4, 1, 1)}
    v = check(lora_config(target_modules=["conv"]), tensors, base)
    assert v.compatible and "not_checkable" in warning_codes(v)


def test_tensor_outside_the_peft_prefix_is_unexpected() -> None:
    v = check(lora_config(), {**llama_lora(), "stray.weight": t(2)}, llama_base())
    assert [(f.code, f.tensor) for f in v.reasons] == [("unexpected_tensor", "stray.weight")]


# --- prompt learning and unmodelled methods -----------------------------------------------------


def test_prompt_tuning_needs_the_hidden_size() -> None:
    cfg = config(
        peft_type="PROMPT_TUNING", task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=32
    )
    tensors = {"prompt_embeddings": t(4, 32)}
    assert check(cfg, tensors, llama_base()).compatible
    (finding,) = check(cfg, tensors, llama_base(hidden=48)).reasons
    assert (finding.code, finding.tensor, finding.expected, finding.found) == (
        "shape_mismatch",
        "prompt_embeddings",
        [4, 48],
        [4, 32],
    )


@pytest.mark.parametrize("peft_type", ["PREFIX_TUNING", "VERA", "ADALORA"])
def test_unmodelled_methods_are_not_checkable(peft_type: str) -> None:
    cfg = config(peft_type=peft_type, task_type="CAUSAL_LM")
    v = check(cfg, {"base_model.vera_A": t(4, 32), f"{P}{Q0}.bias": t(9)}, llama_base())
    assert v.compatible
    assert "not_checkable" in warning_codes(v)


def test_unmodelled_methods_still_check_modules_to_save() -> None:
    cfg = config(peft_type="VERA", task_type="CAUSAL_LM", modules_to_save=["lm_head"])
    v = check(cfg, {f"{P}lm_head.weight": t(136, 32)}, llama_base())
    assert reason_codes(v) == {"vocab_resized"}


# --- provenance warnings ------------------------------------------------------------------------


def test_declared_base_with_another_name_but_the_same_fingerprint() -> None:
    base = llama_base()
    v = check(
        lora_config(),
        llama_lora(),
        base,
        base_name="acme/llama-fp16",
        declared_base_name="acme/llama-bf16",
        declared_base_fingerprint=base.fingerprint,
    )
    (w,) = v.warnings
    assert (w.code, w.expected, w.found) == (
        "fingerprint_match_other_name",
        "acme/llama-bf16",
        "acme/llama-fp16",
    )
    assert v.compatible


def test_declared_base_differs_defaults_to_the_config_name() -> None:
    cfg = lora_config(base_model_name_or_path="acme/other")
    v = check(cfg, llama_lora(), llama_base(), base_name="acme/llama")
    assert warning_codes(v) == {"declared_base_differs"}
    same = check(cfg, llama_lora(), llama_base(), base_name="ACME/other/")
    assert not same.warnings


def test_declared_base_same_name_other_fingerprint() -> None:
    v = check(
        lora_config(),
        llama_lora(),
        llama_base(),
        base_name="acme/llama",
        declared_base_name="acme/llama",
        declared_base_fingerprint="sha256:" + "1" * 64,
    )
    assert warning_codes(v) == {"fingerprint_differs"}


def test_revision_differs() -> None:
    cfg = lora_config(revision="v1")
    v = check(cfg, llama_lora(), llama_base(revision="v2"))
    (w,) = v.warnings
    assert (w.code, w.expected, w.found) == ("revision_differs", "v1", "v2")
    assert not check(cfg, llama_lora(), llama_base(revision="v1")).warnings
    assert not check(cfg, llama_lora(), llama_base()).warnings  # base revision unknown


# --- serving ------------------------------------------------------------------------------------


def serving_codes(cfg: AdapterConfig, tensors: Mapping[str, TensorInfo]) -> dict[str, set[str]]:
    report = serving_support(cfg, tensors)
    assert set(report) == {"vllm", "lorax"}
    for entry in report.values():
        assert entry["supported"] == (not entry["reasons"])
    return {target: {r["code"] for r in entry["reasons"]} for target, entry in report.items()}


def test_plain_lora_serves_everywhere() -> None:
    assert serving_codes(lora_config(), llama_lora()) == {"vllm": set(), "lorax": set()}


@pytest.mark.parametrize(
    "fields, extra, code",
    [
        ({"use_dora": True}, {}, "dora"),
        ({"modules_to_save": ["lm_head"]}, {}, "modules_to_save"),
        ({"bias": "all"}, {}, "bias"),
        ({"lora_bias": True}, {}, "bias"),
        ({}, {f"{P}{Q0}.lora_B.bias": t(32)}, "bias"),
    ],
)
def test_vllm_refuses(fields: dict[str, Any], extra: dict[str, TensorInfo], code: str) -> None:
    codes = serving_codes(lora_config(**fields), {**llama_lora(), **extra})
    assert codes == {"vllm": {code}, "lorax": set()}


@pytest.mark.parametrize(
    "rank, vllm, lorax",
    [
        (128, set(), set()),
        (129, set(), {"rank"}),
        (512, set(), {"rank"}),
        (513, {"rank"}, {"rank"}),
    ],
)
def test_rank_limits(rank: int, vllm: set[str], lorax: set[str]) -> None:
    assert serving_codes(lora_config(r=rank), llama_lora(r=rank)) == {"vllm": vllm, "lorax": lorax}


def test_rank_limit_counts_rank_pattern() -> None:
    cfg = lora_config(r=8, rank_pattern={"q_proj": 256})
    report = serving_support(cfg, {})
    assert not report["lorax"]["supported"]
    assert report["lorax"]["reasons"][0]["found"] == 256
    tensors = {**llama_lora(r=8), **lora(Q0, 32, 32, r=200)}
    assert serving_support(lora_config(r=8), tensors)["lorax"]["reasons"][0]["found"] == 200


def test_other_methods_are_not_served() -> None:
    cfg = config(peft_type="IA3", target_modules=["k_proj"], feedforward_modules=[])
    assert serving_codes(cfg, {}) == {"vllm": {"peft_type"}, "lorax": {"peft_type"}}


def test_serving_refusals_are_also_warnings() -> None:
    v = check(lora_config(use_dora=True, r=200), {}, llama_base())
    (w,) = [
        f for f in v.warnings if f.code == "serving_unsupported" and f.found["target"] == "vllm"
    ]
    assert w.found["features"] == ["dora"]
    assert v.serving["lorax"]["supported"] is False


# --- verdict form -------------------------------------------------------------------------------


def test_findings_beyond_the_cap_are_summarised() -> None:
    v = check(lora_config(), llama_lora(), llama_base(hidden=48), max_findings=3)
    assert [f.code for f in v.reasons] == ["shape_mismatch", "shape_mismatch", "more_findings"]
    assert v.reasons[-1].found == 6
    assert not v.compatible


def test_verdict_json_shape() -> None:
    data = check(lora_config(), llama_lora(), llama_base(hidden=48)).to_json()
    assert set(data) == {"compatible", "reasons", "warnings", "serving", "checked_modules"}
    assert set(data["reasons"][0]) == {"code", "message", "module", "tensor", "expected", "found"}
    assert data["serving"]["vllm"] == {"supported": True, "reasons": []}
