"""The edit planner of merged export: an adapter's tensors -> a MergePlan of base-tensor edits.

`plan_merge` checks that an adapter fits the base (from the base's tensor shapes alone) and
turns it into per-base-tensor edits (TensorEdit) that the streaming writer applies one tensor,
or one block of rows, at a time, with the math of `registry.merge.math`. What is merged, with
which scaling and refusals, is the PEFT method table's (`registry.formats.peft_methods`). The
output shard layout is another plan: `registry.merge.layout.ExportPlan`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from registry.errors import IncompatibleBase, TensorMismatch, Unmergeable
from registry.formats.peft import AdapterConfig
from registry.formats.peft_methods import (
    MODEL_PREFIX,
    PEFT_METHODS,
    module_alpha,
    module_rank,
    split_component,
)
from registry.merge.math import (
    dora_embedding_merge,
    dora_merge,
    lokr_rows,
    lora_scale,
    transpose,
)

RowFn = Callable[[Tensor, int, int], Tensor]

# What check_mergeable names as supported: the table's mergeable methods, in table order.
_SUPPORTED = ", ".join(
    m.name + (f" ({m.merge_note})" if m.merge_note else "")
    for m in PEFT_METHODS.values()
    if m.mergeable
)


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

    What merged export supports is the method table's (registry.formats.peft_methods:
    `mergeable`, `merge_refusal`, `merge_refusals`).

    Args:
        config: The parsed adapter config.

    Raises:
        Unmergeable: Prompt learning, an unsupported PEFT method or LoRA variant.
    """
    peft_type = config.peft_type
    method = PEFT_METHODS.get(peft_type)
    if method is None or not method.mergeable:
        if method is not None and method.merge_refusal:
            raise Unmergeable(f"{peft_type} {method.merge_refusal}")
        raise Unmergeable(
            f"{peft_type} adapters are not supported by merged export; supported: {_SUPPORTED}"
        )
    for refusal in method.merge_refusals:
        if refusal.applies(config.raw):
            setting = "is set" if refusal.value is None else f"is {refusal.value!r}"
            raise Unmergeable(f"{refusal.key} {setting}: {refusal.why}")


def _group(config: AdapterConfig, tensors: Mapping[str, Tensor]) -> tuple[
    dict[str, dict[str, Tensor]], dict[str, Tensor]
]:
    """Split adapter tensors into per-module components and whole base tensors to replace."""
    method = PEFT_METHODS[config.peft_type]
    modules: dict[str, dict[str, Tensor]] = {}
    replacements: dict[str, Tensor] = {}
    for name in sorted(tensors):
        if not name.startswith(MODEL_PREFIX):
            raise TensorMismatch(
                f"tensor {name!r} is not under {MODEL_PREFIX!r}, where PEFT saves "
                f"{config.peft_type} weights"
            )
        rel = name[len(MODEL_PREFIX) :]
        split = split_component(rel, method.components)
        if split is None:
            # Everything else peft saves is a whole parameter that loading copies over the base
            # one: modules_to_save, biases with bias="all"/"lora_only", saved embedding layers.
            owner, _, param = rel.rpartition(".")
            if owner.endswith(".base_layer"):
                owner = owner.removesuffix(".base_layer")
            if "modules_to_save" in owner.split(".") or owner.endswith(".token_adapter"):
                raise Unmergeable(f"tensor {name!r} is not in a layout merged export understands")
            replacements[f"{owner}.{param}" if owner else param] = tensors[name]
            continue
        module, key, suffix = split
        why = method.unmerged_components.get(key)
        if why is not None:
            raise Unmergeable(f"module {module!r}: {why} is not supported by merged export")
        if suffix == "bias":
            key += ".bias"
        elif suffix not in ("", "weight"):
            raise TensorMismatch(f"tensor {name!r}: unexpected suffix {suffix!r}")
        modules.setdefault(module, {})[key] = tensors[name]
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
        # The one resolver (rank_pattern / alpha_pattern, then r / alpha, then peft's default).
        r, r_source = module_rank(self.config, module)
        alpha, a_source = module_alpha(self.config, module)
        if r is None or alpha is None:
            raise Unmergeable(
                f"module {module!r}: {r_source if r is None else a_source}, so merged export "
                f"cannot scale it"
            )
        return r, alpha

    def scaled_target(self, module: str, method: str) -> tuple[str, float] | None:
        """(base weight, alpha / r) of a LoHa or LoKr module; None if the base lacks it."""
        r, alpha = self.rank_alpha(module)
        target = self.find(module, "weight", method)
        return None if target is None else (target, alpha / r)

    def orientation(
        self, module: str, method: str, target: str, fits: Callable[[bool], bool],
        expected: Callable[[bool], list[int | str]], detail: str,
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
            lambda f: ["*", n] if dim_of(f) == 1 else [n, "*"],
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
        # hada_t1/hada_t2 (convolutions) were refused by _group, from the method table.
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        missing = [n for n in names if n not in parts]
        if missing:
            raise TensorMismatch(f"module {module!r} lacks LoHa factors {', '.join(missing)}")
        w1a, w1b, w2a, w2b = (parts[n] for n in names)
        if any(t.dim() != 2 for t in (w1a, w1b, w2a, w2b)):
            raise Unmergeable(f"module {module!r}: LoHa on convolution layers is not supported")
        found = self.scaled_target(module, "LoHa")
        if found is None:
            return
        target, scale = found
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
        # lokr_t2 (effective convolution) was refused by _group, from the method table.
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
        found = self.scaled_target(module, "LoKr")
        if found is None:
            return
        target, scale = found
        expected = [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
        if _shape(self.shapes[target]) != expected:
            raise IncompatibleBase(
                f"module {module!r} (LoKr): the adapter expects base weight {target} of shape "
                f"{expected} (kron of {_shape(w1)} and {_shape(w2)}) but the base has "
                f"{_shape(self.shapes[target])}"
            )
        self.add(target, module, "lokr", True,
                 lambda w, s, e: w.add_(lokr_rows(w1, w2, scale, s, e)))

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
    """Turn an adapter into its MergePlan (per-base-tensor edits), checking it fits the base.

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
        The MergePlan.

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
    plan_module = PLANNERS[config.peft_type]
    for module in sorted(modules):
        plan_module(planner, module, modules[module])
    if planner.missing:
        shown = "; ".join(planner.missing[:5])
        more = f" (and {len(planner.missing) - 5} more)" if len(planner.missing) > 5 else ""
        raise IncompatibleBase(f"{shown}{more}")
    touched = sorted({e.module for edits in planner.edits.values() for e in edits})
    return MergePlan(edits=planner.edits, modules=tuple(touched))


# How the planner folds each method the table marks mergeable, by peft_type.
PLANNERS: dict[str, Callable[[_Planner, str, dict[str, Tensor]], None]] = {
    "LORA": _Planner.lora,
    "IA3": _Planner.ia3,
    "LOHA": _Planner.loha,
    "LOKR": _Planner.lokr,
}
