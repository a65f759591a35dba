"""Where a webhook may send (SSRF rules): http(s) URLs whose host resolves only to global
addresses, unless private destinations are allowed (REGISTRY_WEBHOOK_ALLOW_PRIVATE).

Checked when a webhook is added and again right before each send, on the addresses the name
resolves to then; the sender connects to the address that was checked (no second lookup a
DNS rebinding could answer differently) and follows no redirects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from registry.errors import DestinationNotAllowed, InvalidInput

MAX_URL = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class Destination:
    """A checked URL: its parts, and the addresses its host resolved to (first: connect)."""

    scheme: str
    host: str  # lowercase; an IPv6 literal without brackets
    port: int
    target: str  # path and query, at least "/"
    addresses: tuple[str, ...]

    def connect_url(self, address: str) -> str:
        """The URL with ``address`` in place of the host (the Host header and TLS name stay
        the original host's)."""
        netloc = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{netloc}:{self.port}{self.target}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse(url: str) -> tuple[SplitResult, str, int]:
    if len(url) > MAX_URL:
        raise InvalidInput(f"the webhook URL is longer than {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("the webhook URL must be ASCII without spaces (punycode a name)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"invalid webhook URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"a webhook URL must be http:// or https://, not {url[:40]!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("a webhook URL must not carry credentials; receivers verify the "
                           "signature instead")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidInput("the webhook URL has no host")
    default = 443 if parts.scheme.lower() == "https" else 80
    return parts, host, port if port is not None else default


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_name(host: str) -> None:
    """A DNS name: dot-separated labels whose last one is not numeric, so a shorthand or
    numeric IPv4 form (``127.1``, ``2130706433``, ``0x7f.1``), which resolvers read as an
    address, is never taken for a name."""
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(f"invalid host name in the webhook URL: {host[:80]!r}")
    last = labels[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        raise InvalidInput(f"invalid host in the webhook URL: {host!r} (write an IP address "
                           "in dotted form)")


def why_not_global(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or None when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            reason = why_not_global(mapped)
            return f"maps to {mapped}, {reason}" if reason else None
    for attribute, reason in (("is_loopback", "a loopback address"),
                              ("is_link_local", "a link-local address"),
                              ("is_private", "a private address"),
                              ("is_multicast", "a multicast address"),
                              ("is_unspecified", "the unspecified address"),
                              ("is_reserved", "a reserved address")):
        if getattr(address, attribute):
            return reason
    if not address.is_global:
        return "not a global address"
    return None


def check_url(url: str) -> tuple[str, int]:
    """Check a webhook URL's form (no network).

    Returns:
        The host (lowercase) and port.

    Raises:
        InvalidInput: not http(s), no host, credentials, a malformed host or port.
    """
    _, host, port = _parse(url)
    if _literal(host) is None:
        _check_name(host)
    return host, port


def resolve(url: str, *, allow_private: bool) -> Destination:
    """Check ``url`` and resolve its host now; every address must be allowed.

    Raises:
        InvalidInput: a malformed URL, or a host that does not resolve.
        DestinationNotAllowed: the host is or resolves to a non-global address (unless
            ``allow_private``).
    """
    parts, host, port = _parse(url)
    literal = _literal(host)
    if literal is not None:
        found: list[IPAddress] = [literal]
    else:
        _check_name(host)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise InvalidInput(f"cannot resolve the webhook host {host!r}: {exc}") from None
        found = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            parsed = _literal(text)
            if parsed is not None and parsed not in found:
                found.append(parsed)
        if not found:
            raise InvalidInput(f"cannot resolve the webhook host {host!r}")
    if not allow_private:
        for address in found:
            reason = why_not_global(address)
            if reason is not None:
                shown = host if literal is not None else f"{host} resolves to {address}, which"
                raise DestinationNotAllowed(
                    f"webhook destination refused: {shown} is {reason} (set "
                    "REGISTRY_WEBHOOK_ALLOW_PRIVATE=1 on the registry to allow private "
                    "destinations)")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Destination(scheme=parts.scheme.lower(), host=host, port=port, target=target,
                       addresses=tuple(str(a) for a in found))
