"""Static compatibility rules: does an adapter load onto a base model, judged from two manifests.

The verdict predicts what `peft.PeftModel.from_pretrained(base, adapter)` does: the pair is
compatible exactly when the load succeeds with no missing and no unexpected adapter keys. No
tensor bytes are read; everything follows from the adapter's config and tensor manifest and the
base's config summary and weight manifest.

What is checked, per method (shapes as peft 0.21 builds them, see registry.compat.shapes; which
methods are modelled is registry.formats.peft_methods' SHAPE_MODELLED and PROMPT_WIDTH_CHECKED):
- LoRA (incl. DoRA, rslora, rank_pattern, embedding LoRA, lora_bias), IA3, LoHa, LoKr: every
  adapted module exists in the base (namespace rule in registry.compat.namespace) and its
  adapter tensors have the shapes PEFT would create there at the module's effective rank
  (rank_pattern, else r); base modules matched by target_modules that the adapter has no
  weights for are reported too, since PEFT creates them and reports their keys missing.
- Full tensors (modules_to_save, embeddings saved whole, biases): the base has the tensor with
  the same shape. A vocabulary resized during training is reported as `vocab_resized`. A
  missing lm_head is the tied (or config-sized) output embedding. A modules_to_save head that
  is a direct child of the task wrapper and absent from the base (a classifier on a bare
  backbone) is created by the task class when the base loads, so it is a `new_module` warning.
- PROMPT_TUNING, P_TUNING: prompt_embeddings `[virtual tokens * transformer submodules,
  token_dim]` needs token_dim == the base's hidden size. PEFT sizes the prompt encoder from the
  adapter config, so a wrong width loads and fails only at the first forward pass; the verdict
  reports it as a mismatch all the same.
- Other PEFT types, and parameter-targeting LoRA: compatible with a `not_checkable` warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.compat import findings as codes
from registry.compat.context import CheckContext, split_adapter
from registry.compat.extras import check_full, check_prompt, check_tokens
from registry.compat.findings import Finding, Verdict
from registry.compat.manifest import BaseManifest
from registry.compat.modules import (
    check_coverage,
    check_module,
    layer_findings,
    uncovered_findings,
)
from registry.compat.serving import serving_support
from registry.formats.peft import AdapterConfig
from registry.formats.peft_methods import PROMPT_WIDTH_CHECKED, SHAPE_MODELLED
from registry.formats.safetensors import TensorInfo

__all__ = ["Finding", "Verdict", "check_compatibility", "serving_support"]

DEFAULT_MAX_FINDINGS = 200


def _same_name(a: str, b: str) -> bool:
    return a.strip().rstrip("/").casefold() == b.strip().rstrip("/").casefold()


def _provenance(
    config: AdapterConfig,
    base: BaseManifest,
    *,
    base_name: str | None,
    declared_base_name: str | None,
    declared_base_fingerprint: str | None,
) -> list[Finding]:
    out: list[Finding] = []
    declared = declared_base_name or config.base_model_name_or_path
    if declared and base_name and not _same_name(declared, base_name):
        if declared_base_fingerprint and declared_base_fingerprint == base.fingerprint:
            out.append(
                Finding(
                    code=codes.FINGERPRINT_MATCH_OTHER_NAME,
                    message=(
                        f"the adapter declares base {declared!r}, not {base_name!r}, but the two "
                        f"have the same shape fingerprint"
                    ),
                    expected=declared,
                    found=base_name,
                )
            )
        else:
            out.append(
                Finding(
                    code=codes.DECLARED_BASE_DIFFERS,
                    message=(
                        f"the adapter declares base {declared!r}, not {base_name!r}; the verdict "
                        f"rests on shapes only"
                    ),
                    expected=declared,
                    found=base_name,
                )
            )
    elif declared and declared_base_fingerprint and declared_base_fingerprint != base.fingerprint:
        out.append(
            Finding(
                code=codes.FINGERPRINT_DIFFERS,
                message=(
                    f"the registered {declared!r} the adapter declares has a different shape "
                    f"fingerprint than this base"
                ),
                expected=declared_base_fingerprint,
                found=base.fingerprint,
            )
        )
    trained_on = config.raw.get("revision")
    if isinstance(trained_on, str) and trained_on and base.revision and trained_on != base.revision:
        out.append(
            Finding(
                code=codes.REVISION_DIFFERS,
                message=(
                    f"the adapter was trained on base revision {trained_on!r}; this base is "
                    f"revision {base.revision!r}"
                ),
                expected=trained_on,
                found=base.revision,
            )
        )
    return out


def _serving_warnings(serving: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    out = []
    for target, report in serving.items():
        if report["supported"]:
            continue
        features = [r["code"] for r in report["reasons"]]
        out.append(
            Finding(
                code=codes.SERVING_UNSUPPORTED,
                message="; ".join(r["message"] for r in report["reasons"]),
                found={"target": target, "features": features},
            )
        )
    return out


def _cap(findings: list[Finding], limit: int) -> list[Finding]:
    if len(findings) <= limit:
        return findings
    kept = findings[: max(limit - 1, 0)]
    omitted = len(findings) - len(kept)
    return [
        *kept,
        Finding(
            code=codes.TOO_MANY_FINDINGS,
            message=f"{omitted} more findings of the same kinds are not listed",
            found=omitted,
        ),
    ]


def check_compatibility(
    config: AdapterConfig,
    adapter_tensors: Mapping[str, TensorInfo],
    base: BaseManifest,
    *,
    base_name: str | None = None,
    declared_base_name: str | None = None,
    declared_base_fingerprint: str | None = None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
) -> Verdict:
    """Predict whether PEFT loads the adapter onto the base with no missing or unexpected keys.

    Args:
        config: The adapter's parsed config.
        adapter_tensors: The manifest of adapter_model.safetensors.
        base: The base model's manifest.
        base_name: The base's registered name, for the provenance warnings.
        declared_base_name: The base the adapter declares; defaults to the config's
            base_model_name_or_path.
        declared_base_fingerprint: The shape fingerprint of the declared base, when registered.
        max_findings: Reasons (and warnings) beyond this many are summarised in one finding.

    Returns:
        The Verdict; `compatible` is True exactly when there are no reasons.
    """
    parts = split_adapter(config, adapter_tensors)
    ctx = CheckContext(config, parts, base)
    peft_type = config.peft_type
    modelled = peft_type in SHAPE_MODELLED and not config.raw.get("target_parameters")
    prompt = peft_type in PROMPT_WIDTH_CHECKED
    if modelled:
        for module in sorted(parts.modules):
            check_module(ctx, module)
        check_coverage(ctx)
        check_tokens(ctx)
    elif prompt:
        check_prompt(ctx)
    else:
        what = "parameter-targeting LoRA" if peft_type in SHAPE_MODELLED else peft_type
        ctx.warn(
            codes.NOT_CHECKABLE,
            f"{what} adapters are not modelled; only modules_to_save tensors were compared "
            f"with the base",
            found=peft_type,
        )
    if modelled or prompt:
        for name in parts.stray:
            ctx.reason(
                codes.UNEXPECTED_TENSOR,
                f"{name} is not under the prefix PEFT loads from, so it would be an unexpected key",
                tensor=name,
            )
    check_full(ctx, only_modules_to_save=not (modelled or prompt))

    reasons = [*layer_findings(ctx), *ctx.reasons, *uncovered_findings(ctx)]
    serving = serving_support(config, adapter_tensors)
    warnings = [
        *_provenance(
            config,
            base,
            base_name=base_name,
            declared_base_name=declared_base_name,
            declared_base_fingerprint=declared_base_fingerprint,
        ),
        *ctx.warnings,
        *_serving_warnings(serving),
    ]
    return Verdict(
        compatible=not reasons,
        reasons=_cap(reasons, max_findings),
        warnings=_cap(warnings, max_findings),
        serving=serving,
        checked_modules=len(ctx.checked),
    )
