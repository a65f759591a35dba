"""Merged export: fold a PEFT adapter into its base model's weights, streaming shard by shard."""

from registry.errors import IncompatibleBase, OutputExists, QuantizedBase
from registry.merge.edits import MergePlan, TensorEdit, check_mergeable, plan_merge
from registry.merge.files import BaseFiles, LocalDirFiles, RangeReadable
from registry.merge.math import (
    dora_embedding_merge,
    dora_merge,
    ia3_merge,
    ia3_merge_bias,
    loha_delta,
    lokr_delta,
    lora_delta,
    lora_embedding_delta,
    lora_scale,
)
from registry.merge.stream import MergeResult, merge_to_dir
from registry.merge.writer import ExportedFile

__all__ = [
    "BaseFiles",
    "ExportedFile",
    "IncompatibleBase",
    "LocalDirFiles",
    "MergePlan",
    "MergeResult",
    "OutputExists",
    "QuantizedBase",
    "RangeReadable",
    "TensorEdit",
    "check_mergeable",
    "dora_embedding_merge",
    "dora_merge",
    "ia3_merge",
    "ia3_merge_bias",
    "loha_delta",
    "lokr_delta",
    "lora_delta",
    "lora_embedding_delta",
    "lora_scale",
    "merge_to_dir",
    "plan_merge",
]
