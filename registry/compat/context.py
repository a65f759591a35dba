"""State of one compatibility check: the adapter's tensors by role, the base as they see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.compat import findings as codes
from registry.compat.findings import Finding
from registry.compat.manifest import BaseManifest
from registry.compat.namespace import PrefixMap, align, layer_index
from registry.compat.shapes import Shape
from registry.formats.peft import (
    INPUT_EMBEDDING_NAMES,
    OUTPUT_HEAD_NAMES,
    RESIZED_EMBEDDING_NAMES,
    AdapterConfig,
)
from registry.formats.peft_methods import (
    COMPONENTS,
    MODEL_PREFIX,
    PROMPT_LEARNING_TENSORS,
    PROMPT_MODEL_PREFIX,
    split_component,
)
from registry.formats.safetensors import TensorInfo

_TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"
IMPLIED_HEAD_NOTE = " (the base checkpoint has no lm_head; taken as the tied input embedding)"


@dataclass
class AdapterParts:
    """An adapter's tensors sorted by role, with paths in the adapter's (task wrapper) namespace.

    Each entry is (tensor name, shape).
    """

    # module path -> component key ("lora_A.weight", "ia3_l", ...) -> entry
    modules: dict[str, dict[str, tuple[str, Shape]]] = field(default_factory=dict)
    # parameter path ("lm_head.weight", "model.layers.0.self_attn.q_proj.bias") -> entry
    full: dict[str, tuple[str, Shape]] = field(default_factory=dict)
    # embedding module path -> its trainable-tokens delta
    tokens: dict[str, tuple[str, Shape]] = field(default_factory=dict)
    # top-level prompt-learning tensors ("prompt_embeddings")
    prompt: dict[str, tuple[str, Shape]] = field(default_factory=dict)
    # tensors outside the prefix PEFT saves under
    stray: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        """Every module path the adapter refers to, for namespace alignment."""
        return [*self.modules, *(p.rpartition(".")[0] for p in self.full), *self.tokens]


def split_adapter(config: AdapterConfig, tensors: Mapping[str, TensorInfo]) -> AdapterParts:
    """Sort an adapter's tensors into per-module components, full tensors, tokens and prompts.

    Args:
        config: The adapter config (its peft_type names the components).
        tensors: The manifest of adapter_model.safetensors.

    Returns:
        The AdapterParts.
    """
    parts = AdapterParts()
    prompt_names = PROMPT_LEARNING_TENSORS.get(config.peft_type, frozenset())
    prefix = PROMPT_MODEL_PREFIX if config.is_prompt_learning else MODEL_PREFIX
    components = COMPONENTS.get(config.peft_type, {})
    for name in sorted(tensors):
        shape = tuple(tensors[name].shape)
        if name in prompt_names:
            parts.prompt[name] = (name, shape)
            continue
        if not name.startswith(prefix):
            parts.stray.append(name)
            continue
        rel = name[len(prefix) :]
        split = split_component(rel, components)
        if split is not None:
            module, component, suffix = split
            key = f"{component}.{suffix}" if suffix else component
            parts.modules.setdefault(module, {})[key] = (name, shape)
            continue
        # PEFT saves a wrapped layer's own parameters under `<module>.base_layer.<param>`; the
        # base checkpoint has them as `<module>.<param>`.
        rel = ".".join(s for s in rel.split(".") if s != "base_layer")
        if rel.endswith(_TOKENS_SUFFIX):
            parts.tokens[rel.removesuffix(_TOKENS_SUFFIX)] = (name, shape)
        else:
            parts.full[rel] = (name, shape)
    return parts


class CheckContext:
    """One check_compatibility run: what is compared, and what was found so far."""

    def __init__(self, config: AdapterConfig, parts: AdapterParts, base: BaseManifest) -> None:
        self.config = config
        self.raw: dict[str, Any] = config.raw
        self.parts = parts
        self.base = base
        self.params: dict[str, Shape] = base.shapes  # read only
        self.owners: frozenset[str] = base.owners
        self.map: PrefixMap = align(parts.paths(), base.tensors)
        self.reasons: list[Finding] = []
        self.warnings: list[Finding] = []
        self.checked: set[str] = set()  # base modules whose shapes were compared
        self.missing_modules: list[str] = []  # adapter paths absent from the base
        self.uncovered: list[str] = []  # targeted base modules (adapter namespace) without weights
        if self.map != PrefixMap():
            self.warn(
                codes.NAMESPACE_MAPPED,
                f"adapter module paths were matched to the base checkpoint with a prefix change "
                f"({self.map.describe()}); transformers loads either layout",
                found=(
                    {"drop_prefix": f"{self.map.strip}."}
                    if self.map.strip is not None
                    else {"add_prefix": f"{self.map.add}."}
                ),
            )

    def missing_module(self, module: str, *, tensor: str, message: str) -> None:
        """Record that the base lacks ``module`` (an incompatibility)."""
        self.missing_modules.append(module)
        self.reason(codes.MISSING_MODULE, message, module=self.map.to_base(module), tensor=tensor)

    def reason(self, code: str, message: str, **fields: Any) -> None:
        """Record why the pair is incompatible."""
        self.reasons.append(Finding(code=code, message=message, **fields))

    def warn(self, code: str, message: str, **fields: Any) -> None:
        """Record something worth knowing that does not block loading."""
        self.warnings.append(Finding(code=code, message=message, **fields))

    def input_embedding(self) -> Shape | None:
        """The base's input embedding shape [vocab, hidden], from the weights or the config."""
        vocab = self.base.vocab_size
        found: list[Shape] = []
        for name, shape in sorted(self.params.items()):
            leaf = name.removesuffix(".weight").rpartition(".")[2]
            if name.endswith(".weight") and leaf in INPUT_EMBEDDING_NAMES and len(shape) == 2:
                found.append(shape)
        preferred = [s for s in found if vocab is None or s[0] == vocab] or found
        if preferred:
            return preferred[0]
        if vocab is not None and self.base.hidden_size is not None:
            return (vocab, self.base.hidden_size)
        return None

    def base_param(self, path: str) -> tuple[Shape | None, bool]:
        """(shape of an adapter-namespace parameter path in the base, whether it is implied).

        A tied lm_head is not saved, and one missing from a bare-backbone checkpoint is created
        by the task class from the config; either way it is the [vocab, hidden] it is implied
        to be.
        """
        shape = self.params.get(self.map.to_base(path))
        if shape is not None:
            return shape, False
        module, _, param = path.rpartition(".")
        if module in OUTPUT_HEAD_NAMES and param == "weight":
            return self.input_embedding(), True
        return None, False

    def mismatch(
        self,
        *,
        module: str,
        tensor: str,
        expected: Shape,
        found: Shape,
        base_rows: int | None,
        note: str = "",
    ) -> None:
        """Report a shape difference; on an embedding or lm_head whose only differing dimension
        is the base's vocabulary, report (once per module) a resized vocabulary instead.
        """
        base_module = self.map.to_base(module)
        leaf = module.rpartition(".")[2]
        same_ndim = len(found) == len(expected)
        diff = [i for i in range(len(expected)) if same_ndim and expected[i] != found[i]]
        if (
            leaf in RESIZED_EMBEDDING_NAMES
            and len(diff) == 1
            and base_rows is not None
            and expected[diff[0]] == base_rows
        ):
            if not any(
                f.code == codes.VOCAB_RESIZED and f.module == base_module for f in self.reasons
            ):
                self.reason(
                    codes.VOCAB_RESIZED,
                    f"{base_module}: the adapter was trained with a vocabulary of "
                    f"{found[diff[0]]} tokens but the base has {base_rows} (vocabulary resized "
                    f"during training)",
                    module=base_module,
                    tensor=tensor,
                    expected=base_rows,
                    found=found[diff[0]],
                )
            return
        self.reason(
            codes.SHAPE_MISMATCH,
            f"{tensor} has shape {list(found)} but {base_module} in the base needs "
            f"{list(expected)}{note}",
            module=base_module,
            tensor=tensor,
            expected=list(expected),
            found=list(found),
        )

    def base_layers(self) -> int | None:
        """The base's layer count: from the config, else from the highest block index + 1."""
        if self.base.num_hidden_layers is not None:
            return self.base.num_hidden_layers
        indexes = [i for n in self.params if (i := layer_index(n)) is not None]
        return max(indexes) + 1 if indexes else None


def default_tensor_name(module: str, key: str) -> str:
    """The name PEFT saves a module component under, for a component the adapter lacks."""
    return f"{MODEL_PREFIX}{module}.{key}"
