"""PEFT merge math: adapter tensors in, merged base tensors out, exactly as peft 0.21 merges.

The functions here are pure (no I/O). `plan_merge` turns an adapter (its config and tensors)
into per-base-tensor edits that the streaming writer applies one tensor, or one block of rows,
at a time. Everything is computed in float32; casting to the output dtype is the caller's job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from registry.errors import TensorMismatch, Unmergeable
from registry.formats.peft import AdapterConfig, get_pattern_key
from registry.merge.errors import IncompatibleBase

MODEL_PREFIX = "base_model.model."

# peft's defaults for r and alpha when the saved config omits them (LoraConfig, LoHaConfig,
# LoKrConfig all default to r=8, alpha=8).
DEFAULT_R = 8
DEFAULT_ALPHA = 8.0

SUPPORTED_TYPES: tuple[str, ...] = ("LORA", "IA3", "LOHA", "LOKR")

# Per-module tensors of each supported method (peft's `adapter_layer_names`), by the name segment
# that follows the module path.
COMPONENTS: dict[str, frozenset[str]] = {
    "LORA": frozenset(
        {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}
    ),
    "IA3": frozenset({"ia3_l"}),
    "LOHA": frozenset(
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
    ),
    "LOKR": frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
    ),
}

# LoraConfig fields that change what the adapter computes in ways a weight merge cannot
# reproduce, or that this exporter does not implement; value -> why.
_LORA_REFUSED: dict[str, str] = {
    "alora_invocation_tokens": "Activated LoRA applies the adapter only after its invocation "
    "tokens, so it cannot be folded into the weights",
    "layer_replication": "layer_replication changes the model's layer structure",
    "target_parameters": "LoRA on nn.Parameter targets (target_parameters) is not supported "
    "by merged export",
    "trainable_token_indices": "trainable tokens are not supported by merged export",
    "velora_config": "the VeLoRA variant is not supported by merged export",
    "monteclora_config": "the MonteCLoRA variant is not supported by merged export",
    "use_bdlora": "the BD-LoRA variant is not supported by merged export",
    "arrow_config": "Arrow routing mixes adapters per token, so it cannot be folded into the "
    "weights",
    "kasa_config": "the KaSA variant is not supported by merged export",
}

RowFn = Callable[[Tensor, int, int], Tensor]


# --- the math -------------------------------------------------------------------------------


def transpose(weight: Tensor, fan_in_fan_out: bool) -> Tensor:
    """`weight.T` when `fan_in_fan_out` (Conv1D layout, [in, out]), else `weight`."""
    return weight.T if fan_in_fan_out else weight


def lora_scale(*, alpha: float, r: int, use_rslora: bool = False) -> float:
    """LoRA's scaling: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.

    Args:
        alpha: lora_alpha (after alpha_pattern).
        r: The rank (after rank_pattern).
        use_rslora: The config's use_rslora.

    Returns:
        The scale applied to `B @ A`.
    """
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lora_delta(a: Tensor, b: Tensor, *, scale: float, fan_in_fan_out: bool = False) -> Tensor:
    """LoRA's weight delta `scale * (B @ A)`, in the base weight's layout.

    Args:
        a: lora_A weight, [r, in].
        b: lora_B weight, [out, r].
        scale: From `lora_scale`.
        fan_in_fan_out: The base weight is stored [in, out] (GPT-2 Conv1D).

    Returns:
        [out, in], or [in, out] with fan_in_fan_out.
    """
    return transpose(b @ a, fan_in_fan_out) * scale


def lora_embedding_delta(a: Tensor, b: Tensor, *, scale: float) -> Tensor:
    """Embedding LoRA's delta `scale * (B @ A).T`.

    Args:
        a: lora_embedding_A, [r, num_embeddings].
        b: lora_embedding_B, [embedding_dim, r].
        scale: From `lora_scale`.

    Returns:
        [num_embeddings, embedding_dim], the embedding weight's layout.
    """
    return (b @ a).T * scale


def dora_merge(
    weight: Tensor,
    a: Tensor,
    b: Tensor,
    magnitude: Tensor,
    *,
    scale: float,
    fan_in_fan_out: bool = False,
) -> Tensor:
    """DoRA: `(m / ||W + dW||_row) * (W + dW)`, the norm taken per output feature.

    As peft's DoraLinearVariant.merge: the norm is over the [out, in] view of `W + dW` and is a
    constant (peft detaches it), so only the magnitude direction is rescaled.

    Args:
        weight: The base weight (float32), [out, in] or [in, out] with fan_in_fan_out.
        a: lora_A weight, [r, in].
        b: lora_B weight, [out, r].
        magnitude: lora_magnitude_vector, [out].
        scale: From `lora_scale`.
        fan_in_fan_out: The base weight is stored [in, out].

    Returns:
        The merged weight, in the base weight's layout.
    """
    delta = lora_delta(a, b, scale=scale, fan_in_fan_out=fan_in_fan_out)
    norm = torch.linalg.norm(transpose(weight, fan_in_fan_out) + transpose(delta, fan_in_fan_out),
                             dim=1)
    factor = transpose((magnitude.reshape(-1) / norm).view(-1, 1), fan_in_fan_out)
    return factor * (weight + delta)


def dora_embedding_merge(
    weight: Tensor, a: Tensor, b: Tensor, magnitude: Tensor, *, scale: float
) -> Tensor:
    """DoRA on an embedding: the norm is per embedding dimension (peft's DoraEmbeddingVariant).

    Args:
        weight: The embedding weight (float32), [num_embeddings, embedding_dim].
        a: lora_embedding_A, [r, num_embeddings].
        b: lora_embedding_B, [embedding_dim, r].
        magnitude: lora_magnitude_vector, [embedding_dim].
        scale: From `lora_scale`.

    Returns:
        The merged weight.
    """
    delta = lora_embedding_delta(a, b, scale=scale)
    norm = torch.linalg.norm(weight.T + delta.T, dim=1)
    return (magnitude.reshape(-1) / norm).view(1, -1) * (weight + delta)


def ia3_merge(weight: Tensor, ia3_l: Tensor, *, fan_in_fan_out: bool = False) -> Tensor:
    """IA3 on a weight: scale input columns (feedforward, `l` is [1, in]) or output rows ([out, 1]).

    Args:
        weight: The base weight (float32), [out, in] or [in, out] with fan_in_fan_out.
        ia3_l: The learned vector as saved: [1, in] for feedforward modules, else [out, 1].
        fan_in_fan_out: The base weight is stored [in, out].

    Returns:
        The scaled weight.
    """
    return weight * transpose(ia3_l, fan_in_fan_out)


def ia3_merge_bias(bias: Tensor, ia3_l: Tensor) -> Tensor:
    """IA3 on the bias of a non-feedforward module: `bias * l` (feedforward biases are unchanged).

    Args:
        bias: The base bias (float32), [out].
        ia3_l: The learned vector, [out, 1].

    Returns:
        The scaled bias.
    """
    return bias * ia3_l.reshape(bias.shape)


def loha_delta(
    w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, *, scale: float, shape: Sequence[int]
) -> Tensor:
    """LoHa's delta: `((W1a @ W1b) * (W2a @ W2b)) * alpha / r`, reshaped to the base weight.

    Args:
        w1a: hada_w1_a, [out, r].
        w1b: hada_w1_b, [r, in].
        w2a: hada_w2_a, [out, r].
        w2b: hada_w2_b, [r, in].
        scale: alpha / r.
        shape: The base weight's shape.

    Returns:
        The delta, shaped like the base weight.
    """
    return (((w1a @ w1b) * (w2a @ w2b)) * scale).reshape(tuple(shape))


def lokr_delta(w1: Tensor, w2: Tensor, *, scale: float, shape: Sequence[int]) -> Tensor:
    """LoKr's delta: `kron(W1, W2) * alpha / r`, reshaped to the base weight.

    Args:
        w1: lokr_w1, or lokr_w1_a @ lokr_w1_b.
        w2: lokr_w2, or lokr_w2_a @ lokr_w2_b.
        scale: alpha / r.
        shape: The base weight's shape.

    Returns:
        The delta, shaped like the base weight.
    """
    return (torch.kron(w1, w2.contiguous()) * scale).reshape(tuple(shape))


def _lokr_rows(w1: Tensor, w2: Tensor, scale: float, start: int, stop: int) -> Tensor:
    # Row i of kron(w1, w2) is w1[i // b] (x) w2[i % b]; build only the w1 rows this block needs.
    b = w2.shape[0]
    first, last = start // b, (stop - 1) // b + 1
    rows = torch.kron(w1[first:last], w2.contiguous()) * scale
    return rows[start - first * b : stop - first * b]


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEdit:
    """One change to one base tensor.

    `apply(block, start, stop)` receives rows [start, stop) of the base tensor in float32 and
    returns them merged; it may update `block` in place (the caller owns it). When `rowwise` is
    False the edit needs the whole tensor at once (its rows are not independent) and is always
    called with every row.
    """

    target: str
    module: str
    method: str
    rowwise: bool
    apply: RowFn


@dataclass(frozen=True)
class MergePlan:
    """The edits of an adapter, keyed by the base tensor they change, in application order."""

    edits: dict[str, list[TensorEdit]] = field(default_factory=dict)
    modules: tuple[str, ...] = ()

    def rowwise(self, name: str) -> bool:
        """Whether every edit of `name` can run on a block of rows (True if it has none)."""
        return all(e.rowwise for e in self.edits.get(name, ()))

    def apply(self, name: str, block: Tensor, start: int, stop: int) -> Tensor:
        """Apply the edits of `name` to rows [start, stop) given as float32 `block`.

        `block` may be updated in place; use the returned tensor.
        """
        for edit in self.edits.get(name, ()):
            block = edit.apply(block, start, stop)
        return block


def check_mergeable(config: AdapterConfig) -> None:
    """Refuse adapters that cannot be folded into base weights, from the config alone.

    Args:
        config: The parsed adapter config.

    Raises:
        Unmergeable: Prompt learning, an unsupported PEFT method or LoRA variant.
    """
    peft_type = config.peft_type
    if config.is_prompt_learning or peft_type == "ADAPTION_PROMPT":
        raise Unmergeable(
            f"{peft_type} adds virtual tokens or prompt modules at inference time; it changes "
            f"no base weight, so there is nothing to merge"
        )
    if peft_type not in SUPPORTED_TYPES:
        raise Unmergeable(
            f"{peft_type} adapters are not supported by merged export; supported: LORA "
            f"(including DoRA, rsLoRA, embedding LoRA, lora_bias), IA3, LOHA, LOKR"
        )
    raw = config.raw
    if peft_type == "LORA":
        for key, why in _LORA_REFUSED.items():
            if raw.get(key):
                raise Unmergeable(f"{key} is set: {why}")
        init = raw.get("init_lora_weights")
        if isinstance(init, str) and init.lower() == "mica":
            raise Unmergeable("the MiCA variant is not supported by merged export")


def _group(config: AdapterConfig, tensors: Mapping[str, Tensor]) -> tuple[
    dict[str, dict[str, Tensor]], dict[str, Tensor]
]:
    """Split adapter tensors into per-module components and whole base tensors to replace."""
    components = COMPONENTS[config.peft_type]
    modules: dict[str, dict[str, Tensor]] = {}
    replacements: dict[str, Tensor] = {}
    for name in sorted(tensors):
        if not name.startswith(MODEL_PREFIX):
            raise TensorMismatch(
                f"tensor {name!r} is not under {MODEL_PREFIX!r}, where PEFT saves "
                f"{config.peft_type} weights"
            )
        rel = name[len(MODEL_PREFIX) :]
        segments = rel.split(".")
        for i in range(1, len(segments)):
            if segments[i] in components:
                module = ".".join(segments[:i])
                key = segments[i]
                suffix = ".".join(segments[i + 1 :])
                if suffix == "bias":
                    key += ".bias"
                elif suffix not in ("", "weight"):
                    raise TensorMismatch(f"tensor {name!r}: unexpected suffix {suffix!r}")
                modules.setdefault(module, {})[key] = tensors[name]
                break
        else:
            # Everything else peft saves is a whole parameter that loading copies over the base
            # one: modules_to_save, biases with bias="all"/"lora_only", saved embedding layers.
            owner, _, param = rel.rpartition(".")
            if owner.endswith(".base_layer"):
                owner = owner.removesuffix(".base_layer")
            if "modules_to_save" in owner.split(".") or owner.endswith(".token_adapter"):
                raise Unmergeable(f"tensor {name!r} is not in a layout merged export understands")
            replacements[f"{owner}.{param}" if owner else param] = tensors[name]
    return modules, replacements


class _Resolver:
    """Finds the base tensor for a model-relative name, allowing for a missing/extra prefix."""

    def __init__(self, base_shapes: Mapping[str, Sequence[int]]) -> None:
        self.shapes = base_shapes
        self.prefixes = sorted({n.split(".", 1)[0] for n in base_shapes if "." in n})

    def __call__(self, name: str) -> str | None:
        if name in self.shapes:
            return name
        # A checkpoint saved from the bare model (LlamaModel) lacks the task model's prefix
        # ("model."), and the reverse; transformers maps both when loading.
        _head, _, rest = name.partition(".")
        if rest and rest in self.shapes:
            return rest
        found = [f"{p}.{name}" for p in self.prefixes if f"{p}.{name}" in self.shapes]
        return found[0] if len(found) == 1 else None


def _shape(t: Tensor | Sequence[int]) -> list[int]:
    return list(t.shape) if isinstance(t, Tensor) else list(t)


class _Planner:
    def __init__(
        self,
        config: AdapterConfig,
        base_shapes: Mapping[str, Sequence[int]],
        device: torch.device,
    ) -> None:
        self.config = config
        self.raw = config.raw
        self.shapes = base_shapes
        self.resolve = _Resolver(base_shapes)
        self.device = device
        self.edits: dict[str, list[TensorEdit]] = {}
        self.missing: list[str] = []

    # -- helpers --

    def t(self, tensor: Tensor) -> Tensor:
        return tensor.to(device=self.device, dtype=torch.float32)

    def add(self, target: str, module: str, method: str, rowwise: bool, fn: RowFn) -> None:
        self.edits.setdefault(target, []).append(
            TensorEdit(target=target, module=module, method=method, rowwise=rowwise, apply=fn)
        )

    def find(self, module: str, param: str, method: str, *, required: bool = True) -> str | None:
        name = self.resolve(f"{module}.{param}")
        if name is None and required:
            self.missing.append(
                f"module {module!r} ({method}): the base checkpoint has no tensor "
                f"{module}.{param}"
            )
        return name

    def rank_alpha(self, module: str) -> tuple[int, float]:
        c = self.config
        r_key = get_pattern_key(c.rank_pattern, module)
        a_key = get_pattern_key(c.alpha_pattern, module)
        r = c.rank_pattern[r_key] if r_key is not None else (c.r or DEFAULT_R)
        default_alpha = c.lora_alpha if c.lora_alpha is not None else DEFAULT_ALPHA
        alpha = c.alpha_pattern[a_key] if a_key is not None else default_alpha
        return r, float(alpha)

    def orientation(
        self, module: str, method: str, target: str, fits: Callable[[bool], bool],
        expected: Callable[[bool], list[int]], detail: str,
    ) -> bool:
        # peft flips fan_in_fan_out to match the layer it wraps (True for Conv1D, False for
        # nn.Linear), so the base weight's shape decides; the config only breaks ties.
        preferred = bool(self.raw.get("fan_in_fan_out"))
        for fifo in (preferred, not preferred):
            if fits(fifo):
                return fifo
        raise IncompatibleBase(
            f"module {module!r} ({method}): the adapter expects base weight {target} of shape "
            f"{expected(preferred)} ({detail}) but the base has {_shape(self.shapes[target])}"
        )

    # -- methods --

    def lora(self, module: str, parts: dict[str, Tensor]) -> None:
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        if a_name not in parts or b_name not in parts:
            have = ", ".join(sorted(parts))
            raise TensorMismatch(f"module {module!r} needs {a_name} and {b_name}, found {have}")
        a, b = parts[a_name], parts[b_name]
        if a.dim() != 2 or b.dim() != 2:
            raise Unmergeable(
                f"module {module!r}: LoRA on convolution layers (lora_A {_shape(a)}) is not "
                f"supported by merged export"
            )
        r, alpha = self.rank_alpha(module)
        if a.shape[0] != r or b.shape[1] != r:
            raise TensorMismatch(
                f"module {module!r}: {a_name} {_shape(a)} / {b_name} {_shape(b)} do not have the "
                f"configured rank {r}"
            )
        scale = lora_scale(alpha=alpha, r=r, use_rslora=bool(self.raw.get("use_rslora")))
        target = self.find(module, "weight", "LoRA")
        if target is None:
            return
        a, b = self.t(a), self.t(b)
        shape = _shape(self.shapes[target])
        magnitude = parts.get("lora_magnitude_vector")
        if magnitude is not None:
            magnitude = self.t(magnitude)
        if emb:
            expected = [a.shape[1], b.shape[0]]
            if shape != expected:
                raise IncompatibleBase(
                    f"module {module!r} (embedding LoRA): the adapter expects base weight "
                    f"{target} of shape {expected} but the base has {shape}"
                )
            if magnitude is not None:
                m = magnitude
                self.add(target, module, "dora", False,
                         lambda w, s, e: dora_embedding_merge(w, a, b, m, scale=scale))
            else:
                self.add(target, module, "lora", True,
                         lambda w, s, e: w.addmm_(a[:, s:e].T, b.T, alpha=scale))
            return
        out_f, in_f = b.shape[0], a.shape[1]
        fifo = self.orientation(
            module, "LoRA", target,
            lambda f: shape == ([in_f, out_f] if f else [out_f, in_f]),
            lambda f: [in_f, out_f] if f else [out_f, in_f],
            f"lora_B {_shape(b)} @ lora_A {_shape(a)}",
        )
        if magnitude is not None:
            if magnitude.numel() != out_f:
                raise TensorMismatch(
                    f"module {module!r}: lora_magnitude_vector has {magnitude.numel()} entries, "
                    f"expected {out_f}"
                )
            m = magnitude.reshape(-1)
            if fifo:
                self.add(target, module, "dora", False,
                         lambda w, s, e: dora_merge(w, a, b, m, scale=scale, fan_in_fan_out=True))
            else:
                self.add(target, module, "dora", True,
                         lambda w, s, e: dora_merge(w, a, b[s:e], m[s:e], scale=scale))
        elif fifo:
            self.add(target, module, "lora", True,
                     lambda w, s, e: w.addmm_(a[:, s:e].T, b.T, alpha=scale))
        else:
            self.add(target, module, "lora", True, lambda w, s, e: w.addmm_(b[s:e], a, alpha=scale))
        lora_bias = parts.get("lora_B.bias")
        if lora_bias is not None:
            bias_name = self.find(module, "bias", "lora_bias")
            if bias_name is None:
                return
            if _shape(self.shapes[bias_name]) != [out_f]:
                raise IncompatibleBase(
                    f"module {module!r} (lora_bias): base bias {bias_name} has shape "
                    f"{_shape(self.shapes[bias_name])}, expected [{out_f}]"
                )
            lb = self.t(lora_bias)
            self.add(bias_name, module, "lora_bias", True,
                     lambda w, s, e: w.add_(lb[s:e], alpha=scale))

    def ia3(self, module: str, parts: dict[str, Tensor]) -> None:
        vec = parts.get("ia3_l")
        if vec is None:
            raise TensorMismatch(f"module {module!r} has no ia3_l")
        if vec.dim() != 2:
            raise Unmergeable(
                f"module {module!r}: IA3 on convolution layers (ia3_l {_shape(vec)}) is not "
                f"supported by merged export"
            )
        ff_modules = self.raw.get("feedforward_modules") or []
        if isinstance(ff_modules, str):
            feedforward = re.fullmatch(ff_modules, module) is not None
        else:
            feedforward = any(module.endswith(t) for t in ff_modules)
        if (vec.shape[0] != 1) if feedforward else (vec.shape[1] != 1):
            raise TensorMismatch(
                f"module {module!r}: ia3_l has shape {_shape(vec)}, but a "
                f"{'feedforward' if feedforward else 'non-feedforward'} module needs "
                f"{'[1, in]' if feedforward else '[out, 1]'}"
            )
        target = self.find(module, "weight", "IA3")
        if target is None:
            return
        shape = _shape(self.shapes[target])
        n = vec.numel()
        # Feedforward vectors scale inputs: dim 1 of [out, in], dim 0 of Conv1D's [in, out].
        dim_of = (lambda f: 0 if f else 1) if feedforward else (lambda f: 1 if f else 0)
        fifo = self.orientation(
            module, "IA3", target,
            lambda f: len(shape) == 2 and shape[dim_of(f)] == n,
            lambda f: ["*", n] if dim_of(f) == 1 else [n, "*"],  # type: ignore[list-item]
            f"ia3_l {_shape(vec)}",
        )
        scaling = transpose(self.t(vec), fifo)
        if scaling.shape[0] == 1:
            self.add(target, module, "ia3", True, lambda w, s, e: w.mul_(scaling))
        else:
            self.add(target, module, "ia3", True, lambda w, s, e: w.mul_(scaling[s:e]))
        if not feedforward:
            bias_name = self.find(module, "bias", "IA3", required=False)
            if bias_name is not None:
                if _shape(self.shapes[bias_name]) != [n]:
                    raise IncompatibleBase(
                        f"module {module!r} (IA3): base bias {bias_name} has shape "
                        f"{_shape(self.shapes[bias_name])}, expected [{n}]"
                    )
                v = self.t(vec).reshape(-1)
                self.add(bias_name, module, "ia3_bias", True, lambda w, s, e: w.mul_(v[s:e]))

    def loha(self, module: str, parts: dict[str, Tensor]) -> None:
        if "hada_t1" in parts or "hada_t2" in parts:
            raise Unmergeable(
                f"module {module!r}: LoHa on convolution layers (hada_t1/hada_t2) is not "
                f"supported by merged export"
            )
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        missing = [n for n in names if n not in parts]
        if missing:
            raise TensorMismatch(f"module {module!r} lacks LoHa factors {', '.join(missing)}")
        w1a, w1b, w2a, w2b = (parts[n] for n in names)
        if any(t.dim() != 2 for t in (w1a, w1b, w2a, w2b)):
            raise Unmergeable(f"module {module!r}: LoHa on convolution layers is not supported")
        r, alpha = self.rank_alpha(module)
        scale = alpha / r
        target = self.find(module, "weight", "LoHa")
        if target is None:
            return
        expected = [w1a.shape[0], w1b.shape[1]]
        if _shape(self.shapes[target]) != expected or [w2a.shape[0], w2b.shape[1]] != expected:
            raise IncompatibleBase(
                f"module {module!r} (LoHa): the adapter expects base weight {target} of shape "
                f"{expected} but the base has {_shape(self.shapes[target])}"
            )
        w1a, w1b, w2a, w2b = (self.t(t) for t in (w1a, w1b, w2a, w2b))
        self.add(target, module, "loha", True,
                 lambda w, s, e: w.add_((w1a[s:e] @ w1b).mul_(w2a[s:e] @ w2b), alpha=scale))

    def lokr(self, module: str, parts: dict[str, Tensor]) -> None:
        if "lokr_t2" in parts:
            raise Unmergeable(
                f"module {module!r}: LoKr with effective convolution (lokr_t2) is not "
                f"supported by merged export"
            )
        factors: list[Tensor] = []
        for w in ("lokr_w1", "lokr_w2"):
            if w in parts:
                factors.append(self.t(parts[w]))
            elif f"{w}_a" in parts and f"{w}_b" in parts:
                factors.append(self.t(parts[f"{w}_a"]) @ self.t(parts[f"{w}_b"]))
            else:
                raise TensorMismatch(f"module {module!r} needs {w} or {w}_a and {w}_b")
        w1, w2 = factors
        if w1.dim() != 2 or w2.dim() != 2:
            raise Unmergeable(f"module {module!r}: LoKr on convolution layers is not supported")
        r, alpha = self.rank_alpha(module)
        scale = alpha / r
        target = self.find(module, "weight", "LoKr")
        if target is None:
            return
        expected = [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
        if _shape(self.shapes[target]) != expected:
            raise IncompatibleBase(
                f"module {module!r} (LoKr): the adapter expects base weight {target} of shape "
                f"{expected} (kron of {_shape(w1)} and {_shape(w2)}) but the base has "
                f"{_shape(self.shapes[target])}"
            )
        self.add(target, module, "lokr", True,
                 lambda w, s, e: w.add_(_lokr_rows(w1, w2, scale, s, e)))

    def replace(self, name: str, tensor: Tensor) -> None:
        target = self.resolve(name)
        module = name.rpartition(".")[0]
        if target is None:
            self.missing.append(
                f"module {module!r} (saved whole by the adapter, e.g. modules_to_save): the base "
                f"checkpoint has no tensor {name}"
            )
            return
        if _shape(self.shapes[target]) != _shape(tensor):
            raise IncompatibleBase(
                f"module {module!r}: the adapter saves {name} with shape {_shape(tensor)} but "
                f"the base has {_shape(self.shapes[target])} (a resized vocabulary needs the base "
                f"resized first; merged export does not resize)"
            )
        value = self.t(tensor)
        self.add(target, module, "replace", True, lambda w, s, e: w.copy_(value[s:e]))


def plan_merge(
    config: AdapterConfig,
    tensors: Mapping[str, Tensor],
    *,
    base_shapes: Mapping[str, Sequence[int]],
    device: str | torch.device = "cpu",
) -> MergePlan:
    """Turn an adapter into per-base-tensor edits, checking it fits the base.

    Scaling follows peft: per-module `rank_pattern` / `alpha_pattern` (peft's pattern matching),
    `use_rslora`; orientation follows the base weight's shape (Conv1D vs nn.Linear), the
    config's `fan_in_fan_out` breaking ties for square weights. Whole tensors the adapter saves
    (modules_to_save, `bias="all"`, saved embedding layers) replace the base tensor before any
    delta is applied, as loading a PeftModel does.

    Args:
        config: The parsed adapter config.
        tensors: The adapter's tensors (adapter_model.safetensors), any dtype.
        base_shapes: Every base tensor name -> shape.
        device: Where the edits compute (adapter tensors are moved there once).

    Returns:
        The plan.

    Raises:
        Unmergeable: The method or a layer type cannot be merged (see `check_mergeable`).
        IncompatibleBase: A module is missing from the base or its shape does not fit (all
            missing modules are named).
        TensorMismatch: The adapter's own tensors are inconsistent.
    """
    check_mergeable(config)
    planner = _Planner(config, base_shapes, torch.device(device))
    modules, replacements = _group(config, tensors)
    for name in sorted(replacements):
        planner.replace(name, replacements[name])
    method = {
        "LORA": planner.lora,
        "IA3": planner.ia3,
        "LOHA": planner.loha,
        "LOKR": planner.lokr,
    }[config.peft_type]
    for module in sorted(modules):
        method(module, modules[module])
    if planner.missing:
        shown = "; ".join(planner.missing[:5])
        more = f" (and {len(planner.missing) - 5} more)" if len(planner.missing) > 5 else ""
        raise IncompatibleBase(f"{shown}{more}")
    touched = sorted({e.module for edits in planner.edits.values() for e in edits})
    return MergePlan(edits=planner.edits, modules=tuple(touched))
