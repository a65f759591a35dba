"""Adapter and base model names, and references to versions: NAME, NAME:VERSION, NAME@ALIAS."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidAlias, InvalidName, InvalidReference

_SEGMENT = r"[a-z0-9][a-z0-9._-]*"
NAME_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})?$")
# Short, URL- and shell-safe, never a number (so NAME@3 cannot be mistaken for a version).
ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
MAX_NAME_LENGTH = 200
# The same rule as a JSON-schema pattern, for OpenAPI (documented only: the registry's own
# checks answer invalid_name). A name segment never holds "..": every dot is followed by
# another character or ends it.
_DOC_SEGMENT = r"[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?"
NAME_PATTERN = rf"^{_DOC_SEGMENT}(?:/{_DOC_SEGMENT})?$"


def validate_name(name: str, *, what: str = "adapter name") -> str:
    """Check an adapter (or base model) name.

    Args:
        name: ``name`` or ``namespace/name``; lowercase letters, digits, ``.``, ``_``, ``-``,
            starting with a letter or digit.

    Returns:
        The name, unchanged.

    Raises:
        InvalidName: the name breaks the rules.
    """
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME_LENGTH:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}…"
        raise InvalidName(
            f"invalid {what} {shown!r}: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, optionally as namespace/name "
            f"(at most {MAX_NAME_LENGTH} characters)"
        )
    if ".." in name:
        raise InvalidName(f"invalid {what} {name!r}: '..' is not allowed")
    return name


def validate_alias(alias: str) -> str:
    """Check an alias name (``production``, ``staging``, ``canary-2``).

    Returns:
        The alias, unchanged.

    Raises:
        InvalidAlias: not a lowercase letter followed by up to 62 lowercase letters, digits or
            ``-``.
    """
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        shown = alias if isinstance(alias, str) and len(alias) <= 80 else f"{str(alias)[:80]}…"
        raise InvalidAlias(
            f"invalid alias {shown!r}: a lowercase letter, then lowercase letters, digits or "
            "'-' (at most 63 characters)"
        )
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference; ``version`` and ``alias`` are both None for "latest"."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(ref: str) -> Ref:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.

    Raises:
        InvalidReference: the reference is malformed.
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidReference("empty reference; use NAME, NAME:VERSION or NAME@ALIAS")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            if not ALIAS_RE.fullmatch(alias):
                raise InvalidReference(
                    f"invalid alias in reference {ref[:120]!r}: a lowercase letter, then "
                    "lowercase letters, digits or '-' (at most 63 characters)"
                )
            return Ref(validate_name(name), alias=alias)
        if ":" in ref:
            name, version = ref.split(":", 1)
            if not version.isascii() or not version.isdigit() or int(version) < 1:
                raise InvalidReference(
                    f"invalid version in reference {ref!r}: versions are integers from 1"
                )
            return Ref(validate_name(name), version=int(version))
        return Ref(validate_name(ref))
    except InvalidName as exc:
        raise InvalidReference(f"invalid reference {ref!r}: {exc.detail}") from None
