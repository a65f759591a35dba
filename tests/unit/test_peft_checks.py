"""parse_adapter_config and check_tensors on hand-made configs and manifests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.errors import InvalidAdapterConfig, TensorMismatch
from registry.formats.peft import AdapterConfig, check_tensors, parse_adapter_config
from registry.formats.peft_methods import PEFT_TYPES, get_pattern_key
from registry.formats.safetensors import TensorInfo

P = "base_model.model.model.layers.0.self_attn."


def config(**fields: Any) -> AdapterConfig:
    fields.setdefault("peft_type", "LORA")
    return parse_adapter_config(json.dumps(fields).encode())


def lora_config(**fields: Any) -> AdapterConfig:
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    return config(**{**base, **fields})


def t(*shape: int, dtype: str = "F32") -> TensorInfo:
    return TensorInfo(dtype, tuple(shape))


def lora_pair(module: str, r: int = 4, d_in: int = 32, d_out: int = 32) -> dict[str, TensorInfo]:
    return {f"{module}.lora_A.weight": t(r, d_in), f"{module}.lora_B.weight": t(d_out, r)}


LORA_OK = {**lora_pair(P + "q_proj"), **lora_pair(P + "v_proj", d_out=16)}


# --- parse_adapter_config ----------------------------------------------------------------------


def test_peft_types_match_installed_peft() -> None:
    from peft.utils.peft_types import PeftType

    assert {p.value for p in PeftType} == PEFT_TYPES


def test_parse_full_lora_config_keeps_unknown_fields() -> None:
    c = lora_config(
        task_type="CAUSAL_LM",
        rank_pattern={"o_proj": 2},
        alpha_pattern={"o_proj": 4.5},
        modules_to_save=["lm_head"],
        use_dora=True,
        base_model_name_or_path="org/base",
        some_future_field={"x": [1]},
    )
    assert c.peft_type == "LORA" and c.task_type == "CAUSAL_LM"
    assert (c.r, c.lora_alpha) == (4, 8)
    assert c.target_modules == ["q_proj", "v_proj"]
    assert c.rank_pattern == {"o_proj": 2} and c.alpha_pattern == {"o_proj": 4.5}
    assert c.modules_to_save == ["lm_head"] and c.use_dora is True
    assert c.base_model_name_or_path == "org/base"
    assert c.raw["some_future_field"] == {"x": [1]}


def test_parse_minimal_config_defaults() -> None:
    c = config(peft_type="PROMPT_TUNING")
    assert c.r is None and c.lora_alpha is None and c.target_modules is None
    assert c.rank_pattern == {} and c.modules_to_save == [] and c.use_dora is False
    assert c.is_prompt_learning


def test_nulls_are_accepted_for_optional_fields() -> None:
    c = lora_config(rank_pattern=None, alpha_pattern=None, modules_to_save=None, use_dora=None)
    assert c.rank_pattern == {} and c.modules_to_save == [] and c.use_dora is False


def test_regex_target_modules() -> None:
    assert lora_config(target_modules=r".*\.(q|v)_proj").target_modules == r".*\.(q|v)_proj"


def test_loha_alpha_is_reported_as_lora_alpha() -> None:
    assert config(peft_type="LOHA", r=4, alpha=16).lora_alpha == 16


def test_adalora_rank_pattern_masks_become_counts() -> None:
    c = config(peft_type="ADALORA", rank_pattern={"m.lora_E": [True, False, True]})
    assert c.rank_pattern == {"m.lora_E": 2}


def test_ln_tuning_single_module_to_save() -> None:
    assert config(peft_type="LN_TUNING", modules_to_save="norm").modules_to_save == ["norm"]


def test_oft_may_save_r_zero() -> None:
    assert config(peft_type="OFT", r=0).r == 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{nope", "not valid JSON"),
        (b"[]", "must be a JSON object, got list"),
        (b"{}", "peft_type is missing"),
        (b'{"peft_type": 3}', "peft_type must be a string"),
    ],
)
def test_unparseable_config(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidAdapterConfig, match=fragment):
        parse_adapter_config(data)


def test_unknown_peft_type_lists_known_ones() -> None:
    with pytest.raises(InvalidAdapterConfig) as exc:
        config(peft_type="SUPER_LORA")
    assert "unknown peft_type 'SUPER_LORA'" in str(exc.value)
    assert "LORA" in str(exc.value) and "IA3" in str(exc.value)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"r": -1}, "r must be a positive integer"),
        ({"r": "4"}, "r must be a positive integer"),
        ({"r": 4.0}, "r must be a positive integer"),
        ({"r": True}, "r must be a positive integer"),
        ({"lora_alpha": "8"}, "lora_alpha must be a number"),
        ({"lora_alpha": False}, "lora_alpha must be a number"),
        ({"target_modules": [1]}, "target_modules must be a list of strings"),
        ({"target_modules": {"q": 1}}, "target_modules must be a list of strings"),
        ({"target_modules": "(["}, "not a valid regex"),
        ({"rank_pattern": {"o_proj": 0}}, "rank_pattern['o_proj'] must be a positive integer"),
        ({"rank_pattern": {"o_proj": "2"}}, "rank_pattern['o_proj'] must be a positive integer"),
        ({"rank_pattern": ["o_proj"]}, "rank_pattern must be an object"),
        ({"alpha_pattern": {"o_proj": "x"}}, "alpha_pattern must be an object"),
        ({"modules_to_save": [1]}, "modules_to_save must be a list of non-empty strings"),
        ({"modules_to_save": [""]}, "modules_to_save must be a list of non-empty strings"),
        ({"use_dora": "yes"}, "use_dora must be a boolean"),
        ({"lora_bias": 1}, "lora_bias must be a boolean"),
        ({"bias": 1}, "bias must be a string"),
        ({"task_type": 1}, "task_type must be a string"),
        ({"base_model_name_or_path": 1}, "base_model_name_or_path must be a string"),
    ],
)
def test_wrongly_typed_fields(fields: dict, fragment: str) -> None:
    with pytest.raises(InvalidAdapterConfig) as exc:
        lora_config(**fields)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    ("patterns", "key"),
    [
        (["o_proj"], "model.layers.0.self_attn.o_proj"),
        (["o_proj"], "model.layers.0.self_attn.xo_proj"),
        (["layers.1.self_attn.q_proj"], "model.layers.1.self_attn.q_proj"),
        (["layers.1.self_attn.q_proj"], "model.layers.11.self_attn.q_proj"),
        ([r"layers\.[01]\..*q_proj"], "model.layers.1.self_attn.q_proj"),
        (["q_proj", "self_attn.q_proj"], "model.layers.1.self_attn.q_proj"),
        (["proj"], "model.layers.1.self_attn.q_proj"),
    ],
)
def test_get_pattern_key_mirrors_peft(patterns: list[str], key: str) -> None:
    from peft.utils.other import get_pattern_key as peft_get_pattern_key

    ours = get_pattern_key(patterns, key)
    theirs = peft_get_pattern_key(patterns, key)
    # peft returns the key itself when nothing matches; rank_pattern.get(key, r) then gives r.
    assert (ours if ours is not None else key) == theirs


# --- check_tensors: names --------------------------------------------------------------------


def test_lora_ok() -> None:
    check_tensors(lora_config(), LORA_OK)


def test_empty_tensor_set_rejected() -> None:
    with pytest.raises(TensorMismatch, match=r"no tensors"):
        check_tensors(lora_config(), {})
    with pytest.raises(TensorMismatch, match=r"no tensors"):
        check_tensors(config(peft_type="VERA", r=4), {})


def test_lora_tensors_in_ia3_adapter() -> None:
    c = config(peft_type="IA3", target_modules=["q_proj", "v_proj"])
    with pytest.raises(TensorMismatch) as exc:
        check_tensors(c, LORA_OK)
    assert "is a LORA (lora_A) tensor but the adapter's peft_type is IA3" in str(exc.value)


def test_foreign_weight_not_under_modules_to_save() -> None:
    tensors = {**LORA_OK, "base_model.model.foo.weight": t(4, 4)}
    with pytest.raises(TensorMismatch, match=r"'base_model.model.foo.weight' does not fit LORA"):
        check_tensors(lora_config(), tensors)
    check_tensors(lora_config(modules_to_save=["foo"]), tensors)


def test_modules_to_save_suffix_match_like_peft() -> None:
    tensors = {**LORA_OK, "base_model.model.bert.pooler.dense.weight": t(4, 4)}
    check_tensors(lora_config(modules_to_save=["pooler.dense"]), tensors)
    with pytest.raises(TensorMismatch):
        check_tensors(lora_config(modules_to_save=["classifier"]), tensors)


def test_name_outside_base_model_model() -> None:
    with pytest.raises(TensorMismatch, match=r"expected a name under 'base_model.model.'"):
        check_tensors(lora_config(), {**LORA_OK, "lora_A.weight": t(4, 32)})


def test_component_with_wrong_suffix() -> None:
    tensors = {**LORA_OK, P + "q_proj.lora_A.kernel": t(4, 32)}
    with pytest.raises(
        TensorMismatch, match=r"expected base_model\.model\..*q_proj\.lora_A\.weight"
    ):
        check_tensors(lora_config(), tensors)


def test_unknown_component_with_method_prefix() -> None:
    tensors = {**LORA_OK, P + "q_proj.lora_Z.weight": t(4, 32)}
    with pytest.raises(TensorMismatch, match=r"'lora_Z' is not a LORA component"):
        check_tensors(lora_config(), tensors)


def test_lora_b_bias_needs_lora_bias() -> None:
    tensors = {**LORA_OK, P + "q_proj.lora_B.bias": t(32)}
    with pytest.raises(TensorMismatch, match=r"lora_B.bias needs lora_bias=true"):
        check_tensors(lora_config(), tensors)
    check_tensors(lora_config(lora_bias=True), tensors)
    with pytest.raises(TensorMismatch, match=r"lora_B.bias must have shape \[32\]"):
        check_tensors(lora_config(lora_bias=True), {**LORA_OK, P + "q_proj.lora_B.bias": t(16)})


def test_bias_all_and_lora_only() -> None:
    plain_bias = {**LORA_OK, "base_model.model.model.norm.bias": t(32)}
    base_bias = {**LORA_OK, P + "q_proj.base_layer.bias": t(32)}
    with pytest.raises(TensorMismatch):
        check_tensors(lora_config(), plain_bias)
    check_tensors(lora_config(bias="all"), plain_bias)
    check_tensors(lora_config(bias="all"), base_bias)
    check_tensors(lora_config(bias="lora_only"), base_bias)
    with pytest.raises(TensorMismatch):
        check_tensors(lora_config(bias="lora_only"), plain_bias)
    with pytest.raises(TensorMismatch):
        check_tensors(lora_config(), base_bias)


def test_base_layer_weight_only_for_targeted_embeddings() -> None:
    emb = "base_model.model.model.embed_tokens"
    tensors = {
        **LORA_OK,
        f"{emb}.lora_embedding_A": t(4, 128),
        f"{emb}.lora_embedding_B": t(32, 4),
        f"{emb}.base_layer.weight": t(128, 32),
    }
    check_tensors(lora_config(target_modules=["q_proj", "v_proj", "embed_tokens"]), tensors)
    # A full copy of a targeted linear layer's weight is not something peft writes.
    with pytest.raises(TensorMismatch, match=r"q_proj.base_layer.weight"):
        check_tensors(lora_config(), {**LORA_OK, P + "q_proj.base_layer.weight": t(32, 32)})


def test_resized_embeddings_accepted() -> None:
    tensors = {**LORA_OK, "base_model.model.model.embed_tokens.weight": t(130, 32)}
    check_tensors(lora_config(), tensors)


def test_trainable_tokens_delta_needs_trainable_token_indices() -> None:
    tensors = {
        **LORA_OK,
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": t(2, 32),
    }
    with pytest.raises(TensorMismatch):
        check_tensors(lora_config(), tensors)
    check_tensors(lora_config(trainable_token_indices=[1, 2]), tensors)


def test_module_outside_target_modules() -> None:
    tensors = {**LORA_OK, **lora_pair(P + "k_proj", d_out=16)}
    with pytest.raises(TensorMismatch, match=r"self_attn.k_proj' has LORA tensors but does not"):
        check_tensors(lora_config(), tensors)
    check_tensors(lora_config(target_modules=r".*_proj"), tensors)
    check_tensors(lora_config(target_modules=None), tensors)


# --- check_tensors: LoRA shapes --------------------------------------------------------------


def test_lora_a_without_b() -> None:
    tensors = dict(LORA_OK)
    del tensors[P + "v_proj.lora_B.weight"]
    with pytest.raises(TensorMismatch, match=r"self_attn.v_proj' has lora_A but no lora_B"):
        check_tensors(lora_config(), tensors)


def test_lora_b_without_a() -> None:
    tensors = dict(LORA_OK)
    del tensors[P + "v_proj.lora_A.weight"]
    with pytest.raises(TensorMismatch, match=r"has lora_B but no lora_A"):
        check_tensors(lora_config(), tensors)


def test_lora_rank_mismatch_between_a_and_b() -> None:
    tensors = {**LORA_OK, P + "q_proj.lora_B.weight": t(32, 2)}
    with pytest.raises(TensorMismatch) as exc:
        check_tensors(lora_config(), tensors)
    assert "lora_A rank 4 (shape [4, 32]) does not match lora_B rank 2 (shape [32, 2])" in str(
        exc.value
    )


def test_lora_rank_differs_from_r() -> None:
    tensors = {**LORA_OK, **lora_pair(P + "q_proj", r=2)}
    with pytest.raises(TensorMismatch, match=r"has rank 2 .* but r=4 expects 4"):
        check_tensors(lora_config(), tensors)


def test_missing_r_defaults_to_peft_default() -> None:
    c = config(peft_type="LORA", target_modules=["q_proj"])
    check_tensors(c, lora_pair(P + "q_proj", r=8))
    with pytest.raises(TensorMismatch, match=r"r=8 expects 8"):
        check_tensors(c, lora_pair(P + "q_proj", r=4))


def test_rank_pattern_honored_and_enforced() -> None:
    c = lora_config(rank_pattern={"v_proj": 2})
    tensors = {**lora_pair(P + "q_proj"), **lora_pair(P + "v_proj", r=2, d_out=16)}
    check_tensors(c, tensors)
    with pytest.raises(TensorMismatch, match=r"rank_pattern\['v_proj'\] expects 2"):
        check_tensors(c, LORA_OK)


def test_rank_pattern_first_match_wins_like_peft() -> None:
    c = lora_config(rank_pattern={"layers.0.self_attn.q_proj": 8, "q_proj": 2})
    q1 = "base_model.model.model.layers.1.self_attn.q_proj"
    check_tensors(c, {**lora_pair(P + "q_proj", r=8), **lora_pair(q1, r=2)})


def test_embedding_lora_rank() -> None:
    emb = "base_model.model.model.embed_tokens"
    c = lora_config(target_modules=["embed_tokens"])
    ok = {f"{emb}.lora_embedding_A": t(4, 128), f"{emb}.lora_embedding_B": t(32, 4)}
    check_tensors(c, ok)
    with pytest.raises(TensorMismatch, match=r"lora_embedding_A rank 4 .* lora_embedding_B rank 3"):
        check_tensors(c, {**ok, f"{emb}.lora_embedding_B": t(32, 3)})
    with pytest.raises(TensorMismatch, match=r"has lora_embedding_A but no lora_embedding_B"):
        check_tensors(c, {f"{emb}.lora_embedding_A": t(4, 128)})


def test_dora_magnitude_required_and_shaped() -> None:
    c = lora_config(use_dora=True, target_modules=["q_proj"])
    pair = lora_pair(P + "q_proj")
    with pytest.raises(
        TensorMismatch, match=r"no lora_magnitude_vector but the config has use_dora"
    ):
        check_tensors(c, pair)
    check_tensors(c, {**pair, P + "q_proj.lora_magnitude_vector": t(32)})
    with pytest.raises(TensorMismatch, match=r"must have shape \[32\], found \[32, 1\]"):
        check_tensors(c, {**pair, P + "q_proj.lora_magnitude_vector": t(32, 1)})


def test_dora_magnitude_without_use_dora() -> None:
    tensors = {**LORA_OK, P + "q_proj.lora_magnitude_vector": t(32)}
    with pytest.raises(TensorMismatch, match=r"DoRA magnitude vector but the config has use_dora"):
        check_tensors(lora_config(), tensors)


def test_dora_conv_magnitude_is_broadcastable() -> None:
    c = lora_config(use_dora=True, target_modules=["conv"])
    tensors = {
        "base_model.model.conv.lora_A.weight": t(4, 4, 3, 3),
        "base_model.model.conv.lora_B.weight": t(8, 4, 1, 1),
        "base_model.model.conv.lora_magnitude_vector": t(1, 8, 1, 1),
    }
    check_tensors(c, tensors)


# --- check_tensors: other methods ------------------------------------------------------------


def test_ia3_ok_and_foreign_name() -> None:
    c = config(peft_type="IA3", target_modules=["k_proj"])
    check_tensors(c, {P + "k_proj.ia3_l": t(16, 1)})
    with pytest.raises(TensorMismatch, match=r"does not fit IA3"):
        check_tensors(c, {P + "k_proj.ia3_l": t(16, 1), P + "k_proj.scale": t(16)})


def loha(module: str, r: int = 4) -> dict[str, TensorInfo]:
    return {
        f"{module}.hada_w1_a": t(32, r),
        f"{module}.hada_w1_b": t(r, 32),
        f"{module}.hada_w2_a": t(32, r),
        f"{module}.hada_w2_b": t(r, 32),
    }


def test_loha_complete_and_ranked() -> None:
    c = config(peft_type="LOHA", r=4, alpha=8, target_modules=["q_proj"])
    check_tensors(c, loha(P + "q_proj"))
    partial = loha(P + "q_proj")
    del partial[P + "q_proj.hada_w2_b"]
    with pytest.raises(TensorMismatch, match=r"incomplete LoHa factor set: missing hada_w2_b"):
        check_tensors(c, partial)
    with pytest.raises(TensorMismatch, match=r"has rank 2 .* r=4 expects 4"):
        check_tensors(c, loha(P + "q_proj", r=2))
    skewed = {**loha(P + "q_proj"), P + "q_proj.hada_w2_a": t(32, 3)}
    with pytest.raises(TensorMismatch, match=r"LoHa factor ranks disagree"):
        check_tensors(c, skewed)
    with pytest.raises(TensorMismatch, match=r"has hada_t1 but no hada_t2"):
        check_tensors(c, {**loha(P + "q_proj"), P + "q_proj.hada_t1": t(4, 4, 3, 3)})


def test_lokr_factor_sets() -> None:
    c = config(peft_type="LOKR", r=2, alpha=8, target_modules=["q_proj"])
    m = P + "q_proj"
    check_tensors(c, {f"{m}.lokr_w1": t(4, 4), f"{m}.lokr_w2": t(8, 8)})
    check_tensors(
        c, {f"{m}.lokr_w1": t(4, 4), f"{m}.lokr_w2_a": t(8, 2), f"{m}.lokr_w2_b": t(2, 8)}
    )
    with pytest.raises(TensorMismatch, match=r"expected lokr_w2 or lokr_w2_a and lokr_w2_b"):
        check_tensors(c, {f"{m}.lokr_w1": t(4, 4), f"{m}.lokr_w2_a": t(8, 2)})
    with pytest.raises(TensorMismatch, match=r"both lokr_w1 and its low-rank factors"):
        check_tensors(
            c, {f"{m}.lokr_w1": t(4, 4), f"{m}.lokr_w1_a": t(4, 2), f"{m}.lokr_w2": t(8, 8)}
        )


def test_adalora_triples() -> None:
    c = config(peft_type="ADALORA", target_modules=["q_proj"])
    m = P + "q_proj"
    ok = {f"{m}.lora_A": t(6, 32), f"{m}.lora_E": t(6, 1), f"{m}.lora_B": t(32, 6)}
    check_tensors(c, ok)
    with pytest.raises(TensorMismatch, match=r"AdaLoRA ranks disagree"):
        check_tensors(c, {**ok, f"{m}.lora_E": t(5, 1)})
    with pytest.raises(TensorMismatch, match=r"has lora_A but no lora_E"):
        check_tensors(c, {f"{m}.lora_A": t(6, 32), f"{m}.lora_B": t(32, 6)})
    # A LoRA-layout file (lora_A.weight) is not what AdaLoRA writes.
    with pytest.raises(TensorMismatch, match=r"does not fit ADALORA"):
        check_tensors(c, lora_pair(m))


def test_prompt_learning_names() -> None:
    c = config(peft_type="PROMPT_TUNING", task_type="CAUSAL_LM")
    check_tensors(c, {"prompt_embeddings": t(4, 32)})
    with pytest.raises(TensorMismatch, match=r"expected only prompt_embeddings"):
        check_tensors(c, {"prompt_embeddings": t(4, 32), "extra": t(1)})
    with pytest.raises(TensorMismatch, match=r"no prompt_embeddings"):
        check_tensors(config(peft_type="MULTITASK_PROMPT_TUNING"), {"prefix_task_cols": t(2, 3, 1)})
    with pytest.raises(TensorMismatch, match=r"must be 2-D"):
        check_tensors(c, {"prompt_embeddings": t(4)})
    seq = config(peft_type="PROMPT_TUNING", modules_to_save=["classifier"])
    check_tensors(seq, {"prompt_embeddings": t(4, 32), "base_model.classifier.weight": t(2, 32)})


def test_fallback_accepts_names_under_base_model() -> None:
    c = config(peft_type="VERA", r=4, target_modules=["q_proj"])
    check_tensors(
        c,
        {
            P + "q_proj.vera_lambda_b": t(32),
            P + "q_proj.vera_lambda_d": t(4),
            "base_model.vera_A": t(4, 32),
            "base_model.vera_B": t(32, 4),
        },
    )
    with pytest.raises(TensorMismatch, match=r"'vera_A' is not under 'base_model.'"):
        check_tensors(c, {"vera_A": t(4, 32)})
