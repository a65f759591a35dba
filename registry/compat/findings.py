"""The verdict of a compatibility check and the machine-readable findings it is made of.

`module` is a module path as the base checkpoint names it, `tensor` an adapter tensor name.
`expected` is what the base implies and `found` what the adapter has:
- shape_mismatch: shapes ([out, r] ...); rank_mismatch: ranks; vocab_resized: vocabulary sizes;
  layer_count: layer counts (base, adapter); missing_adapter_weights: the shape PEFT would create
  (None for a whole module); unsupported_module / unexpected_tensor / missing_parameter: `found`
  is the adapter's (or base's) shape.
- fingerprint_match_other_name / declared_base_differs: declared name vs this base's name;
  fingerprint_differs: fingerprints; revision_differs: the adapter's revision vs the base's;
  serving_unsupported: `found` is {"target", "features"}; namespace_mapped: `found` is
  {"drop_prefix" | "add_prefix": "<p>."}; new_module: `found` is the head's parameter shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Reason codes (each makes the pair incompatible).
MISSING_MODULE = "missing_module"
MISSING_PARAMETER = "missing_parameter"
SHAPE_MISMATCH = "shape_mismatch"
RANK_MISMATCH = "rank_mismatch"
VOCAB_RESIZED = "vocab_resized"
LAYER_COUNT = "layer_count"
MISSING_ADAPTER_WEIGHTS = "missing_adapter_weights"
UNEXPECTED_TENSOR = "unexpected_tensor"
UNSUPPORTED_MODULE = "unsupported_module"
TOO_MANY_FINDINGS = "more_findings"

# Warning codes (informational; the pair stays compatible).
NOT_CHECKABLE = "not_checkable"
NEW_MODULE = "new_module"
FINGERPRINT_MATCH_OTHER_NAME = "fingerprint_match_other_name"
DECLARED_BASE_DIFFERS = "declared_base_differs"
FINGERPRINT_DIFFERS = "fingerprint_differs"
REVISION_DIFFERS = "revision_differs"
SERVING_UNSUPPORTED = "serving_unsupported"
NAMESPACE_MAPPED = "namespace_mapped"


def _jsonable(value: Any) -> Any:
    # Shapes travel as tuples internally; JSON consumers compare them as lists.
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Finding:
    """One reason or warning: a stable code, a sentence, and where and what it is about."""

    code: str
    message: str
    module: str | None = None
    tensor: str | None = None
    expected: Any = None
    found: Any = None

    def to_json(self) -> dict[str, Any]:
        """{"code", "message", "module", "tensor", "expected", "found"}, JSON-ready."""
        return {
            "code": self.code,
            "message": self.message,
            "module": self.module,
            "tensor": self.tensor,
            "expected": _jsonable(self.expected),
            "found": _jsonable(self.found),
        }


@dataclass(frozen=True)
class Verdict:
    """Whether an adapter loads onto a base, why not, what to watch, and where it can be served.

    `serving` maps a serving target ("vllm", "lorax") to {"supported": bool, "reasons": [finding
    JSON, ...]}. `checked_modules` counts the base modules whose shapes were compared.
    """

    compatible: bool
    reasons: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    serving: dict[str, dict[str, Any]] = field(default_factory=dict)
    checked_modules: int = 0

    def to_json(self) -> dict[str, Any]:
        """{"compatible", "reasons", "warnings", "serving", "checked_modules"}, JSON-ready."""
        return {
            "compatible": self.compatible,
            "reasons": [f.to_json() for f in self.reasons],
            "warnings": [f.to_json() for f in self.warnings],
            "serving": _jsonable(self.serving),
            "checked_modules": self.checked_modules,
        }
