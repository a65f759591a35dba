"""Pure format layer: safetensors headers, PEFT configs, adapter file sets (no DB, no torch)."""

from registry.formats.adapter import (
    CONFIG_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    AdapterInspection,
    FileAccess,
    Limits,
    LocalDirAccess,
    check_paths,
    inspect_adapter,
    list_local_files,
    normalize_path,
)
from registry.formats.peft import AdapterConfig, check_tensors, parse_adapter_config
from registry.formats.peft_methods import (
    PEFT_METHODS,
    PEFT_TYPES,
    PeftMethod,
    get_pattern_key,
    module_alpha,
    module_rank,
)
from registry.formats.safetensors import (
    DTYPE_BITS,
    DTYPE_SIZES,
    ReadAt,
    TensorInfo,
    parse_header,
)

__all__ = [
    "CONFIG_FILE",
    "DTYPE_BITS",
    "DTYPE_SIZES",
    "PEFT_METHODS",
    "PEFT_TYPES",
    "PICKLE_SUFFIXES",
    "WEIGHTS_FILE",
    "AdapterConfig",
    "AdapterInspection",
    "FileAccess",
    "Limits",
    "LocalDirAccess",
    "PeftMethod",
    "ReadAt",
    "TensorInfo",
    "check_paths",
    "check_tensors",
    "get_pattern_key",
    "inspect_adapter",
    "list_local_files",
    "module_alpha",
    "module_rank",
    "normalize_path",
    "parse_adapter_config",
    "parse_header",
]
