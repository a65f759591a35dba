"""Webhook signatures in the Standard Webhooks scheme (https://www.standardwebhooks.com/).

The secret is ``whsec_`` + base64 of the key bytes; a message is signed as
``base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`` and sent as
``webhook-signature: v1,<signature>`` with the ``webhook-id`` and ``webhook-timestamp`` headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from registry.errors import InvalidInput

PREFIX = "whsec_"
KEY_BYTES = 32
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64


def generate_secret() -> str:
    """A new secret: 32 random bytes, ``whsec_<base64>``."""
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_…`` secret.

    Raises:
        InvalidInput: not ``whsec_`` + standard base64 of 24 to 64 bytes.
    """
    if not secret.startswith(PREFIX):
        raise InvalidInput("a webhook secret has the form whsec_<base64 of 24-64 random bytes>")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the webhook secret after whsec_ is not valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidInput(f"the webhook secret's key is {len(key)} bytes; it must be "
                           f"{MIN_KEY_BYTES} to {MAX_KEY_BYTES}")
    return key


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }
