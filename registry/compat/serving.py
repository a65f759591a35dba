"""Which common serving engines accept an adapter, from its config and tensor manifest alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.compat.findings import Finding
from registry.formats.peft import AdapterConfig
from registry.formats.peft_methods import (
    LORAX,
    PEFT_METHODS,
    SERVING_TARGETS,
    VLLM,
    serving_methods,
)
from registry.formats.safetensors import TensorInfo

__all__ = ["LORAX", "SERVING_TARGETS", "VLLM", "max_rank", "serving_support"]

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


def _method_refusal(target: str, config: AdapterConfig) -> list[Finding]:
    """The refusal of a method the target does not load (the table's `serving`), or none."""
    accepted = serving_methods(target)
    if config.peft_type in accepted:
        return []
    shown = " and ".join(PEFT_METHODS[m].display for m in accepted)
    return [
        _refusal(
            target,
            "peft_type",
            f"serves {shown} adapters only, not {config.peft_type}",
            expected=accepted[0] if len(accepted) == 1 else accepted,
            found=config.peft_type,
        )
    ]


def _rank_refusal(target: str, limit: int, rank: int | None) -> list[Finding]:
    if rank is None or rank <= limit:
        return []
    message = f"supports ranks up to {limit}; this adapter has rank {rank}"
    return [_refusal(target, "rank", message, expected=limit, found=rank)]


def serving_support(
    config: AdapterConfig, adapter_tensors: Mapping[str, TensorInfo]
) -> dict[str, dict[str, Any]]:
    """Per serving target, whether it loads the adapter and, if not, why.

    Encoded rules: each target loads the methods the table in registry.formats.peft_methods
    lists for it (LoRA only, for both); vLLM refuses DoRA, modules_to_save, bias (`bias` other
    than "none" or `lora_bias`) and a rank above 512; LoRAX refuses a rank above 128. The rank
    is the largest of any module, so rank_pattern counts.

    Args:
        config: The adapter config.
        adapter_tensors: The manifest of adapter_model.safetensors.

    Returns:
        {"vllm": {"supported": bool, "reasons": [finding JSON, ...]}, "lorax": {...}}.
    """
    rank = max_rank(config, adapter_tensors)
    out: dict[str, dict[str, Any]] = {}

    vllm = _method_refusal(VLLM, config)
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
        vllm += _rank_refusal(VLLM, VLLM_MAX_RANK, rank)
    out[VLLM] = {"supported": not vllm, "reasons": [f.to_json() for f in vllm]}

    lorax = _method_refusal(LORAX, config)
    if not lorax:
        lorax += _rank_refusal(LORAX, LORAX_MAX_RANK, rank)
    out[LORAX] = {"supported": not lorax, "reasons": [f.to_json() for f in lorax]}
    return out
