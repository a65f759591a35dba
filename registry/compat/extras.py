"""Rules for whole tensors (modules_to_save, embeddings, biases), trainable tokens, prompts."""

from __future__ import annotations

from registry.compat import findings as codes
from registry.compat.context import IMPLIED_HEAD_NOTE, CheckContext
from registry.formats.peft import modules_to_save_root


def check_full(ctx: CheckContext, *, only_modules_to_save: bool = False) -> None:
    """Compare every whole tensor the adapter saves with the base's tensor of the same name.

    A tensor of a module the base lacks is a `new_module` warning when it belongs to a
    modules_to_save entry that is a direct child of the task wrapper (a head such as
    `classifier` or `score`, which the task class creates when the base loads); otherwise the
    module is missing. A module that exists without that parameter is `missing_parameter`.

    Args:
        ctx: The check in progress.
        only_modules_to_save: Skip tensors outside modules_to_save (for unmodelled methods,
            whose own tensors are not module parameters).
    """
    new_heads: dict[str, dict[str, list[int]]] = {}
    modules_to_save = ctx.config.modules_to_save
    for rel in sorted(ctx.parts.full):
        tensor, got = ctx.parts.full[rel]
        root = modules_to_save_root(modules_to_save, rel)
        if only_modules_to_save and root is None:
            continue
        module, _, param = rel.rpartition(".")
        base_module = ctx.map.to_base(module)
        want, implied = ctx.base_param(rel)
        if want is not None:
            ctx.checked.add(base_module)
            if want != got:
                ctx.mismatch(
                    module=module,
                    tensor=tensor,
                    expected=want,
                    found=got,
                    base_rows=want[0] if want else None,
                    note=IMPLIED_HEAD_NOTE if implied else "",
                )
        elif base_module in ctx.owners:
            ctx.reason(
                codes.MISSING_PARAMETER,
                f"{base_module} has no parameter {param!r} in the base, but the adapter saves "
                f"{tensor}",
                module=base_module,
                tensor=tensor,
                found=list(got),
            )
        elif root is not None and "." not in root:
            new_heads.setdefault(root, {})[rel[len(root) + 1 :]] = list(got)
        elif module not in ctx.missing_modules:
            ctx.missing_module(
                module, tensor=tensor,
                message=f"the adapter saves {tensor} but the base model has no module "
                        f"{base_module}",
            )
    for root, params in sorted(new_heads.items()):
        ctx.warn(
            codes.NEW_MODULE,
            f"modules_to_save {root!r} is not in the base checkpoint; the task class creates it "
            f"when the base loads and the adapter supplies its weights (shapes not checked)",
            module=root,
            found=params,
        )


def check_tokens(ctx: CheckContext) -> None:
    """Trainable-token deltas `[n_tokens, dim]` must match their embedding's dim."""
    for module in sorted(ctx.parts.tokens):
        tensor, got = ctx.parts.tokens[module]
        weight, _ = ctx.base_param(f"{module}.weight")
        base_module = ctx.map.to_base(module)
        if weight is None:
            ctx.missing_module(
                module, tensor=tensor,
                message=f"the adapter has trainable tokens for {base_module}, which the base "
                        f"model does not have",
            )
            continue
        ctx.checked.add(base_module)
        if len(got) == 2 and len(weight) == 2 and got[1] != weight[1]:
            ctx.mismatch(
                module=module,
                tensor=tensor,
                expected=(got[0], weight[1]),
                found=got,
                base_rows=None,
            )


def check_prompt(ctx: CheckContext) -> None:
    """prompt_embeddings `[virtual tokens * submodules, token_dim]` needs token_dim == hidden.

    PEFT sizes the prompt encoder from the adapter's own token_dim, so a wrong width loads
    without complaint and fails at the first forward pass; it is still a mismatch here.
    """
    name = "prompt_embeddings"
    entry = ctx.parts.prompt.get(name)
    hidden = ctx.base.hidden_size
    if hidden is None:
        embedding = ctx.input_embedding()
        hidden = embedding[1] if embedding else None
    if entry is None or hidden is None:
        ctx.warn(
            codes.NOT_CHECKABLE,
            f"{ctx.config.peft_type}: the base hidden size or the adapter's prompt_embeddings "
            f"is unknown, so the prompt width is not checked",
            tensor=name,
        )
        return
    _, got = entry
    ctx.checked.add(name)
    rows = got[0] if got else 0
    if len(got) != 2 or got[1] != hidden:
        ctx.reason(
            codes.SHAPE_MISMATCH,
            f"prompt_embeddings has shape {list(got)} but the base's hidden size is {hidden}, "
            f"so the virtual tokens must be [{rows}, {hidden}] (PEFT loads them and fails at the "
            f"first forward pass)",
            tensor=name,
            expected=[rows, hidden],
            found=list(got),
        )
