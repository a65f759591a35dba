"""Token names and namespaces: the rules, shared by the service and the HTTP client."""

from __future__ import annotations

import re

from registry.errors import InvalidName

TOKEN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# The same rule (token names and namespaces) for OpenAPI (documented only; a bad name gets
# invalid_name): no "..".
TOKEN_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?$"
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def validate_token_name(name: str) -> str:
    """Check a token name: lowercase letters, digits, '.', '_', '-', at most 100 characters.

    Raises:
        InvalidName: the name breaks the rules.
    """
    if not isinstance(name, str) or not TOKEN_NAME_RE.match(name) or ".." in name:
        raise InvalidName(
            f"invalid token name {str(name)[:80]!r}: lowercase letters, digits, '.', '_' and "
            "'-', starting with a letter or digit (at most 100 characters)")
    return name


def validate_namespace(namespace: str) -> str:
    """Check a namespace (the part of an adapter name before '/').

    Raises:
        InvalidName: the namespace breaks the rules of an adapter name's segment.
    """
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace) or ".." in namespace:
        raise InvalidName(
            f"invalid namespace {str(namespace)[:80]!r}: the part of an adapter name before "
            "'/' (lowercase letters, digits, '.', '_', '-')")
    return namespace
