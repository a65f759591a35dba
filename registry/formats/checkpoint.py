"""Hugging Face checkpoint directories: config.json plus safetensors weights, read header-only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidBaseModel, TooLarge, UnsafeFormat
from registry.formats.adapter import PICKLE_SUFFIXES, FileAccess
from registry.formats.safetensors import TensorInfo, parse_header

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """What a base checkpoint declares: its config and the tensor manifest of its weights."""

    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_files: list[str]
    tensor_file: dict[str, str]  # tensor name -> the shard holding it

    def manifest_json(self) -> dict[str, dict[str, Any]]:
        return {name: self.tensors[name].to_json() for name in sorted(self.tensors)}


def _read_json(files: FileAccess, path: str, *, limit: int) -> Any:
    size = files.size(path)
    if size > limit:
        raise TooLarge(f"{path} is {size} bytes, over the limit of {limit}")
    try:
        return json.loads(files.read(path, 0, size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBaseModel(f"{path} is not valid JSON: {exc}") from None


def is_weight_candidate(path: str) -> bool:
    """Files that hold weights at the top level of a checkpoint (not adapters or subfolders)."""
    return "/" not in path and path.endswith(".safetensors")


def read_checkpoint(
    paths: Sequence[str], files: FileAccess, *, max_header_bytes: int, max_config_bytes: int
) -> Checkpoint:
    """Validate a checkpoint's file set and read its manifest from the safetensors headers.

    Sharded checkpoints are read through ``model.safetensors.index.json``: every shard it names
    must be present and every tensor it maps must be in that shard's header.

    Args:
        paths: relative file paths of the checkpoint.
        files: access to those files (local directory, blob store, remote store).
        max_header_bytes: largest safetensors header accepted.
        max_config_bytes: largest config.json / index accepted.

    Returns:
        The config and the tensor manifest.

    Raises:
        InvalidBaseModel: no config.json, no safetensors weights, or an inconsistent index.
        UnsafeFormat: only pickle weights are present.
        InvalidSafetensors, TooLarge: a malformed or oversized header.
    """
    present = set(paths)
    if CONFIG not in present:
        raise InvalidBaseModel("the checkpoint has no config.json")
    config = _read_json(files, CONFIG, limit=max_config_bytes)
    if not isinstance(config, dict):
        raise InvalidBaseModel("config.json is not a JSON object")

    if INDEX in present:
        index = _read_json(files, INDEX, limit=MAX_INDEX_BYTES)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise InvalidBaseModel(f"{INDEX} has no valid weight_map")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if shard not in present:
                raise InvalidBaseModel(f"{INDEX} names shard {shard!r}, which is missing")
    else:
        weight_map = None
        shards = sorted(p for p in present if is_weight_candidate(p))
    if not shards:
        pickles = sorted(p for p in present if p.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise UnsafeFormat(
                f"the checkpoint has only pickle weights ({', '.join(pickles[:3])}); pickle is "
                "refused. Convert it: load it with transformers and save_pretrained(dir, "
                "safe_serialization=True)"
            )
        raise InvalidBaseModel("the checkpoint has no safetensors weights (model.safetensors)")

    tensors: dict[str, TensorInfo] = {}
    tensor_file: dict[str, str] = {}
    for shard in shards:

        def read_at(offset: int, length: int, shard: str = shard) -> bytes:
            return files.read(shard, offset, length)

        header = parse_header(
            read_at,
            file_size=files.size(shard),
            max_header_bytes=max_header_bytes,
            name=shard,
        )
        for name, info in header.items():
            if name in tensors:
                raise InvalidBaseModel(
                    f"tensor {name!r} appears in {tensor_file[name]} and {shard}"
                )
            tensors[name] = info
            tensor_file[name] = shard
    if weight_map is not None:
        for name, shard in weight_map.items():
            if tensor_file.get(name) != shard:
                raise InvalidBaseModel(
                    f"{INDEX} maps {name!r} to {shard}, but that shard does not hold it"
                )
    if not tensors:
        raise InvalidBaseModel("the checkpoint's safetensors files hold no tensors")
    return Checkpoint(config=config, tensors=tensors, weight_files=shards, tensor_file=tensor_file)
