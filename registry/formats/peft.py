"""PEFT adapter semantics: parse adapter_config.json and check tensors against it, without peft."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from registry.errors import InvalidAdapterConfig, TensorMismatch
from registry.formats.peft_methods import (
    ANY_SUFFIX,
    COMPONENTS,
    MODEL_PREFIX,
    PEFT_METHODS,
    PEFT_TYPES,
    PROMPT_LEARNING_TENSORS,
    PROMPT_MODEL_PREFIX,
    alpha_field,
    is_all_linear,
    module_rank,
    split_component,
)
from registry.formats.safetensors import TensorInfo

# Input embeddings and output heads in common transformers architectures (the modules
# get_input_embeddings() / get_output_embeddings() return).
INPUT_EMBEDDING_NAMES: frozenset[str] = frozenset(
    {"embed_tokens", "wte", "word_embeddings", "embed_in", "shared"}
)
OUTPUT_HEAD_NAMES: frozenset[str] = frozenset({"lm_head", "embed_out"})
# Embedding modules that peft saves whole (`<module>.weight`) when the vocabulary was resized
# during fine-tuning (save_embedding_layers).
RESIZED_EMBEDDING_NAMES: frozenset[str] = INPUT_EMBEDDING_NAMES | OUTPUT_HEAD_NAMES

# Methods whose rank_pattern values are not ranks (OSF stores fractions); kept in raw only.
_FREE_FORM_RANK_PATTERN = frozenset({"OSF"})


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json the registry relies on, plus the full parsed object.

    `lora_alpha` holds `lora_alpha`, or `alpha` for LoHa/LoKr which name it that way.
    For AdaLoRA, `rank_pattern` values (lists of kept-rank booleans) are stored as their count.
    """

    peft_type: str
    task_type: str | None
    r: int | None
    lora_alpha: float | None
    target_modules: list[str] | str | None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    modules_to_save: list[str] = field(default_factory=list)
    use_dora: bool = False
    base_model_name_or_path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_prompt_learning(self) -> bool:
        """True for methods that save top-level prompt tensors instead of per-module ones."""
        return self.peft_type in PROMPT_LEARNING_TENSORS


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_adapter_config(data: bytes, *, name: str = "adapter_config.json") -> AdapterConfig:
    """Parse and type-check adapter_config.json.

    Unknown fields are accepted and kept in `raw`, since newer PEFT versions add fields.

    Args:
        data: The file content.
        name: File name used in error messages.

    Returns:
        The parsed AdapterConfig.

    Raises:
        InvalidAdapterConfig: Not a UTF-8 JSON object, missing/unknown peft_type, or a known
            field with the wrong type.
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidAdapterConfig(f"{name} is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidAdapterConfig(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidAdapterConfig(f"{name} must be a JSON object, got {type(raw).__name__}")

    def bad(key: str, expected: str) -> InvalidAdapterConfig:
        return InvalidAdapterConfig(f"{name}: {key} must be {expected}, got {raw[key]!r}")

    peft_type = raw.get("peft_type")
    if peft_type is None:
        raise InvalidAdapterConfig(f"{name}: peft_type is missing")
    if not isinstance(peft_type, str):
        raise bad("peft_type", "a string")
    if peft_type not in PEFT_TYPES:
        raise InvalidAdapterConfig(
            f"{name}: unknown peft_type {peft_type!r}; known types include LORA, ADALORA, IA3, "
            f"LOHA, LOKR, PROMPT_TUNING, PREFIX_TUNING ({len(PEFT_TYPES)} in all)"
        )

    task_type = raw.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        raise bad("task_type", "a string or null")

    r = raw.get("r")
    # OFT saves r=0 to mean "derive r from oft_block_size"; only OFT may do that.
    r_ok = _is_int(r) and (r > 0 or (r == 0 and peft_type == "OFT"))
    if r is not None and not r_ok:
        raise bad("r", "a positive integer")

    # LoHa and LoKr name it `alpha`; a `lora_alpha` present wins, as it always did here.
    alpha_key = "lora_alpha" if "lora_alpha" in raw else alpha_field(peft_type)
    lora_alpha = raw.get(alpha_key)
    if lora_alpha is not None and not _is_number(lora_alpha):
        raise bad(alpha_key, "a number")

    target_modules = raw.get("target_modules")
    if target_modules is not None and not (
        isinstance(target_modules, str)
        or (isinstance(target_modules, list) and all(isinstance(t, str) for t in target_modules))
    ):
        raise bad("target_modules", "a list of strings, a regex string or null")
    if isinstance(target_modules, str):
        _check_regex(target_modules, f"{name}: target_modules")

    rank_pattern = _parse_rank_pattern(raw, peft_type, name)
    alpha_pattern = raw.get("alpha_pattern") or {}
    if not (isinstance(alpha_pattern, dict) and all(_is_number(v) for v in alpha_pattern.values())):
        raise bad("alpha_pattern", "an object of module pattern to number")
    for key in alpha_pattern:
        _check_regex(key, f"{name}: alpha_pattern key")

    modules_to_save = raw.get("modules_to_save") or []
    if isinstance(modules_to_save, str):
        # LN_TUNING allows a single module name here.
        modules_to_save = [modules_to_save]
    # An empty name would match every module (peft matches by suffix) and whitelist any tensor.
    if not (
        isinstance(modules_to_save, list) and all(isinstance(m, str) and m for m in modules_to_save)
    ):
        raise bad("modules_to_save", "a list of non-empty strings or null")

    use_dora = raw.get("use_dora")
    if use_dora is not None and not isinstance(use_dora, bool):
        raise bad("use_dora", "a boolean")
    for key in ("lora_bias", "fan_in_fan_out", "inference_mode"):
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise bad(key, "a boolean")
    if raw.get("bias") is not None and not isinstance(raw["bias"], str):
        raise bad("bias", 'a string ("none", "all" or "lora_only")')

    base = raw.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise bad("base_model_name_or_path", "a string or null")

    return AdapterConfig(
        peft_type=peft_type,
        task_type=task_type,
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules) if isinstance(target_modules, list) else target_modules,
        rank_pattern=rank_pattern,
        alpha_pattern={k: v for k, v in alpha_pattern.items()},
        modules_to_save=list(modules_to_save),
        use_dora=bool(use_dora),
        base_model_name_or_path=base,
        raw=raw,
    )


def _check_regex(pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidAdapterConfig(f"{what} {pattern!r} is not a valid regex: {exc}") from None


def _parse_rank_pattern(raw: dict[str, Any], peft_type: str, name: str) -> dict[str, int]:
    rank_pattern = raw.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        raise InvalidAdapterConfig(
            f"{name}: rank_pattern must be an object of module pattern to positive integer, "
            f"got {rank_pattern!r}"
        )
    out: dict[str, int] = {}
    if peft_type in _FREE_FORM_RANK_PATTERN:
        return out
    for key, value in rank_pattern.items():
        if peft_type == "ADALORA" and isinstance(value, list):
            # AdaLoRA stores the pruning mask of each module; the kept rank is its count.
            if not all(isinstance(v, bool) for v in value):
                raise InvalidAdapterConfig(
                    f"{name}: rank_pattern[{key!r}] must be a list of booleans, got {value!r}"
                )
            out[key] = sum(value)
            continue
        if not (_is_int(value) and value > 0):
            raise InvalidAdapterConfig(
                f"{name}: rank_pattern[{key!r}] must be a positive integer, got {value!r}"
            )
        _check_regex(key, f"{name}: rank_pattern key")
        out[key] = value
    return out


def _matches_target(target_modules: list[str] | str, module: str) -> bool:
    # peft.tuners.tuners_utils.check_target_module_exists: a string is a full-match regex, a list
    # matches a name exactly or as a dotted suffix.
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return module in target_modules or any(module.endswith(f".{t}") for t in target_modules)


def modules_to_save_root(modules_to_save: list[str], rel: str) -> str | None:
    """The module peft wrapped for a saved parameter: the shortest path ending with an entry.

    peft wraps every module whose name ends with a modules_to_save entry (plain endswith, as
    _set_trainable does) and saves that module's parameters under its name.

    Args:
        modules_to_save: The config's modules_to_save.
        rel: A parameter path relative to the wrapped model.

    Returns:
        The wrapped module's path, or None when the parameter is not under one.
    """
    segments = rel.split(".")
    for i in range(1, len(segments)):
        path = ".".join(segments[:i])
        if any(path.endswith(m) for m in modules_to_save):
            return path
    return None


@dataclass
class _Module:
    """The adapter tensors found for one adapted module: component -> (suffix, info, full name)."""

    parts: dict[str, tuple[str, TensorInfo, str]] = field(default_factory=dict)

    def get(self, component: str) -> TensorInfo | None:
        part = self.parts.get(component)
        return part[1] if part else None


def check_tensors(config: AdapterConfig, tensors: Mapping[str, TensorInfo]) -> None:
    """Check that the tensors of adapter_model.safetensors are what PEFT writes for `config`.

    Naming rules: prompt-learning methods hold only their top-level tensors (plus modules_to_save
    under "base_model."); LoRA, AdaLoRA, IA3, LoHa, LoKr and adaption prompt (the methods with
    components in registry.formats.peft_methods) hold per-module components under
    "base_model.model.<module>." plus what peft adds (modules_to_save parameters,
    `base_layer.weight` of targeted embeddings, biases per `bias`/`lora_bias`, trainable-token
    deltas, resized embeddings). Every other PEFT method falls back to
    accepting any name under "base_model." (VeRA-like methods keep shared tensors there).
    Shape rules: LoRA A/B pairs agree on rank and match rank_pattern or r; embedding LoRA,
    DoRA magnitudes, AdaLoRA triples, LoHa and LoKr factors are complete and consistent.

    Args:
        config: The parsed adapter config.
        tensors: The manifest of adapter_model.safetensors.

    Raises:
        TensorMismatch: The first tensor that does not fit, with expected vs found.
    """
    if not tensors:
        raise TensorMismatch("adapter_model.safetensors contains no tensors")
    peft_type = config.peft_type
    if config.is_prompt_learning:
        _check_prompt_learning(config, tensors)
    elif peft_type in COMPONENTS:
        modules = _collect_modules(config, tensors)
        _check_modules(config, modules)
    else:
        for tensor_name in sorted(tensors):
            if not tensor_name.startswith(PROMPT_MODEL_PREFIX):
                raise TensorMismatch(
                    f"tensor {tensor_name!r} is not under {PROMPT_MODEL_PREFIX!r}, where PEFT "
                    f"saves {peft_type} adapter weights"
                )


def _check_prompt_learning(config: AdapterConfig, tensors: Mapping[str, TensorInfo]) -> None:
    allowed = PROMPT_LEARNING_TENSORS[config.peft_type]
    for tensor_name in sorted(tensors):
        if tensor_name in allowed:
            continue
        rel = tensor_name.removeprefix(PROMPT_MODEL_PREFIX)
        if rel != tensor_name and modules_to_save_root(config.modules_to_save, rel) is not None:
            continue
        raise TensorMismatch(
            f"tensor {tensor_name!r} does not fit {config.peft_type}: expected only "
            f"{', '.join(sorted(allowed))}"
            + (
                f" or parameters of modules_to_save {config.modules_to_save}"
                if config.modules_to_save
                else ""
            )
        )
    if "prompt_embeddings" not in tensors:
        raise TensorMismatch(f"{config.peft_type} adapter has no prompt_embeddings tensor")
    emb = tensors["prompt_embeddings"]
    if len(emb.shape) != 2:
        raise TensorMismatch(
            "prompt_embeddings must be 2-D [num_virtual_tokens, dim], found shape "
            f"{list(emb.shape)}"
        )


def _foreign_method(rel: str, peft_type: str) -> str | None:
    """The other modelled method whose component appears in `rel`, e.g. "LORA (lora_A)"."""
    for other, comps in COMPONENTS.items():
        found = split_component(rel, comps) if other != peft_type else None
        if found:
            return f"{other} ({found[1]})"
    return None


def _collect_modules(
    config: AdapterConfig, tensors: Mapping[str, TensorInfo]
) -> dict[str, _Module]:
    peft_type = config.peft_type
    method = PEFT_METHODS[peft_type]
    components = method.components
    prefix = method.prefix
    raw = config.raw
    bias = raw.get("bias") or "none"
    has_trainable_tokens = raw.get("trainable_token_indices") is not None

    modules: dict[str, _Module] = {}
    extras: list[str] = []
    for tensor_name in sorted(tensors):
        info = tensors[tensor_name]
        if not tensor_name.startswith(MODEL_PREFIX):
            raise TensorMismatch(
                f"tensor {tensor_name!r} does not fit {peft_type}: expected a name under "
                f"{MODEL_PREFIX!r}"
            )
        rel = tensor_name[len(MODEL_PREFIX) :]
        split = split_component(rel, components)
        if split is None:
            extras.append(tensor_name)
            continue
        module, component, suffix = split
        flagged = method.flag_suffixes.get(component, {})
        allowed = components[component] | {s for s, flag in flagged.items() if raw.get(flag)}
        if suffix not in allowed and ANY_SUFFIX not in allowed:
            expected = " or ".join(
                f"{module}.{component}" + (f".{s}" if s else "") for s in sorted(allowed)
            )
            flag = flagged.get(suffix)
            raise TensorMismatch(
                f"tensor {tensor_name!r} does not fit {peft_type}: expected "
                f"{MODEL_PREFIX}{expected}"
                + (f" ({component}.{suffix} needs {flag}=true)" if flag else "")
            )
        if component == "lora_magnitude_vector" and not config.use_dora:
            raise TensorMismatch(
                f"tensor {tensor_name!r} is a DoRA magnitude vector but the config has "
                f"use_dora=false"
            )
        key = component if suffix in ("", "weight") else f"{component}.{suffix}"
        modules.setdefault(module, _Module()).parts[key] = (suffix, info, tensor_name)

    for tensor_name in extras:
        rel = tensor_name[len(MODEL_PREFIX) :]
        module, _, param = rel.rpartition(".")
        if param == "bias" and bias == "all":
            continue
        if module.endswith(".base_layer"):
            owner = module.removesuffix(".base_layer")
            if owner in modules and param == "bias" and bias.endswith("_only"):
                continue
            # save_embedding_layers: peft saves the wrapped weight of targeted embedding layers.
            if owner in modules and param == "weight" and _is_embedding(owner, modules[owner]):
                continue
        if (
            has_trainable_tokens
            and module.endswith(".token_adapter")
            and param == "trainable_tokens_delta"
        ):
            continue
        if modules_to_save_root(config.modules_to_save, rel) is not None:
            continue
        if param == "weight" and module.rpartition(".")[2] in RESIZED_EMBEDDING_NAMES:
            continue
        foreign = _foreign_method(rel, peft_type)
        if foreign:
            raise TensorMismatch(
                f"tensor {tensor_name!r} is a {foreign} tensor but the adapter's peft_type is "
                f"{peft_type}"
            )
        unknown = next((s for s in rel.split(".") if s.startswith(prefix)), None)
        detail = (
            f"{unknown!r} is not a {peft_type} component known to this registry"
            if unknown
            else f"expected <module>.{{{', '.join(sorted(components))}}}"
            + (
                f" or parameters of modules_to_save {config.modules_to_save}"
                if config.modules_to_save
                else ""
            )
        )
        raise TensorMismatch(f"tensor {tensor_name!r} does not fit {peft_type}: {detail}")

    targets = config.target_modules
    # Adaption prompt gives target_modules another meaning; parameter targeting names parameters.
    if (
        targets is not None
        and not is_all_linear(targets)
        and method.targets_modules
        and not raw.get("target_parameters")
    ):
        for module in sorted(modules):
            if not _matches_target(targets, module):
                raise TensorMismatch(
                    f"module {module!r} has {peft_type} tensors but does not match "
                    f"target_modules {targets!r}"
                )
    return modules


def _is_embedding(module_name: str, module: _Module) -> bool:
    return (
        "lora_embedding_A" in module.parts
        or module_name.rpartition(".")[2] in RESIZED_EMBEDDING_NAMES
    )


def _check_modules(config: AdapterConfig, modules: Mapping[str, _Module]) -> None:
    check = MODULE_CHECKS[config.peft_type]
    for module_name in sorted(modules):
        check(config, module_name, modules[module_name])


def _shape(info: TensorInfo) -> list[int]:
    return list(info.shape)


def _require_pair(module_name: str, module: _Module, a: str, b: str) -> None:
    has_a, has_b = a in module.parts, b in module.parts
    if has_a != has_b:
        present, missing = (a, b) if has_a else (b, a)
        raise TensorMismatch(f"module {module_name!r} has {present} but no {missing}")


def _require_ndim(module_name: str, component: str, info: TensorInfo, ndim: int) -> None:
    if len(info.shape) < ndim:
        raise TensorMismatch(
            f"{module_name}.{component} must have at least {ndim} dimensions, found shape "
            f"{_shape(info)}"
        )


def _check_rank(config: AdapterConfig, module_name: str, rank: int, detail: str) -> None:
    if config.raw.get("target_parameters"):
        # Parameter-targeting LoRA (e.g. MoE experts) multiplies the rank by the expert count.
        return
    expected, source = module_rank(config, module_name)
    if expected is not None and rank != expected:
        raise TensorMismatch(
            f"module {module_name!r} has rank {rank} ({detail}) but {source} expects {expected}"
        )


def _check_lora_module(config: AdapterConfig, module_name: str, module: _Module) -> None:
    _require_pair(module_name, module, "lora_A", "lora_B")
    _require_pair(module_name, module, "lora_embedding_A", "lora_embedding_B")
    if "lora_B.bias" in module.parts and "lora_B" not in module.parts:
        raise TensorMismatch(f"module {module_name!r} has lora_B.bias but no lora_B.weight")
    a, b = module.get("lora_A"), module.get("lora_B")
    emb_a, emb_b = module.get("lora_embedding_A"), module.get("lora_embedding_B")
    out_features: int | None = None
    conv_ndim: int | None = None
    if a is not None and b is not None:
        _require_ndim(module_name, "lora_A", a, 2)
        _require_ndim(module_name, "lora_B", b, 2)
        if a.shape[0] != b.shape[1]:
            raise TensorMismatch(
                f"module {module_name!r}: lora_A rank {a.shape[0]} (shape {_shape(a)}) does not "
                f"match lora_B rank {b.shape[1]} (shape {_shape(b)})"
            )
        _check_rank(config, module_name, a.shape[0], f"lora_A {_shape(a)}, lora_B {_shape(b)}")
        out_features = b.shape[0]
        conv_ndim = len(a.shape) if len(a.shape) > 2 else None
        bias = module.get("lora_B.bias")
        if bias is not None and list(bias.shape) != [out_features]:
            raise TensorMismatch(
                f"{module_name}.lora_B.bias must have shape [{out_features}], found {_shape(bias)}"
            )
    if emb_a is not None and emb_b is not None:
        for comp, info in (("lora_embedding_A", emb_a), ("lora_embedding_B", emb_b)):
            if len(info.shape) != 2:
                raise TensorMismatch(
                    f"{module_name}.{comp} must be 2-D, found shape {_shape(info)}"
                )
        if emb_a.shape[0] != emb_b.shape[1]:
            raise TensorMismatch(
                f"module {module_name!r}: lora_embedding_A rank {emb_a.shape[0]} (shape "
                f"{_shape(emb_a)}) does not match lora_embedding_B rank {emb_b.shape[1]} "
                f"(shape {_shape(emb_b)})"
            )
        _check_rank(
            config,
            module_name,
            emb_a.shape[0],
            f"lora_embedding_A {_shape(emb_a)}, lora_embedding_B {_shape(emb_b)}",
        )
        out_features = emb_b.shape[0]

    magnitude = module.get("lora_magnitude_vector")
    has_lora = out_features is not None
    if config.use_dora and has_lora and magnitude is None:
        raise TensorMismatch(
            f"module {module_name!r} has no lora_magnitude_vector but the config has use_dora=true"
        )
    if magnitude is not None:
        if not has_lora:
            raise TensorMismatch(
                f"module {module_name!r} has a lora_magnitude_vector but no lora_A/lora_B"
            )
        # Convolutions keep the magnitude broadcastable against the weight: (1, out, 1, ...).
        expected = [out_features]
        if conv_ndim is not None:
            expected = [1, out_features] + [1] * (conv_ndim - 2)
        if _shape(magnitude) != expected:
            raise TensorMismatch(
                f"{module_name}.lora_magnitude_vector must have shape {expected}, found "
                f"{_shape(magnitude)}"
            )
    if not has_lora and any(k in module.parts for k in ("lora_diag", "lora_velora_embed")):
        raise TensorMismatch(f"module {module_name!r} has LoRA variant state but no lora_A/lora_B")


def _check_adalora_module(config: AdapterConfig, module_name: str, module: _Module) -> None:
    _require_pair(module_name, module, "lora_A", "lora_B")
    _require_pair(module_name, module, "lora_A", "lora_E")
    _require_pair(module_name, module, "lora_embedding_A", "lora_embedding_B")
    a, b, e = module.get("lora_A"), module.get("lora_B"), module.get("lora_E")
    if a is not None and b is not None and e is not None:
        for comp, info in (("lora_A", a), ("lora_B", b), ("lora_E", e)):
            _require_ndim(module_name, comp, info, 2)
        # AdaLoRA prunes ranks per module, so only the three factors have to agree.
        if not a.shape[0] == b.shape[1] == e.shape[0]:
            raise TensorMismatch(
                f"module {module_name!r}: AdaLoRA ranks disagree: lora_A {_shape(a)}, "
                f"lora_E {_shape(e)}, lora_B {_shape(b)}"
            )


def _check_loha_module(config: AdapterConfig, module_name: str, module: _Module) -> None:
    factors = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    missing = [f for f in factors if f not in module.parts]
    if missing:
        raise TensorMismatch(
            f"module {module_name!r} has an incomplete LoHa factor set: missing "
            f"{', '.join(missing)}"
        )
    _require_pair(module_name, module, "hada_t1", "hada_t2")
    infos = {f: module.parts[f][1] for f in factors}
    for comp, info in infos.items():
        _require_ndim(module_name, comp, info, 2)
    # w*_b is [r, in] in every layout; w*_a is [out, r], or [r, out] with the Tucker cores t1/t2.
    tucker = "hada_t1" in module.parts
    ranks = {
        "hada_w1_b": infos["hada_w1_b"].shape[0],
        "hada_w2_b": infos["hada_w2_b"].shape[0],
        "hada_w1_a": infos["hada_w1_a"].shape[0 if tucker else -1],
        "hada_w2_a": infos["hada_w2_a"].shape[0 if tucker else -1],
    }
    if len(set(ranks.values())) != 1:
        shapes = ", ".join(f"{f} {_shape(infos[f])}" for f in factors)
        raise TensorMismatch(f"module {module_name!r}: LoHa factor ranks disagree: {shapes}")
    _check_rank(config, module_name, ranks["hada_w1_b"], f"hada_w1_b {_shape(infos['hada_w1_b'])}")


def _check_lokr_module(config: AdapterConfig, module_name: str, module: _Module) -> None:
    for w in ("lokr_w1", "lokr_w2"):
        full, low_a, low_b = w in module.parts, f"{w}_a" in module.parts, f"{w}_b" in module.parts
        if full and (low_a or low_b):
            raise TensorMismatch(
                f"module {module_name!r} has both {w} and its low-rank factors {w}_a/{w}_b"
            )
        if not full and not (low_a and low_b):
            present = [n for n, ok in ((f"{w}_a", low_a), (f"{w}_b", low_b)) if ok]
            raise TensorMismatch(
                f"module {module_name!r} has an incomplete LoKr factor: expected {w} or "
                f"{w}_a and {w}_b, found {', '.join(present) or 'neither'}"
            )
    if "lokr_t2" in module.parts and "lokr_w2_a" not in module.parts:
        raise TensorMismatch(f"module {module_name!r} has lokr_t2 without lokr_w2_a/lokr_w2_b")


def _check_single_tensor_module(config: AdapterConfig, module_name: str, module: _Module) -> None:
    """IA3 and adaption prompt: each component is one tensor with no partner to agree with."""


# The per-module check of every method with components (registry.formats.peft_methods).
MODULE_CHECKS: dict[str, Callable[[AdapterConfig, str, _Module], None]] = {
    "LORA": _check_lora_module,
    "ADALORA": _check_adalora_module,
    "IA3": _check_single_tensor_module,
    "LOHA": _check_loha_module,
    "LOKR": _check_lokr_module,
    "ADAPTION_PROMPT": _check_single_tensor_module,
}
