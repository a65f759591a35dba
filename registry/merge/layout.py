"""The output layout of a merged export (ExportPlan): every check made before writing, tied
embeddings, the output shards.

Everything here works from the base's headers and small JSON files, so a bad adapter, base or
argument is refused before the first byte of output exists. The adapter's own edits come from
`registry.merge.edits` (a MergePlan); an ExportPlan holds that MergePlan and where every output
tensor goes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from registry.errors import InvalidBaseModel, InvalidInput, QuantizedBase
from registry.formats.peft import INPUT_EMBEDDING_NAMES, AdapterConfig
from registry.merge.edits import MergePlan, plan_merge
from registry.merge.files import (
    CONFIG,
    SAFE_INDEX,
    BaseFiles,
    Entry,
    read_header,
    read_json,
    weight_files,
)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Safetensors dtype names <-> torch, for the floating types that can be merged or converted.
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_ST_NAME = {v: k for k, v in FLOAT_DTYPES.items()}
_TORCH_NAME = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

# Input embeddings a tied output head can share, when transformers cannot tell us the pair.
_INPUT_EMBEDDING_SUFFIXES = tuple(sorted(f"{name}.weight" for name in INPUT_EMBEDDING_NAMES))


def check_args(dtype: str | None, device: str, max_shard_bytes: int) -> torch.device:
    """Validate merge_to_dir's plain arguments; returns the device to merge on."""
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise InvalidInput(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"device must be 'cpu' or 'cuda', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInput(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' was requested but torch finds no CUDA device")
    return dev


# --- tied embeddings --------------------------------------------------------------------------


def _tie_enabled(config: dict[str, Any]) -> bool:
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    with contextlib.suppress(Exception):
        from transformers import AutoConfig  # local: transformers costs ~1 s of start-up

        cfg = AutoConfig.for_model(**config)
        return bool(getattr(cfg, "tie_word_embeddings", False))
    return False


def _tied_pairs(config: dict[str, Any], names: Mapping[str, Entry]) -> dict[str, str]:
    """Tied target -> source tensor names (e.g. lm_head.weight -> model.embed_tokens.weight)."""
    pairs: dict[str, str] = {}
    with contextlib.suppress(Exception):
        # The model class knows its tied keys; building it on the meta device costs no memory.
        import transformers  # local: transformers costs ~1 s of start-up

        arch = (config.get("architectures") or [None])[0]
        cls = getattr(transformers, str(arch), None)
        if cls is not None:
            cfg = transformers.AutoConfig.for_model(**config)
            with torch.device("meta"):
                model = cls(cfg)
            tied = getattr(model, "all_tied_weights_keys", None) or getattr(
                model, "_tied_weights_keys", None
            )
            if isinstance(tied, dict):
                pairs = {str(k): str(v) for k, v in tied.items()}
    if not pairs:
        source = next((n for n in sorted(names) if n.endswith(_INPUT_EMBEDDING_SUFFIXES)), None)
        if source is not None:
            pairs = {"lm_head.weight": source}
    return {t: s for t, s in pairs.items() if s in names or t in names}


# --- output layout ----------------------------------------------------------------------------


@dataclass
class OutTensor:
    """One output tensor: the base tensor it comes from and where it goes."""

    name: str
    source: Entry
    out_dtype: str
    nbytes: int
    shard: int = 0
    offset: int = 0  # within the shard's data section


@dataclass
class OutShard:
    """One output shard: its tensors in order and the size of its data section."""

    tensors: list[OutTensor] = field(default_factory=list)
    size: int = 0


def _pack(tensors: list[OutTensor], max_bytes: int) -> list[OutShard]:
    shards: list[OutShard] = [OutShard()]
    for t in tensors:
        cur = shards[-1]
        # A tensor larger than the limit gets a shard of its own, as transformers does.
        if cur.tensors and cur.size + t.nbytes > max_bytes:
            cur = OutShard()
            shards.append(cur)
        t.shard = len(shards) - 1
        t.offset = cur.size
        cur.tensors.append(t)
        cur.size += t.nbytes
    return shards


@dataclass(frozen=True)
class ExportPlan:
    """What an export will write, decided before anything is.

    `merge` is the adapter's MergePlan (per-tensor edits); `shards` the output shard layout;
    `copied` are the base's non-weight files, copied as they are except config.json, which is
    rewritten when `new_config` differs from `config`; `dtype` is the one MergeResult reports.
    """

    merge: MergePlan
    shards: list[OutShard]
    copied: list[str]
    config: dict[str, Any]
    new_config: dict[str, Any]
    dtype: str


def plan_export(
    base: BaseFiles,
    adapter_config: AdapterConfig,
    adapter_weights: Path,
    *,
    dtype: str | None,
    max_shard_bytes: int,
    dev: torch.device,
) -> ExportPlan:
    """Read the base's headers, check the adapter against them (its MergePlan), lay out the shards.

    Args:
        base: Where the base checkpoint's files come from.
        adapter_config: The adapter's parsed adapter_config.json (already checked mergeable).
        adapter_weights: The adapter's adapter_model.safetensors (loaded whole: it is small).
        dtype: Output dtype of every floating tensor, or None to keep each base tensor's.
        max_shard_bytes: Largest output shard.
        dev: The device the merge will compute on.

    Returns:
        The ExportPlan merge_to_dir writes.

    Raises:
        QuantizedBase, IncompatibleBase, InvalidBaseModel: as merge_to_dir documents.
    """
    files = base.list_files()
    shard_files, weight_like, weight_map = weight_files(base, files)
    config: dict[str, Any] = read_json(base, CONFIG) if CONFIG in files else {}
    if not isinstance(config, dict):
        raise InvalidBaseModel(f"base {CONFIG} is not a JSON object")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise QuantizedBase(
            f"the base model is quantized (quantization_config, quant_method={method!r}); "
            f"merge into the unquantized base model instead"
        )

    entries: dict[str, Entry] = {}
    for shard in shard_files:
        for name, entry in read_header(base, shard).items():
            if name in entries:
                raise InvalidBaseModel(f"base tensor {name} is in both {entries[name].file} and "
                                       f"{shard}")
            entries[name] = entry
    if weight_map is not None:
        wrong = sorted(n for n in entries if weight_map.get(n) != entries[n].file)
        wrong += sorted(n for n in weight_map if n not in entries)
        if wrong:
            raise InvalidBaseModel(
                f"base {SAFE_INDEX} does not match the shards' contents (first: {wrong[0]})"
            )

    # Tied output embeddings are usually absent from the checkpoint; expose them to plan_merge so
    # an adapter on lm_head resolves, and materialise them only if the pair diverges.
    tied = _tied_pairs(config, entries) if _tie_enabled(config) else {}
    shapes: dict[str, tuple[int, ...]] = {n: e.shape for n, e in entries.items()}
    for target, source in tied.items():
        if target not in shapes and source in shapes:
            shapes[target] = shapes[source]

    adapter = load_file(str(adapter_weights))
    merge_plan = plan_merge(adapter_config, adapter, base_shapes=shapes, device=dev)
    del adapter

    diverged = {t for t, s in tied.items() if t in merge_plan.edits or s in merge_plan.edits}
    for name, edits in merge_plan.edits.items():
        found = entries.get(name) or entries.get(tied.get(name, ""))
        if found is not None and found.dtype not in FLOAT_DTYPES:
            raise QuantizedBase(
                f"base tensor {name} ({edits[0].method} on module {edits[0].module!r}) is "
                f"{found.dtype}; adapters can only be merged into float16/bfloat16/float32 "
                f"weights, not quantized ones"
            )

    # Output tensors in base order (shard by shard, by offset); a diverged tied target that the
    # checkpoint lacks is written right after its source.
    out_tensors: list[OutTensor] = []
    synthesized = {tied[t]: t for t in diverged if t not in entries and tied[t] in entries}
    shard_order = {f: i for i, f in enumerate(shard_files)}
    for name, entry in sorted(entries.items(), key=lambda kv: (shard_order[kv[1].file],
                                                               kv[1].offset)):
        for out_name in (name, synthesized.get(name)):
            if out_name is None:
                continue
            out_dtype = entry.dtype
            if dtype is not None and entry.dtype in FLOAT_DTYPES:
                out_dtype = _ST_NAME[DTYPES[dtype]]
            nbytes = entry.nbytes
            if out_dtype != entry.dtype:
                nbytes = math.prod(entry.shape) * FLOAT_DTYPES[out_dtype].itemsize
            out_tensors.append(OutTensor(out_name, entry, out_dtype, nbytes))
    shards = _pack(out_tensors, max_shard_bytes)

    new_config = dict(config)
    if diverged:
        new_config["tie_word_embeddings"] = False
    if dtype is not None:
        keys = [k for k in ("dtype", "torch_dtype") if k in new_config] or ["torch_dtype"]
        for k in keys:
            new_config[k] = dtype
    float_out = {t.out_dtype for t in out_tensors if t.out_dtype in FLOAT_DTYPES}
    result_dtype = dtype or (_TORCH_NAME[float_out.pop()] if len(float_out) == 1 else "mixed")

    return ExportPlan(
        merge=merge_plan,
        shards=shards,
        copied=[f for f in files if f not in weight_like and f not in shard_files],
        config=config,
        new_config=new_config,
        dtype=result_dtype,
    )
