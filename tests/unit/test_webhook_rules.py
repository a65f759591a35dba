"""Webhook rules without a database: Standard Webhooks signatures, secrets, the SSRF address
rules, the retry schedule."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from registry.errors import DestinationNotAllowed, InvalidInput
from registry.events.destinations import check_url, resolve, why_not_global
from registry.events.dispatcher import backoff
from registry.events.signing import generate_secret, secret_key, sign


def test_signature_matches_the_standard_webhooks_test_vector():
    # The vector the Standard Webhooks reference libraries (and svix) test against: a
    # receiver's existing library accepts what we send only if this holds exactly.
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp=1614265330, body=b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_generated_secrets_are_whsec_base64_of_32_random_bytes():
    a, b = generate_secret(), generate_secret()
    assert a != b and a.startswith("whsec_")
    assert len(secret_key(a)) == 32 == len(base64.b64decode(a[6:]))


@pytest.mark.parametrize("secret", [
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
    "whsec_",  # no key
    "whsec_not base64!",
    "whsec_" + base64.b64encode(b"k" * 16).decode(),  # too short a key
    "whsec_" + base64.b64encode(b"k" * 65).decode(),  # too long
    "whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("="),  # padding missing
])
def test_malformed_secrets_are_refused(secret):
    with pytest.raises(InvalidInput):
        secret_key(secret)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "0.0.0.0", "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::",
    "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::",
    "192.0.2.1", "198.18.0.1",
])
def test_non_global_addresses_are_named(address):
    assert why_not_global(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_global_addresses_pass(address):
    assert why_not_global(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", [
    "ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)", "example.com/hook",
    "http://", "http:///path", "http://user:pw@example.com/", "http://exa mple.com/",
    "http://example.com:99999/", "http://127.1/", "http://2130706433/", "http://0x7f.1/",
    "http://ex_ample..com/", "http://" + "a" * 64 + ".com/", "http://é.com/",
    "https://example.com/" + "x" * 2048,
])
def test_malformed_urls_are_refused(url):
    with pytest.raises(InvalidInput):
        check_url(url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/", "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/", "https://224.0.0.1/",
])
def test_private_destinations_are_refused_unless_allowed(url):
    with pytest.raises(DestinationNotAllowed):
        resolve(url, allow_private=False)
    dest = resolve(url, allow_private=True)
    assert dest.addresses


def test_a_destination_connects_to_the_address_it_checked():
    dest = resolve("http://localhost:8123/a/b?c=d", allow_private=True)
    assert dest.addresses[0] in ("127.0.0.1", "::1")
    assert dest.host_header == "localhost:8123"
    url = dest.connect_url("127.0.0.1")
    assert url == "http://127.0.0.1:8123/a/b?c=d"
    assert resolve("https://[::1]/", allow_private=True).connect_url("::1") == "https://[::1]:443/"


def test_backoff_doubles_from_the_base_and_is_capped():
    assert [backoff(n, base=10, cap=3600) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff(30, base=10, cap=3600) == 3600
    assert backoff(10_000, base=0.05, cap=1) == 1
    assert backoff(1, base=0.05, cap=1) == pytest.approx(0.05)


def test_the_readme_verification_example_verifies_our_signatures():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Webhooks"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    assert len(code.strip().splitlines()) == 5
    scope: dict[str, object] = {}
    exec(code, scope)
    verify = scope["verify"]
    secret, body = generate_secret(), b'{"id":"evt_1"}'
    headers = {"webhook-id": "evt_1", "webhook-timestamp": "1700000000",
               "webhook-signature": sign(secret, msg_id="evt_1", timestamp=1700000000,
                                         body=body)}
    assert verify(secret, headers, body)  # type: ignore[operator]
    assert not verify(secret, headers, body + b" ")  # type: ignore[operator]
    assert not verify(generate_secret(), headers, body)  # type: ignore[operator]
