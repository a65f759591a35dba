"""Which common serving engines accept an adapter, from its config and tensor manifest alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.compat.findings import Finding
from registry.formats.peft import AdapterConfig
from registry.formats.safetensors import TensorInfo

VLLM = "vllm"
LORAX = "lorax"
SERVING_TARGETS: tuple[str, ...] = (VLLM, LORAX)

# vLLM's --max-lora-rank is a server setting (default 16); 512 is the largest value it offers,
# so an adapter above it cannot be served however the server is configured. LoRAX's kernels
# stop at 128.
VLLM_MAX_RANK = 512
LORAX_MAX_RANK = 128

_DISPLAY = {VLLM: "vLLM", LORAX: "LoRAX"}


def max_rank(config: AdapterConfig, adapter_tensors: Mapping[str, TensorInfo]) -> int | None:
    """The largest LoRA rank of any module: from the tensors, else from r and rank_pattern.

    Args:
        config: The adapter config.
        adapter_tensors: The manifest of adapter_model.safetensors.

    Returns:
        The rank, or None for a method without one.
    """
    ranks = [
        info.shape[0]
        for name, info in adapter_tensors.items()
        if info.shape and name.endswith((".lora_A.weight", ".lora_embedding_A"))
    ]
    if ranks:
        return max(ranks)
    declared = [r for r in (config.r, *config.rank_pattern.values()) if r is not None]
    return max(declared) if declared else None


def _bias(config: AdapterConfig, adapter_tensors: Mapping[str, TensorInfo]) -> str | None:
    bias = config.raw.get("bias") or "none"
    if bias != "none":
        return f"bias={bias!r}"
    if config.raw.get("lora_bias") or any(n.endswith(".lora_B.bias") for n in adapter_tensors):
        return "lora_bias=true"
    return None


def _refusal(target: str, code: str, message: str, **fields: Any) -> Finding:
    return Finding(code=code, message=f"{_DISPLAY[target]} {message}", **fields)


def _lora_only(target: str, config: AdapterConfig) -> list[Finding]:
    if config.peft_type == "LORA":
        return []
    return [
        _refusal(
            target,
            "peft_type",
            f"serves LoRA adapters only, not {config.peft_type}",
            expected="LORA",
            found=config.peft_type,
        )
    ]


def serving_support(
    config: AdapterConfig, adapter_tensors: Mapping[str, TensorInfo]
) -> dict[str, dict[str, Any]]:
    """Per serving target, whether it loads the adapter and, if not, why.

    Encoded rules: vLLM serves LoRA only and refuses DoRA, modules_to_save, bias (`bias` other
    than "none" or `lora_bias`) and a rank above 512; LoRAX serves LoRA only and refuses a rank
    above 128. The rank is the largest of any module, so rank_pattern counts.

    Args:
        config: The adapter config.
        adapter_tensors: The manifest of adapter_model.safetensors.

    Returns:
        {"vllm": {"supported": bool, "reasons": [finding JSON, ...]}, "lorax": {...}}.
    """
    rank = max_rank(config, adapter_tensors)
    out: dict[str, dict[str, Any]] = {}

    vllm = _lora_only(VLLM, config)
    if not vllm:
        has_magnitude = any(n.endswith(".lora_magnitude_vector") for n in adapter_tensors)
        if config.use_dora or has_magnitude:
            vllm.append(_refusal(VLLM, "dora", "does not support DoRA (use_dora)", found=True))
        if config.modules_to_save:
            vllm.append(
                _refusal(
                    VLLM,
                    "modules_to_save",
                    f"does not support modules_to_save {config.modules_to_save}",
                    found=list(config.modules_to_save),
                )
            )
        bias = _bias(config, adapter_tensors)
        if bias:
            vllm.append(
                _refusal(VLLM, "bias", f"does not load adapter biases ({bias})", found=bias)
            )
        if rank is not None and rank > VLLM_MAX_RANK:
            vllm.append(
                _refusal(
                    VLLM,
                    "rank",
                    f"supports ranks up to {VLLM_MAX_RANK}; this adapter has rank {rank}",
                    expected=VLLM_MAX_RANK,
                    found=rank,
                )
            )
    out[VLLM] = {"supported": not vllm, "reasons": [f.to_json() for f in vllm]}

    lorax = _lora_only(LORAX, config)
    if not lorax and rank is not None and rank > LORAX_MAX_RANK:
        lorax.append(
            _refusal(
                LORAX,
                "rank",
                f"supports ranks up to {LORAX_MAX_RANK}; this adapter has rank {rank}",
                expected=LORAX_MAX_RANK,
                found=rank,
            )
        )
    out[LORAX] = {"supported": not lorax, "reasons": [f.to_json() for f in lorax]}
    return out
