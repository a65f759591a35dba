"""What a recorded export must be: a checkpoint that loads, holding exactly its base's tensors.

Read from headers only (range reads from the blob store), like a base registration: config.json
parses, every safetensors header is valid, the index (if any) names exactly the shards' tensors,
and the tensor names, shapes and dtypes are what a merge of this base produces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from registry.errors import InvalidBaseModel, InvalidExport, UnsafeFormat
from registry.formats import PICKLE_SUFFIXES, FileAccess, TensorInfo
from registry.formats.checkpoint import CONFIG, INDEX, read_checkpoint
from registry.formats.peft import INPUT_EMBEDDING_NAMES

# Safetensors names of the dtypes an export is cast to; "mixed" keeps each base tensor's own.
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
# The floating types a merge casts (registry.merge.layout.FLOAT_DTYPES); others are copied.
_FLOATING = frozenset({"F16", "BF16", "F32", "F64"})
_EMBEDDING_SUFFIXES = tuple(f"{name}.weight" for name in INPUT_EMBEDDING_NAMES)


def check_export_files(
    paths: Sequence[str],
    files: FileAccess,
    *,
    base_tensors: dict[str, TensorInfo],
    base_config: dict[str, Any],
    dtype: str,
    max_header_bytes: int,
    max_config_bytes: int,
) -> None:
    """Refuse files that are not a merged checkpoint of this base in this dtype.

    Args:
        paths: The export's relative paths (already checked with ``check_paths``).
        files: Reads them (ranged reads of stored blobs).
        base_tensors: The base model's tensor manifest.
        base_config: The base model's config.json.
        dtype: The export's declared dtype ("float32", "float16", "bfloat16" or "mixed").
        max_header_bytes: Largest safetensors header read.
        max_config_bytes: Largest config.json read.

    Raises:
        UnsafeFormat: a pickle weight file.
        InvalidSafetensors, TooLarge: a malformed or oversized safetensors header.
        InvalidExport: anything else that would not load as this base, merged.
    """
    pickles = [p for p in paths if p.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UnsafeFormat(f"export file {pickles[0]} is a pickle file; exports are safetensors")
    try:
        checkpoint = read_checkpoint(paths, files, max_header_bytes=max_header_bytes,
                                     max_config_bytes=max_config_bytes)
    except InvalidBaseModel as exc:
        raise InvalidExport(f"the export is not a loadable checkpoint: {exc.detail}") from None
    stray = sorted(p for p in paths if p.lower().endswith(".safetensors")
                   and p not in checkpoint.weight_files)
    if stray:
        raise InvalidExport(
            f"export file {stray[0]} is not a shard of the checkpoint (not in {INDEX}, or not "
            "at the top level)"
        )
    if INDEX in paths:
        index = json.loads(files.read(INDEX, 0, files.size(INDEX)))  # parsed once already
        unlisted = sorted(set(checkpoint.tensors) - set(index["weight_map"]))
        if unlisted:
            raise InvalidExport(f"{INDEX} does not list tensor {unlisted[0]!r} of its shards")

    config = checkpoint.config
    for key in ("model_type", "architectures"):
        if key in base_config and config.get(key) != base_config[key]:
            raise InvalidExport(
                f"the export's {CONFIG} has {key} {config.get(key)!r}; the base has "
                f"{base_config[key]!r}"
            )
    _check_tensors(checkpoint.tensors, base_tensors, config=config, base_config=base_config,
                   dtype=dtype)


def _check_tensors(tensors: dict[str, TensorInfo], base: dict[str, TensorInfo], *,
                   config: dict[str, Any], base_config: dict[str, Any], dtype: str) -> None:
    missing = sorted(set(base) - set(tensors))
    if missing:
        raise InvalidExport(f"the export lacks base tensor {missing[0]!r} "
                            f"({len(missing)} missing)")
    for name, info in sorted(base.items()):
        if tensors[name].shape != info.shape:
            raise InvalidExport(
                f"export tensor {name!r} has shape {list(tensors[name].shape)}; the base's is "
                f"{list(info.shape)}"
            )
    extra = sorted(set(tensors) - set(base))
    if extra:
        # A merge writes one more tensor only when the adapter changed a tied output head
        # (lm_head.weight, absent from a tied checkpoint): it then unties the embeddings, and
        # the new head has the input embedding's shape.
        untied = base_config.get("tie_word_embeddings") is not False and (
            config.get("tie_word_embeddings") is False)
        embedding_shapes = {i.shape for n, i in base.items() if n.endswith(_EMBEDDING_SUFFIXES)}
        for name in extra:
            if not untied or tensors[name].shape not in embedding_shapes:
                raise InvalidExport(f"export tensor {name!r} is not a tensor of the base")
    wanted = _DTYPE_NAMES.get(dtype)
    for name, info in sorted(tensors.items()):
        source = base.get(name) or next(i for n, i in base.items()
                                        if n.endswith(_EMBEDDING_SUFFIXES)
                                        and i.shape == info.shape)
        expected = wanted if wanted is not None and source.dtype in _FLOATING else source.dtype
        if info.dtype != expected:
            raise InvalidExport(
                f"export tensor {name!r} is {info.dtype}; a {dtype} export of this base has "
                f"{expected}"
            )
