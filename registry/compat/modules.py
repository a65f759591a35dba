"""Rules for adapted modules (LoRA, IA3, LoHa, LoKr): existence, shapes, rank, coverage, layers."""

from __future__ import annotations

from collections.abc import Mapping

from registry.compat import findings as codes
from registry.compat.context import IMPLIED_HEAD_NOTE, CheckContext, default_tensor_name
from registry.compat.findings import Finding
from registry.compat.namespace import is_targeted, layer_index
from registry.compat.shapes import (
    CONV1D,
    Shape,
    expected_tensors,
    found_rank,
    kron_shape,
    layer_kind,
    loha_shape,
)
from registry.formats.peft_methods import PEFT_METHODS, is_all_linear, module_rank


def _product_note(peft_type: str, found: Mapping[str, Shape], out_f: int, in_f: int) -> str:
    # LoHa and LoKr rebuild a full delta; say what the saved factors multiply out to.
    if peft_type == "LOKR":
        product, what = kron_shape(found), "kron(lokr_w1, lokr_w2)"
    elif peft_type == "LOHA":
        product, what = loha_shape(found), "(hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b)"
    else:
        return ""
    if product is None or product == (out_f, in_f):
        return ""
    return f"; {what} is {list(product)} but the base weight is [{out_f}, {in_f}] (out, in)"


def _unsupported(ctx: CheckContext, module: str, tensor: str, weight: Shape, what: str) -> None:
    base_module = ctx.map.to_base(module)
    ctx.reason(
        codes.UNSUPPORTED_MODULE,
        f"{base_module} is {what}; PEFT cannot apply {ctx.config.peft_type} to it",
        module=base_module,
        tensor=tensor,
        found=list(weight),
    )


def check_module(ctx: CheckContext, module: str) -> None:
    """Compare one adapted module's tensors with what PEFT builds on the base's module.

    Args:
        ctx: The check in progress.
        module: Module path in the adapter's namespace (a key of ctx.parts.modules).
    """
    peft_type = ctx.config.peft_type
    comps = ctx.parts.modules[module]
    modelled = PEFT_METHODS[peft_type].shape_keys
    found = {k: shape for k, (_, shape) in comps.items() if k in modelled}
    names = {k: name for k, (name, _) in comps.items()}
    first = names[min(names)]
    base_module = ctx.map.to_base(module)
    weight, implied = ctx.base_param(f"{module}.weight")
    if weight is None:
        ctx.missing_module(
            module, tensor=first,
            message=f"the adapter has {peft_type} weights for {base_module}, which the base "
                    f"model does not have",
        )
        return
    if len(weight) < 2:
        _unsupported(ctx, module, first, weight, f"a {len(weight)}-D weight (not a layer)")
        return
    if len(weight) > 2:
        ctx.warn(
            codes.NOT_CHECKABLE,
            f"{base_module} has a {len(weight)}-D weight (convolution); its {peft_type} shapes "
            f"are not checked",
            module=base_module,
            found=list(weight),
        )
        return
    kind = layer_kind(
        model_type=ctx.base.model_type,
        module=module,
        is_embedding="lora_embedding_A" in found or "lora_embedding_B" in found,
        fan_in_fan_out=bool(ctx.raw.get("fan_in_fan_out")),
    )
    if kind == CONV1D and not PEFT_METHODS[peft_type].wraps_conv1d:
        _unsupported(ctx, module, first, weight, "a Conv1D layer (LoHa and LoKr wrap nn.Linear)")
        return
    ctx.checked.add(base_module)

    rank, source = module_rank(ctx.config, module)
    saved_rank = found_rank(peft_type, found)
    if rank is not None and saved_rank is not None and saved_rank != rank:
        ctx.reason(
            codes.RANK_MISMATCH,
            f"{base_module} was saved with rank {saved_rank} but {source} makes PEFT build "
            f"rank {rank}",
            module=base_module,
            tensor=first,
            expected=rank,
            found=saved_rank,
        )
        # Compare the other dimensions at the saved rank, so a base mismatch still shows.
        rank = saved_rank
    spec = expected_tensors(
        peft_type=peft_type,
        raw=ctx.raw,
        module=module,
        kind=kind,
        weight=weight,
        rank=rank,
        found=found,
    )
    note = _product_note(peft_type, found, spec.out_features, spec.in_features)
    if implied:
        note += IMPLIED_HEAD_NOTE
    # The vocabulary is the row count of an embedding or lm_head weight; a Conv1D has none.
    base_rows = weight[0] if kind != CONV1D else None
    for key in sorted(set(spec.tensors) | set(found)):
        tensor = names.get(key) or default_tensor_name(module, key)
        want, got = spec.tensors.get(key), found.get(key)
        if got is None and want is not None:
            ctx.reason(
                codes.MISSING_ADAPTER_WEIGHTS,
                f"PEFT would create {tensor} {list(want)} on {base_module} but the adapter does "
                f"not have it{note}",
                module=base_module,
                tensor=tensor,
                expected=list(want),
            )
        elif want is None and got is not None:
            ctx.reason(
                codes.UNEXPECTED_TENSOR,
                f"{tensor} has no counterpart in what PEFT builds on {base_module} ({kind} "
                f"layer), so it would be an unexpected key{note}",
                module=base_module,
                tensor=tensor,
                found=list(got),
            )
        elif want is not None and got is not None and want != got:
            ctx.mismatch(
                module=module,
                tensor=tensor,
                expected=want,
                found=got,
                base_rows=base_rows,
                note=note,
            )


def check_coverage(ctx: CheckContext) -> None:
    """Find base modules PEFT would adapt (target_modules) that the adapter has no weights for.

    Only modules with a weight of 2 or more dimensions count: PEFT wraps layers, not norms.

    Args:
        ctx: The check in progress; fills ctx.uncovered.
    """
    if ctx.raw.get("target_parameters"):
        return
    targets = ctx.config.target_modules
    if targets is None or is_all_linear(targets):
        # PEFT resolves both when it creates the adapter and saves the result; a config that
        # still has them leaves the adapted modules as the best record of what was targeted.
        targets = sorted({m.rpartition(".")[2] for m in ctx.parts.modules})
    for name in sorted(ctx.params):
        if not name.endswith(".weight") or len(ctx.params[name]) < 2:
            continue
        module = ctx.map.to_adapter(name.removesuffix(".weight"))
        if module is None or module in ctx.parts.modules:
            continue
        if is_targeted(ctx.raw, targets, module):
            ctx.uncovered.append(module)


def _at_or_past(module: str, layers: int) -> bool:
    index = layer_index(module)
    return index is not None and index >= layers


def layer_findings(ctx: CheckContext) -> list[Finding]:
    """One `layer_count` finding when a layer-count difference explains missing modules/weights.

    Args:
        ctx: The check, after check_module and check_coverage.

    Returns:
        Zero or one Finding (expected: the base's layers; found: the adapter's).
    """
    base_layers = ctx.base_layers()
    indexes = [i for m in ctx.parts.modules if (i := layer_index(m)) is not None]
    if base_layers is None or not indexes:
        return []
    adapter_layers = max(indexes) + 1
    beyond = [m for m in ctx.missing_modules if _at_or_past(m, base_layers)]
    short = [m for m in ctx.uncovered if _at_or_past(m, adapter_layers)]
    if beyond:
        message = (
            f"the adapter has weights for {adapter_layers} layers but the base has "
            f"{base_layers}: {len(beyond)} adapted modules lie beyond the base's last layer"
        )
    elif short:
        message = (
            f"the adapter has weights for {adapter_layers} layers but the base has "
            f"{base_layers}: PEFT would add untrained adapter layers to the other "
            f"{base_layers - adapter_layers} and report their keys missing"
        )
    else:
        return []
    return [Finding(codes.LAYER_COUNT, message, expected=base_layers, found=adapter_layers)]


def uncovered_findings(ctx: CheckContext) -> list[Finding]:
    """A `missing_adapter_weights` finding per targeted base module the adapter lacks."""
    out = []
    for module in ctx.uncovered:
        base_module = ctx.map.to_base(module)
        out.append(
            Finding(
                codes.MISSING_ADAPTER_WEIGHTS,
                f"{base_module} matches target_modules, so PEFT adds a {ctx.config.peft_type} "
                f"layer to it, but the adapter has no weights for it (missing adapter keys)",
                module=base_module,
            )
        )
    return out
