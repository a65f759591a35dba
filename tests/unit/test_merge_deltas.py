"""The merge math and plan_merge against peft's own merge, on tiny hand-built torch modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from registry.errors import IncompatibleBase, TensorMismatch, Unmergeable
from registry.formats.peft import AdapterConfig, parse_adapter_config
from registry.merge import (
    check_mergeable,
    dora_merge,
    ia3_merge,
    loha_delta,
    lokr_delta,
    lora_delta,
    lora_embedding_delta,
    lora_scale,
    plan_merge,
)


class Tiny(nn.Module):
    """Every layer kind merged export handles: Linear (with and without bias), Conv1D, Embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 12)
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12, bias=False)
        self.attn = Conv1D(36, 12)  # GPT-2 layout: weight [in=12, out=36]
        self.proj = Conv1D(12, 12)  # square: only the config says which way round
        self.head = nn.Linear(12, 11, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.down(torch.relu(self.up(h)))
        h = h + self.proj(self.attn(h)[..., :12])
        return self.head(h)


def _tiny(seed: int = 0) -> Tiny:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tiny().eval()


def _adapter(tmp: Path, peft_config: PeftConfig) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    model = get_peft_model(_tiny(), peft_config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(tmp))
    config = parse_adapter_config((tmp / "adapter_config.json").read_bytes())
    return config, load_file(tmp / "adapter_model.safetensors")


def _reference(tmp: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return PeftModel.from_pretrained(_tiny(), tmp).merge_and_unload().state_dict()


def _merge(
    config: AdapterConfig,
    tensors: dict[str, torch.Tensor],
    *,
    block_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    base = _tiny().state_dict()
    plan = plan_merge(config, tensors, base_shapes={k: v.shape for k, v in base.items()})
    out = {}
    for name, w in base.items():
        w = w.float().clone()  # edits may work in place
        rows = w.shape[0]
        if block_rows is None or not plan.rowwise(name):
            out[name] = plan.apply(name, w, 0, rows)
        else:
            parts = [
                plan.apply(name, w[s : s + block_rows], s, min(rows, s + block_rows))
                for s in range(0, rows, block_rows)
            ]
            out[name] = torch.cat(parts)
    return out


def _assert_matches_peft(tmp: Path, peft_config: PeftConfig) -> dict[str, torch.Tensor]:
    config, tensors = _adapter(tmp, peft_config)
    ref = _reference(tmp)
    base = _tiny().state_dict()
    for block_rows in (None, 3):
        ours = _merge(config, tensors, block_rows=block_rows)
        assert set(ours) == set(ref)
        for name in ref:
            torch.testing.assert_close(ours[name], ref[name], atol=1e-6, rtol=0, msg=name)
    changed = {n for n in ref if not torch.equal(ref[n], base[n])}
    assert changed, "the adapter changed nothing; the comparison would be vacuous"
    return {n: ref[n] for n in changed}


# --- the formulas -------------------------------------------------------------------------------


def test_lora_scale() -> None:
    assert lora_scale(alpha=16, r=4) == 4.0
    assert lora_scale(alpha=16, r=4, use_rslora=True) == 8.0


def test_lora_delta_layouts() -> None:
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    torch.testing.assert_close(lora_delta(a, b, scale=0.5), 0.5 * b @ a)
    torch.testing.assert_close(lora_delta(a, b, scale=0.5, fan_in_fan_out=True), 0.5 * (b @ a).T)
    ea, eb = torch.randn(2, 7), torch.randn(4, 2)
    assert lora_embedding_delta(ea, eb, scale=1.0).shape == (7, 4)


def test_dora_merge_rows_have_the_magnitude_as_norm() -> None:
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    m = torch.rand(6) + 0.5
    merged = dora_merge(w, a, b, m, scale=2.0)
    torch.testing.assert_close(torch.linalg.norm(merged, dim=1), m)
    merged_t = dora_merge(w.T.contiguous(), a, b, m, scale=2.0, fan_in_fan_out=True)
    torch.testing.assert_close(merged_t, merged.T)


def test_ia3_loha_lokr_formulas() -> None:
    w = torch.randn(4, 6)
    ff, rows = torch.rand(1, 6), torch.rand(4, 1)
    torch.testing.assert_close(ia3_merge(w, ff), w * ff)
    torch.testing.assert_close(ia3_merge(w, rows), w * rows)
    torch.testing.assert_close(ia3_merge(w.T, rows, fan_in_fan_out=True), (w * rows).T)
    w1a, w1b, w2a, w2b = torch.randn(4, 2), torch.randn(2, 6), torch.randn(4, 2), torch.randn(2, 6)
    torch.testing.assert_close(
        loha_delta(w1a, w1b, w2a, w2b, scale=3.0, shape=(4, 6)), 3.0 * (w1a @ w1b) * (w2a @ w2b)
    )
    k1, k2 = torch.randn(2, 3), torch.randn(2, 2)
    assert lokr_delta(k1, k2, scale=1.0, shape=(4, 6)).shape == (4, 6)


# --- plan_merge against peft's merge_and_unload -------------------------------------------------

CASES: dict[str, PeftConfig] = {
    "lora": LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]),
    "lora_patterns": LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["up", "down", "head"],
        rank_pattern={"down": 3},
        alpha_pattern={"^head$": 1.5, "up": 7},
    ),
    "rslora": LoraConfig(r=4, lora_alpha=4, target_modules=["up", "down"], use_rslora=True),
    "lora_bias": LoraConfig(r=2, lora_alpha=4, target_modules=["up"], lora_bias=True),
    "lora_conv1d": LoraConfig(r=2, lora_alpha=4, target_modules=["attn", "proj"],
                              fan_in_fan_out=True),
    "lora_embedding": LoraConfig(r=2, lora_alpha=4, target_modules=["emb", "up"]),
    "dora": LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"], use_dora=True),
    "dora_conv1d": LoraConfig(r=2, lora_alpha=4, target_modules=["attn", "proj"],
                              fan_in_fan_out=True, use_dora=True),
    "dora_embedding": LoraConfig(r=2, lora_alpha=4, target_modules=["emb"], use_dora=True),
    "modules_to_save": LoraConfig(r=2, lora_alpha=4, target_modules=["up"],
                                  modules_to_save=["head", "down"]),
    "bias_all": LoraConfig(r=2, lora_alpha=4, target_modules=["up"], bias="all"),
    "ia3": IA3Config(target_modules=["up", "down"], feedforward_modules=["down"]),
    "ia3_conv1d": IA3Config(target_modules=["attn", "proj"], feedforward_modules=["proj"],
                            fan_in_fan_out=True),
    "ia3_regex_ff": IA3Config(target_modules=r".*(up|down)", feedforward_modules=r".*up"),
    "loha": LoHaConfig(r=2, alpha=3, target_modules=["up", "down"],
                       rank_pattern={"down": 3}, alpha_pattern={"down": 5}),
    "lokr": LoKrConfig(r=2, alpha=3, target_modules=["up", "down"]),
    "lokr_decomposed": LoKrConfig(r=1, alpha=3, target_modules=["up", "down"],
                                  decompose_both=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_peft_merge(case: str, tmp_path: Path) -> None:
    changed = _assert_matches_peft(tmp_path, CASES[case])
    if case == "lora_bias":
        assert "up.bias" in changed
    if case == "ia3":
        assert "up.bias" in changed  # non-feedforward biases are scaled too
    if case == "lokr_decomposed":
        tensors = load_file(tmp_path / "adapter_model.safetensors")
        assert any(n.endswith("lokr_w1_a") for n in tensors)
        assert any(n.endswith("lokr_w2_a") for n in tensors)


def test_fan_in_fan_out_follows_the_layer_not_the_config(tmp_path: Path) -> None:
    # peft flips fan_in_fan_out to fit the wrapped layer when it loads; so does the plan.
    config, tensors = _adapter(tmp_path, LoraConfig(r=2, lora_alpha=4, target_modules=["attn"],
                                                    fan_in_fan_out=True))
    raw = {**config.raw, "fan_in_fan_out": False}
    flipped = parse_adapter_config(json.dumps(raw).encode())
    ours = _merge(flipped, tensors)
    torch.testing.assert_close(ours["attn.weight"], _reference(tmp_path)["attn.weight"])


def test_base_names_without_the_task_prefix_resolve(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["lora"])
    base = {f"model.{k}": v.shape for k, v in _tiny().state_dict().items()}
    plan = plan_merge(config, tensors, base_shapes=base)
    assert set(plan.edits) == {"model.up.weight", "model.down.weight"}
    assert plan.modules == ("down", "up")


# --- refusals -----------------------------------------------------------------------------------


def _config(**fields: Any) -> AdapterConfig:
    return parse_adapter_config(json.dumps(fields).encode())


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"peft_type": "PROMPT_TUNING"}, "nothing to merge"),
        ({"peft_type": "PREFIX_TUNING"}, "nothing to merge"),
        ({"peft_type": "ADAPTION_PROMPT"}, "nothing to merge"),
        ({"peft_type": "VERA", "r": 4}, "not supported by merged export"),
        ({"peft_type": "LORA", "r": 4, "alora_invocation_tokens": [5]}, "Activated LoRA"),
        ({"peft_type": "LORA", "r": 4, "layer_replication": [[0, 1]]}, "layer structure"),
        ({"peft_type": "LORA", "r": 4, "trainable_token_indices": [1]}, "trainable tokens"),
    ],
)
def test_unmergeable_configs(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(Unmergeable, match=needle):
        check_mergeable(_config(**fields))


def test_conv2d_lora_is_refused(tmp_path: Path) -> None:
    class WithConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

    model = get_peft_model(WithConv(), LoraConfig(r=2, target_modules=["conv"]))
    model.save_pretrained(str(tmp_path))
    config = parse_adapter_config((tmp_path / "adapter_config.json").read_bytes())
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    with pytest.raises(Unmergeable, match="convolution"):
        plan_merge(config, tensors, base_shapes={"conv.weight": (4, 3, 3, 3), "conv.bias": (4,)})


def test_missing_modules_are_all_named(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["lora"])
    base = {k: v.shape for k, v in _tiny().state_dict().items() if not k.startswith(("up", "down"))}
    with pytest.raises(IncompatibleBase) as info:
        plan_merge(config, tensors, base_shapes=base)
    assert "'down'" in str(info.value) and "'up'" in str(info.value)
    assert "up.weight" in str(info.value)


def test_shape_mismatch_names_expected_and_found(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["lora"])
    base = {k: v.shape for k, v in _tiny().state_dict().items()}
    base["up.weight"] = torch.Size([24, 12])
    with pytest.raises(IncompatibleBase, match=r"'up'.*\[20, 12\].*\[24, 12\]"):
        plan_merge(config, tensors, base_shapes=base)


def test_modules_to_save_shape_mismatch(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["modules_to_save"])
    base = {k: v.shape for k, v in _tiny().state_dict().items()}
    base["head.weight"] = torch.Size([13, 12])
    with pytest.raises(IncompatibleBase, match=r"head\.weight"):
        plan_merge(config, tensors, base_shapes=base)


def test_lora_bias_needs_a_base_bias(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["lora_bias"])
    base = {k: v.shape for k, v in _tiny().state_dict().items() if k != "up.bias"}
    with pytest.raises(IncompatibleBase, match=r"up\.bias"):
        plan_merge(config, tensors, base_shapes=base)


def test_rank_disagreeing_with_config_is_a_tensor_mismatch(tmp_path: Path) -> None:
    config, tensors = _adapter(tmp_path, CASES["lora"])
    wrong = parse_adapter_config(json.dumps({**config.raw, "r": 3}).encode())
    base = {k: v.shape for k, v in _tiny().state_dict().items()}
    with pytest.raises(TensorMismatch, match="rank 3"):
        plan_merge(wrong, tensors, base_shapes=base)
