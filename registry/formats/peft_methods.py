"""PEFT's per-method facts in one table, and the one rank/alpha resolver, without peft or torch.

Every layer that needs to know what a PEFT method saves or does reads it here: the upload checks
(`registry.formats.peft`), the compatibility rules (`registry.compat`), merged export
(`registry.merge`) and the serving report (`registry.compat.serving`). Facts are those of peft
0.21.2: tensor components from each tuner layer's `adapter_layer_names` (plus containers LoRA
variants register), component prefixes from each tuner model's `prefix`, default `r` and alpha
from LoraConfig / LoHaConfig / LoKrConfig.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# peft.utils.peft_types.PeftType of peft 0.21.2, hard-coded so the registry does not import peft.
PEFT_TYPES: frozenset[str] = frozenset(
    {
        "PROMPT_TUNING",
        "MULTITASK_PROMPT_TUNING",
        "P_TUNING",
        "PREFIX_TUNING",
        "LORA",
        "ADALORA",
        "ADAMSS",
        "BOFT",
        "ADAPTION_PROMPT",
        "IA3",
        "BEFT",
        "LILY",
        "LOHA",
        "LOKR",
        "OFT",
        "POLY",
        "LN_TUNING",
        "VERA",
        "FROD",
        "PVERA",
        "FOURIERFT",
        "GLORA",
        "XLORA",
        "HRA",
        "VBLORA",
        "UNILORA",
        "CPT",
        "MISS",
        "RANDLORA",
        "ROAD",
        "TRAINABLE_TOKENS",
        "HIRA",
        "SHIRA",
        "C3A",
        "WAVEFT",
        "OSF",
        "DELORA",
        "GRALORA",
        "CARTRIDGE",
        "TINYLORA",
        "PSOFT",
        "PEANUT",
        "SHADOW",
        "SUPERTUNING",
        "DEFT",
    }
)

# Where PeftModel.save_pretrained puts adapter tensors: per-module methods under the wrapped
# model, prompt learning (and modules_to_save of prompt learning) one level up.
MODEL_PREFIX = "base_model.model."
PROMPT_MODEL_PREFIX = "base_model."

# target_modules shorthand for every linear layer but the output head (matched case-insensitively,
# as peft's INCLUDE_LINEAR_LAYERS_SHORTHAND is).
ALL_LINEAR = "all-linear"

# Serving engines whose adapter support the registry reports (registry.compat.serving).
VLLM = "vllm"
LORAX = "lorax"
SERVING_TARGETS: tuple[str, ...] = (VLLM, LORAX)

# A component whose allowed suffixes contain ANY_SUFFIX is a container: any suffix is accepted.
ANY_SUFFIX = "*"

_NO_WEIGHTS = (
    "adds virtual tokens or prompt modules at inference time; it changes no base weight, so "
    "there is nothing to merge"
)


@dataclass(frozen=True)
class MergeRefusal:
    """A config setting that merged export refuses for a method it otherwise merges."""

    key: str
    why: str
    # Refuse only when the setting is this string (case-insensitive); None: any truthy value.
    value: str | None = None

    def applies(self, raw: Mapping[str, Any]) -> bool:
        """Whether the parsed adapter_config.json has the refused setting."""
        setting = raw.get(self.key)
        if self.value is None:
            return bool(setting)
        return isinstance(setting, str) and setting.lower() == self.value


@dataclass(frozen=True)
class PeftMethod:
    """What the registry knows about one PEFT method (a peft_type).

    Components are the name segments that follow the module path in a saved tensor name
    (`base_model.model.<module>.<component>[.<suffix>]`), each with its allowed suffixes ("" =
    the component is itself the tensor, as for a ParameterDict entry).
    """

    name: str
    display: str
    prefix: str = ""
    components: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # component -> {suffix: config flag that allows it}, e.g. lora_B.bias needs lora_bias.
    flag_suffixes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Top-level tensors of prompt-learning methods (no module path).
    prompt_tensors: frozenset[str] = frozenset()
    # target_modules names the modules that hold the components (adaption prompt: it names the
    # attention submodule the prompts go into, matched its own way).
    targets_modules: bool = True
    # peft wraps transformers' Conv1D (GPT-2 projections) with this method, not only nn.Linear.
    wraps_conv1d: bool = False
    # Component keys ("lora_A.weight", "ia3_l") whose shapes registry.compat.shapes models;
    # empty: the method's shapes are not modelled.
    shape_keys: frozenset[str] = frozenset()
    # registry.compat checks prompt_embeddings' width against the base's hidden size.
    prompt_width: bool = False
    # peft builds every module at a rank taken from rank_pattern / r.
    ranked: bool = False
    default_r: int | None = None
    alpha_field: str = "lora_alpha"
    default_alpha: float | None = None
    # Merged export: whether it folds the method into base weights, and if not, why (None: the
    # generic "not supported" message); settings and components it refuses when it does.
    mergeable: bool = False
    merge_note: str = ""
    merge_refusal: str | None = None
    merge_refusals: tuple[MergeRefusal, ...] = ()
    unmerged_components: Mapping[str, str] = field(default_factory=dict)
    # Serving engines (SERVING_TARGETS) that load the method.
    serving: frozenset[str] = frozenset()

    @property
    def shape_modelled(self) -> bool:
        """Whether registry.compat models this method's per-module shapes."""
        return bool(self.shape_keys)


def _plain(*names: str) -> dict[str, frozenset[str]]:
    return {n: frozenset({""}) for n in names}


def _prompt(name: str, display: str, *tensors: str, width: bool = False) -> PeftMethod:
    return PeftMethod(
        name=name,
        display=display,
        prompt_tensors=frozenset(tensors or ("prompt_embeddings",)),
        prompt_width=width,
        merge_refusal=_NO_WEIGHTS,
    )


_METHODS: tuple[PeftMethod, ...] = (
    PeftMethod(
        name="LORA",
        display="LoRA",
        prefix="lora_",
        components={
            "lora_A": frozenset({"weight"}),
            "lora_B": frozenset({"weight"}),
            "lora_embedding_A": frozenset({""}),
            "lora_embedding_B": frozenset({""}),
            "lora_magnitude_vector": frozenset({""}),  # DoRA
            "lora_diag": frozenset({""}),  # KaSA
            "lora_velora_embed": frozenset({""}),  # VeLoRA's buffer
            "lora_monteclora_sampler": frozenset({ANY_SUFFIX}),  # MonteCLoRA
        },
        flag_suffixes={"lora_B": {"bias": "lora_bias"}},
        wraps_conv1d=True,
        shape_keys=frozenset(
            {
                "lora_A.weight",
                "lora_B.weight",
                "lora_B.bias",
                "lora_embedding_A",
                "lora_embedding_B",
                "lora_magnitude_vector",
            }
        ),
        ranked=True,
        default_r=8,
        default_alpha=8.0,
        mergeable=True,
        merge_note="including DoRA, rsLoRA, embedding LoRA, lora_bias",
        merge_refusals=(
            MergeRefusal(
                "alora_invocation_tokens",
                "Activated LoRA applies the adapter only after its invocation tokens, so it "
                "cannot be folded into the weights",
            ),
            MergeRefusal(
                "layer_replication", "layer_replication changes the model's layer structure"
            ),
            MergeRefusal(
                "target_parameters",
                "LoRA on nn.Parameter targets (target_parameters) is not supported by merged "
                "export",
            ),
            MergeRefusal(
                "trainable_token_indices", "trainable tokens are not supported by merged export"
            ),
            MergeRefusal("velora_config", "the VeLoRA variant is not supported by merged export"),
            MergeRefusal(
                "monteclora_config", "the MonteCLoRA variant is not supported by merged export"
            ),
            MergeRefusal("use_bdlora", "the BD-LoRA variant is not supported by merged export"),
            MergeRefusal(
                "arrow_config",
                "Arrow routing mixes adapters per token, so it cannot be folded into the weights",
            ),
            MergeRefusal("kasa_config", "the KaSA variant is not supported by merged export"),
            MergeRefusal(
                "init_lora_weights",
                "the MiCA variant is not supported by merged export",
                value="mica",
            ),
        ),
        unmerged_components={
            "lora_diag": "the KaSA variant (lora_diag)",
            "lora_velora_embed": "the VeLoRA variant (lora_velora_embed)",
            "lora_monteclora_sampler": "the MonteCLoRA variant (lora_monteclora_sampler)",
        },
        serving=frozenset({VLLM, LORAX}),
    ),
    PeftMethod(
        name="ADALORA",
        display="AdaLoRA",
        prefix="lora_",
        components=_plain("lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B"),
        # AdaLoRA builds every module at init_r and prunes it per module while training, so no
        # rank can be predicted from the config (its r is ignored).
    ),
    PeftMethod(
        name="IA3",
        display="IA3",
        prefix="ia3_",
        components=_plain("ia3_l"),
        wraps_conv1d=True,
        shape_keys=frozenset({"ia3_l"}),
        mergeable=True,
    ),
    PeftMethod(
        name="LOHA",
        display="LoHa",
        prefix="hada_",
        components=_plain("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
        # hada_t1/hada_t2 (the Tucker cores of convolutions) are not shape-modelled.
        shape_keys=frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}),
        ranked=True,
        default_r=8,
        alpha_field="alpha",
        default_alpha=8.0,
        mergeable=True,
        unmerged_components={
            "hada_t1": "LoHa on convolution layers (hada_t1/hada_t2)",
            "hada_t2": "LoHa on convolution layers (hada_t1/hada_t2)",
        },
    ),
    PeftMethod(
        name="LOKR",
        display="LoKr",
        prefix="lokr_",
        components=_plain(
            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"
        ),
        # lokr_t2 (effective convolution) is not shape-modelled.
        shape_keys=frozenset(
            {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}
        ),
        ranked=True,
        default_r=8,
        alpha_field="alpha",
        default_alpha=8.0,
        mergeable=True,
        unmerged_components={"lokr_t2": "LoKr with effective convolution (lokr_t2)"},
    ),
    PeftMethod(
        name="ADAPTION_PROMPT",
        display="adaption prompt",
        prefix="adaption_",
        components=_plain("adaption_prompt", "adaption_gate"),
        targets_modules=False,
        merge_refusal=_NO_WEIGHTS,
    ),
    _prompt("PROMPT_TUNING", "prompt tuning", width=True),
    _prompt("P_TUNING", "P-tuning", width=True),
    _prompt("PREFIX_TUNING", "prefix tuning"),
    _prompt("CPT", "CPT"),
    _prompt("CARTRIDGE", "Cartridge"),
    _prompt(
        "MULTITASK_PROMPT_TUNING",
        "multitask prompt tuning",
        "prompt_embeddings",
        "prefix_task_cols",
        "prefix_task_rows",
    ),
)

# The table: peft_type -> PeftMethod, for the methods the registry models.
PEFT_METHODS: Mapping[str, PeftMethod] = {m.name: m for m in _METHODS}

# Views of the table.
COMPONENTS: Mapping[str, Mapping[str, frozenset[str]]] = {
    m.name: m.components for m in _METHODS if m.components
}
PROMPT_LEARNING_TENSORS: Mapping[str, frozenset[str]] = {
    m.name: m.prompt_tensors for m in _METHODS if m.prompt_tensors
}
SHAPE_MODELLED: frozenset[str] = frozenset(m.name for m in _METHODS if m.shape_modelled)
PROMPT_WIDTH_CHECKED: frozenset[str] = frozenset(m.name for m in _METHODS if m.prompt_width)
MERGEABLE: frozenset[str] = frozenset(m.name for m in _METHODS if m.mergeable)


def alpha_field(peft_type: str) -> str:
    """The adapter_config.json field that holds the method's alpha ("lora_alpha" or "alpha")."""
    method = PEFT_METHODS.get(peft_type)
    return method.alpha_field if method is not None else "lora_alpha"


def serving_methods(target: str) -> list[str]:
    """The peft_types a serving target (VLLM, LORAX) loads, in table order."""
    return [m.name for m in _METHODS if target in m.serving]


def is_all_linear(target_modules: object) -> bool:
    """Whether target_modules is the "all-linear" shorthand (peft compares it lower-cased)."""
    return isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR


def split_component(rel: str, components: Collection[str]) -> tuple[str, str, str] | None:
    """Split "<module>.<component>[.<suffix>]"; the first component segment after a module wins.

    Args:
        rel: A tensor name relative to the wrapped model (MODEL_PREFIX removed).
        components: The method's component names.

    Returns:
        (module, component, suffix), suffix "" when the component is the tensor; None when no
        segment after the first is a component.
    """
    segments = rel.split(".")
    for i in range(1, len(segments)):
        if segments[i] in components:
            return ".".join(segments[:i]), segments[i], ".".join(segments[i + 1 :])
    return None


def get_pattern_key(pattern_keys: Iterable[str], key_to_match: str) -> str | None:
    """The first pattern that matches a module name, as peft.utils.other.get_pattern_key does.

    A pattern matches when it is a regex that matches the whole module name or a dotted suffix
    of it (`(.*\\.)?(pattern)$`).

    Args:
        pattern_keys: rank_pattern / alpha_pattern keys, in config order.
        key_to_match: Module name relative to the base model, e.g. "model.layers.0.mlp".

    Returns:
        The matching pattern, or None.
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return None


class RankedConfig(Protocol):
    """The parsed config fields the resolver reads (registry.formats.peft.AdapterConfig)."""

    @property
    def peft_type(self) -> str: ...

    @property
    def r(self) -> int | None: ...

    @property
    def lora_alpha(self) -> float | None: ...

    @property
    def rank_pattern(self) -> Mapping[str, int]: ...

    @property
    def alpha_pattern(self) -> Mapping[str, float]: ...


def module_rank(config: RankedConfig, module: str) -> tuple[int | None, str]:
    """The rank peft builds for one module, and where it comes from, as peft's tuners pick it.

    rank_pattern (peft's get_pattern_key), else `r`, else the method's default. Methods
    without a predictable rank (IA3, AdaLoRA, adaption prompt, prompt learning) give None.

    Args:
        config: The parsed adapter config.
        module: Module name relative to the base model.

    Returns:
        (rank or None, source), source e.g. "rank_pattern['o_proj']", "r=4", "peft's default
        r=8".
    """
    method = PEFT_METHODS.get(config.peft_type)
    if method is not None and not method.ranked:
        return None, f"{config.peft_type} has no rank"
    key = get_pattern_key(config.rank_pattern, module)
    if key is not None:
        return config.rank_pattern[key], f"rank_pattern[{key!r}]"
    if config.r is not None:
        return config.r, f"r={config.r}"
    default = method.default_r if method is not None else None
    return default, f"peft's default r={default}" if default is not None else "no r"


def module_alpha(config: RankedConfig, module: str) -> tuple[float | None, str]:
    """The alpha peft scales one module with, and where it comes from.

    alpha_pattern (peft's get_pattern_key), else the config's alpha (`lora_alpha`, or `alpha`
    for LoHa/LoKr), else the method's default.

    Args:
        config: The parsed adapter config.
        module: Module name relative to the base model.

    Returns:
        (alpha or None, source), source e.g. "alpha_pattern['o_proj']", "lora_alpha=16".
    """
    method = PEFT_METHODS.get(config.peft_type)
    key = get_pattern_key(config.alpha_pattern, module)
    if key is not None:
        return float(config.alpha_pattern[key]), f"alpha_pattern[{key!r}]"
    name = alpha_field(config.peft_type)
    if config.lora_alpha is not None:
        return float(config.lora_alpha), f"{name}={config.lora_alpha}"
    default = method.default_alpha if method is not None else None
    return default, f"peft's default {name}={default}" if default is not None else f"no {name}"
