"""The adapter tensors PEFT creates for one base module, with their shapes, per method.

Taken from peft 0.21's layer code: lora/layer.py (Linear, Embedding) and lora/dora.py,
ia3/layer.py, loha/layer.py, lokr/layer.py. Shapes depend on the base layer's in/out features:
nn.Linear stores its weight `[out, in]`, transformers' Conv1D (GPT-2) `[in, out]`, nn.Embedding
`[num_embeddings, dim]` (in = num_embeddings, out = dim).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.compat.namespace import pattern_matches

Shape = tuple[int, ...]

# transformers models whose attention/MLP projections are Conv1D (weight `[in, out]`), and the
# projection names that are Conv1D there (their lm_head and embeddings are ordinary layers).
CONV1D_MODEL_TYPES: frozenset[str] = frozenset(
    {"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp"}
)
CONV1D_LEAVES: frozenset[str] = frozenset({"c_attn", "c_fc", "c_proj", "q_attn"})

LINEAR = "linear"
CONV1D = "conv1d"
EMBEDDING = "embedding"


def layer_kind(
    *, model_type: str | None, module: str, is_embedding: bool, fan_in_fan_out: bool
) -> str:
    """Which kind of layer a base module is, as far as shapes tell.

    A manifest does not record layer classes. Embeddings are recognised by the adapter using
    embedding components; Conv1D by the model type's known Conv1D projections or, when the
    base has no model type, by the adapter's fan_in_fan_out (PEFT sets it for Conv1D).

    Args:
        model_type: The base config's model_type.
        module: Module path (any namespace; its last segment is used).
        is_embedding: The adapter holds embedding components for the module.
        fan_in_fan_out: The adapter config's fan_in_fan_out.

    Returns:
        LINEAR, CONV1D or EMBEDDING.
    """
    if is_embedding:
        return EMBEDDING
    leaf = module.rpartition(".")[2]
    if model_type in CONV1D_MODEL_TYPES and leaf in CONV1D_LEAVES:
        return CONV1D
    if model_type is None and fan_in_fan_out:
        return CONV1D
    return LINEAR


def in_out(kind: str, weight: Shape) -> tuple[int, int]:
    """(in_features, out_features) of a 2-D base weight, as peft's _get_in_out_features."""
    if kind in (CONV1D, EMBEDDING):
        return weight[0], weight[1]
    return weight[1], weight[0]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft.tuners.lokr.layer.factorization: split a dimension into (m, n), m <= n, m * n = dim."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


@dataclass(frozen=True)
class ModuleSpec:
    """What PEFT builds on one module: component key -> shape (key as in the tensor name)."""

    tensors: dict[str, Shape]
    in_features: int
    out_features: int


def _is_feedforward(raw: Mapping[str, Any], module: str, found: Mapping[str, Shape]) -> bool:
    ff = raw.get("feedforward_modules")
    if isinstance(ff, str):
        return pattern_matches(ff, module, full=True)
    if isinstance(ff, list):
        # peft's IA3 tests feedforward_modules with a plain endswith, not a dotted suffix.
        return any(module.endswith(t) for t in ff)
    # Not recorded: the saved vector's orientation ([1, in] vs [out, 1]) is the only evidence.
    shape = found.get("ia3_l")
    return shape is not None and len(shape) == 2 and shape[0] == 1 and shape[1] != 1


def expected_tensors(
    *,
    peft_type: str,
    raw: Mapping[str, Any],
    module: str,
    kind: str,
    weight: Shape,
    rank: int | None,
    found: Mapping[str, Shape],
) -> ModuleSpec:
    """The tensors PEFT creates for `module` with the given base weight shape and rank.

    Args:
        peft_type: LORA, IA3, LOHA or LOKR.
        raw: The parsed adapter_config.json (use_dora, lora_bias, feedforward_modules,
            decompose_both, decompose_factor).
        module: Module path in the adapter's namespace (for feedforward matching).
        kind: LINEAR, CONV1D or EMBEDDING (see layer_kind).
        weight: The base module's 2-D weight shape.
        rank: The module's rank (None for IA3, which has none).
        found: The adapter's components for the module (only IA3 without feedforward_modules
            looks at them).

    Returns:
        The ModuleSpec.
    """
    d_in, d_out = in_out(kind, weight)
    t: dict[str, Shape] = {}
    if peft_type == "IA3":
        feedforward = _is_feedforward(raw, module, found)
        t["ia3_l"] = (1, d_in) if feedforward else (d_out, 1)
        return ModuleSpec(tensors=t, in_features=d_in, out_features=d_out)
    if rank is None:
        raise ValueError(f"{peft_type} needs a rank")
    if peft_type == "LORA":
        if kind == EMBEDDING:
            t["lora_embedding_A"] = (rank, d_in)
            t["lora_embedding_B"] = (d_out, rank)
        else:
            t["lora_A.weight"] = (rank, d_in)
            t["lora_B.weight"] = (d_out, rank)
            if raw.get("lora_bias"):
                t["lora_B.bias"] = (d_out,)
        if raw.get("use_dora"):
            t["lora_magnitude_vector"] = (d_out,)
    elif peft_type == "LOHA":
        for w in ("hada_w1", "hada_w2"):
            t[f"{w}_a"] = (d_out, rank)
            t[f"{w}_b"] = (rank, d_in)
    elif peft_type == "LOKR":
        factor = raw.get("decompose_factor")
        factor = factor if isinstance(factor, int) and not isinstance(factor, bool) else -1
        out_l, out_k = factorization(d_out, factor)
        in_m, in_n = factorization(d_in, factor)
        # kron(w1 [out_l, in_m], w2 [out_k, in_n]) is [out_l*out_k, in_m*in_n] = [out, in].
        if raw.get("decompose_both") and rank < max(out_l, in_m) / 2:
            t["lokr_w1_a"] = (out_l, rank)
            t["lokr_w1_b"] = (rank, in_m)
        else:
            t["lokr_w1"] = (out_l, in_m)
        if rank < max(out_k, in_n) / 2:
            t["lokr_w2_a"] = (out_k, rank)
            t["lokr_w2_b"] = (rank, in_n)
        else:
            t["lokr_w2"] = (out_k, in_n)
    else:
        raise ValueError(f"no shape model for {peft_type}")
    return ModuleSpec(tensors=t, in_features=d_in, out_features=d_out)


def found_rank(peft_type: str, found: Mapping[str, Shape]) -> int | None:
    """The rank an adapter's tensors for one module were saved with, when the shapes show it."""

    def dim(key: str, axis: int) -> int | None:
        shape = found.get(key)
        return shape[axis] if shape and len(shape) > axis else None

    if peft_type == "LORA":
        return dim("lora_A.weight", 0) or dim("lora_embedding_A", 0)
    if peft_type == "LOHA":
        return dim("hada_w1_b", 0)
    if peft_type == "LOKR":
        return dim("lokr_w2_a", 1) or dim("lokr_w1_a", 1)
    return None


def kron_shape(found: Mapping[str, Shape]) -> Shape | None:
    """The [out, in] a LoKr factor set multiplies out to, or None if a factor is unreadable."""

    def factor(w: str) -> tuple[int, int] | None:
        full = found.get(w)
        if full is not None and len(full) == 2:
            return full[0], full[1]
        a, b = found.get(f"{w}_a"), found.get(f"{w}_b")
        if a is not None and b is not None and len(a) == 2 and len(b) == 2:
            return a[0], b[1]
        return None

    w1, w2 = factor("lokr_w1"), factor("lokr_w2")
    if w1 is None or w2 is None:
        return None
    return w1[0] * w2[0], w1[1] * w2[1]


def loha_shape(found: Mapping[str, Shape]) -> Shape | None:
    """The [out, in] of (w1a @ w1b) * (w2a @ w2b), or None if the factors do not multiply."""
    shapes = [found.get(k) for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
    if any(s is None or len(s) != 2 for s in shapes):
        return None
    w1a, w1b, w2a, w2b = (s for s in shapes if s is not None)
    if w1a[1] != w1b[0] or w2a[1] != w2b[0]:
        return None
    p1, p2 = (w1a[0], w1b[1]), (w2a[0], w2b[1])
    return p1 if p1 == p2 else None
