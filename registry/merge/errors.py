"""Errors specific to merged export; they subclass the registry's tree so the API maps them."""

from __future__ import annotations

from registry.errors import InvalidInput, Unmergeable


class IncompatibleBase(Unmergeable):
    """The adapter does not fit the base model."""

    code = "incompatible_base"


class QuantizedBase(Unmergeable):
    """Adapters cannot be merged into quantized base weights."""

    code = "quantized_base"


class OutputExists(InvalidInput):
    """The export directory exists and is not empty."""

    code = "output_exists"
