"""The PEFT method table: true to peft, and handled by every layer that reads it.

Adding a method to `registry.formats.peft_methods` without teaching a layer about it fails
here: the upload checks (formats), the shape model (compat), the merge planner (merge) and the
serving report each have a test over every method the table lists.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from registry.compat import check_compatibility
from registry.compat.context import default_tensor_name
from registry.compat.manifest import BaseManifest
from registry.compat.serving import serving_support
from registry.compat.shapes import LINEAR, expected_tensors, found_rank
from registry.errors import TensorMismatch, Unmergeable
from registry.formats.peft import MODULE_CHECKS, AdapterConfig, check_tensors, parse_adapter_config
from registry.formats.peft_methods import (
    ANY_SUFFIX,
    COMPONENTS,
    MERGEABLE,
    MODEL_PREFIX,
    PEFT_METHODS,
    PEFT_TYPES,
    PROMPT_LEARNING_TENSORS,
    SERVING_TARGETS,
    SHAPE_MODELLED,
    module_alpha,
    module_rank,
)
from registry.formats.safetensors import TensorInfo
from registry.merge.edits import PLANNERS, check_mergeable, plan_merge

MODULE = "model.layers.0.mlp.up_proj"
WEIGHT = (64, 48)  # nn.Linear [out, in]
RANK = 2
METHODS = sorted(PEFT_METHODS)


def config(peft_type: str, **fields: Any) -> AdapterConfig:
    return parse_adapter_config(json.dumps({"peft_type": peft_type, **fields}).encode())


def base() -> BaseManifest:
    return BaseManifest(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=48,
        vocab_size=None,
        num_hidden_layers=1,
        tie_word_embeddings=None,
        tensors={
            f"{MODULE}.weight": TensorInfo("F32", WEIGHT),
            f"{MODULE}.bias": TensorInfo("F32", (WEIGHT[0],)),
        },
    )


def modelled_adapter(peft_type: str) -> tuple[AdapterConfig, dict[str, TensorInfo]]:
    """A config and the tensors compat's shape model says PEFT builds for MODULE."""
    method = PEFT_METHODS[peft_type]
    fields: dict[str, Any] = {"target_modules": ["up_proj"]}
    if method.ranked:
        fields |= {"r": RANK, method.alpha_field: 4}
    if peft_type == "IA3":
        fields["feedforward_modules"] = []
    cfg = config(peft_type, **fields)
    spec = expected_tensors(
        peft_type=peft_type,
        raw=cfg.raw,
        module=MODULE,
        kind=LINEAR,
        weight=WEIGHT,
        rank=RANK if method.ranked else None,
        found={},
    )
    tensors = {
        default_tensor_name(MODULE, key): TensorInfo("F32", shape)
        for key, shape in spec.tensors.items()
    }
    return cfg, tensors


# --- the table itself -------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_table_entries_are_consistent(name: str) -> None:
    method = PEFT_METHODS[name]
    assert method.name == name and name in PEFT_TYPES
    assert bool(method.components) != bool(method.prompt_tensors)
    for component in method.components:
        assert component.startswith(method.prefix), component
    for key in method.shape_keys:
        assert key.split(".")[0] in method.components, key
    assert set(method.unmerged_components) <= set(method.components)
    assert set(method.flag_suffixes) <= set(method.components)
    assert method.serving <= set(SERVING_TARGETS)
    assert method.ranked == (method.default_r is not None)
    if method.mergeable:
        assert method.merge_refusal is None
    else:
        assert not method.merge_refusals and not method.unmerged_components


def test_table_matches_peft() -> None:
    from peft import LoHaConfig, LoKrConfig, LoraConfig  # local: only this test needs peft
    from peft.tuners.adalora import AdaLoraLayer, AdaLoraModel
    from peft.tuners.ia3 import IA3Layer, IA3Model
    from peft.tuners.loha import LoHaLayer, LoHaModel
    from peft.tuners.lokr import LoKrLayer, LoKrModel
    from peft.tuners.lora import LoraLayer, LoraModel

    for name, layer, model in [
        ("LORA", LoraLayer, LoraModel),
        ("ADALORA", AdaLoraLayer, AdaLoraModel),
        ("IA3", IA3Layer, IA3Model),
        ("LOHA", LoHaLayer, LoHaModel),
        ("LOKR", LoKrLayer, LoKrModel),
    ]:
        method = PEFT_METHODS[name]
        assert set(layer.adapter_layer_names) <= set(method.components), name
        assert model.prefix == method.prefix, name
    # LoRA variants add their containers; every other method's components are exactly peft's.
    assert set(PEFT_METHODS["LOHA"].components) == set(LoHaLayer.adapter_layer_names)
    assert set(PEFT_METHODS["LOKR"].components) == set(LoKrLayer.adapter_layer_names)
    for name, cfg in [("LORA", LoraConfig()), ("LOHA", LoHaConfig()), ("LOKR", LoKrConfig())]:
        method = PEFT_METHODS[name]
        assert cfg.r == method.default_r, name
        assert getattr(cfg, method.alpha_field) == method.default_alpha, name


# --- the resolver ---------------------------------------------------------------------------


def test_module_rank_sources() -> None:
    c = config("LORA", r=4, rank_pattern={"o_proj": 2})
    assert module_rank(c, "model.layers.0.self_attn.o_proj") == (2, "rank_pattern['o_proj']")
    assert module_rank(c, "model.layers.0.self_attn.q_proj") == (4, "r=4")
    assert module_rank(config("LOKR"), MODULE) == (8, "peft's default r=8")
    assert module_rank(config("IA3"), MODULE)[0] is None
    assert module_rank(config("ADALORA", r=4), MODULE)[0] is None  # pruned: no rank to predict
    assert module_rank(config("OFT", r=0), MODULE) == (0, "r=0")  # only OFT may save r=0


def test_module_alpha_sources() -> None:
    c = config("LORA", lora_alpha=16, alpha_pattern={"o_proj": 3})
    assert module_alpha(c, "model.layers.0.self_attn.o_proj") == (3.0, "alpha_pattern['o_proj']")
    assert module_alpha(c, MODULE) == (16.0, "lora_alpha=16")
    assert module_alpha(config("LOHA", alpha=5), MODULE) == (5.0, "alpha=5")
    assert module_alpha(config("LOHA"), MODULE) == (8.0, "peft's default alpha=8.0")
    assert module_alpha(config("IA3"), MODULE)[0] is None


# --- every layer handles every method it is marked for -------------------------------------


def test_formats_has_a_module_check_for_every_method_with_components() -> None:
    assert set(MODULE_CHECKS) == set(COMPONENTS)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_formats_knows_every_component(name: str) -> None:
    method = PEFT_METHODS[name]
    cfg = config(name, use_dora=True, lora_bias=True)
    for component, suffixes in method.components.items():
        allowed = set(suffixes) | set(method.flag_suffixes.get(component, {}))
        for suffix in allowed:
            shown = "anything" if suffix == ANY_SUFFIX else suffix
            tensor = f"{MODEL_PREFIX}{MODULE}.{component}" + (f".{shown}" if shown else "")
            try:
                check_tensors(cfg, {tensor: TensorInfo("F32", (4, 4))})
            except TensorMismatch as exc:
                # A lone component may be incomplete; its name must still be understood.
                assert "does not fit" not in str(exc), exc
                assert "known to this registry" not in str(exc), exc
    bogus = f"{MODEL_PREFIX}{MODULE}.{method.prefix}bogus"
    with pytest.raises(TensorMismatch, match=f"is not a {name} component known"):
        check_tensors(cfg, {bogus: TensorInfo("F32", (4, 4))})


@pytest.mark.parametrize("name", sorted(PROMPT_LEARNING_TENSORS))
def test_formats_knows_every_prompt_tensor(name: str) -> None:
    tensors = {t: TensorInfo("F32", (4, 8)) for t in PROMPT_LEARNING_TENSORS[name]}
    check_tensors(config(name), tensors)


@pytest.mark.parametrize("name", METHODS)
def test_compat_shape_model_covers_the_shape_modelled_methods(name: str) -> None:
    method = PEFT_METHODS[name]
    if not method.shape_modelled:
        with pytest.raises(ValueError, match="no shape model"):
            expected_tensors(
                peft_type=name,
                raw={},
                module=MODULE,
                kind=LINEAR,
                weight=WEIGHT,
                rank=RANK,
                found={},
            )
        return
    cfg, tensors = modelled_adapter(name)
    assert tensors
    rel = {n.removeprefix(f"{MODEL_PREFIX}{MODULE}.") for n in tensors}
    assert rel <= method.shape_keys
    found = {n.removeprefix(f"{MODEL_PREFIX}{MODULE}."): tuple(i.shape) for n, i in tensors.items()}
    assert found_rank(name, found) == (RANK if method.ranked else None)
    # What compat predicts passes the upload checks and is compatible with the base it came from.
    check_tensors(cfg, tensors)
    verdict = check_compatibility(cfg, tensors, base())
    assert verdict.compatible, verdict.reasons
    assert verdict.checked_modules == 1


def test_merge_has_a_planner_for_every_mergeable_method() -> None:
    assert set(PLANNERS) == MERGEABLE
    # The merge test below builds its adapters from the shape model.
    assert MERGEABLE <= SHAPE_MODELLED


@pytest.mark.parametrize("name", METHODS)
def test_merge_plans_the_mergeable_methods_and_refuses_the_others(name: str) -> None:
    method = PEFT_METHODS[name]
    if not method.mergeable:
        with pytest.raises(Unmergeable):
            check_mergeable(config(name))
        return
    cfg, infos = modelled_adapter(name)
    torch.manual_seed(0)
    tensors = {n: torch.randn(i.shape) for n, i in infos.items()}
    shapes = {n: tuple(i.shape) for n, i in base().tensors.items()}
    merge_plan = plan_merge(cfg, tensors, base_shapes=shapes)
    assert merge_plan.modules == (MODULE,)
    weight = torch.randn(WEIGHT)
    merged = merge_plan.apply(f"{MODULE}.weight", weight.clone(), 0, WEIGHT[0])
    assert merged.shape == weight.shape and not torch.equal(merged, weight)


@pytest.mark.parametrize("name", METHODS)
def test_serving_follows_the_table(name: str) -> None:
    method = PEFT_METHODS[name]
    if method.shape_modelled:
        cfg, tensors = modelled_adapter(name)
    else:
        cfg = config(name)
        tensors = {n: TensorInfo("F32", (4, 8)) for n in method.prompt_tensors} or {
            f"{MODEL_PREFIX}{MODULE}.{next(iter(method.components))}": TensorInfo("F32", (4,))
        }
    report = serving_support(cfg, tensors)
    for target in SERVING_TARGETS:
        assert report[target]["supported"] == (target in method.serving), (target, report)
        codes = {r["code"] for r in report[target]["reasons"]}
        assert ("peft_type" in codes) == (target not in method.serving)
