"""Pure compatibility layer: will an adapter load onto a base model, judged from manifests alone."""

from registry.compat.findings import Finding, Verdict
from registry.compat.manifest import (
    BaseManifest,
    base_manifest,
    config_summary,
    shape_fingerprint,
)
from registry.compat.rules import check_compatibility
from registry.compat.serving import SERVING_TARGETS, serving_support

__all__ = [
    "SERVING_TARGETS",
    "BaseManifest",
    "Finding",
    "Verdict",
    "base_manifest",
    "check_compatibility",
    "config_summary",
    "serving_support",
    "shape_fingerprint",
]
