"""Signatures checked with an independent implementation of the Standard Webhooks verification, written here
from the specification (not by calling the plugin's signing module), plus the specification's test vector."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

import pytest
from tongcrm_webhooks import signing

TOLERANCE_SECONDS = 5 * 60


class InvalidSignature(Exception):
    pass


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """A receiver's verification, as the specification describes it."""
    msg_id = headers["webhook-id"]
    stamp = headers["webhook-timestamp"]
    if abs((now if now is not None else time.time()) - int(stamp)) > TOLERANCE_SECONDS:
        raise InvalidSignature("timestamp outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return
    raise InvalidSignature("no signature matches")


def test_the_specification_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    assert signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_headers_verify_independently_and_tampering_fails() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == signing.SECRET_BYTES
    body = '{"type":"points.changed","data":{"member_id":7}}'
    now = int(time.time())
    headers = signing.headers([secret], "msg_42", now, body)
    verify(secret, headers, body.encode())
    with pytest.raises(InvalidSignature):
        verify(secret, headers, body.replace("7", "8").encode())
    with pytest.raises(InvalidSignature):
        verify(signing.new_secret(), headers, body.encode())
    with pytest.raises(InvalidSignature):
        verify(secret, {**headers, "webhook-id": "msg_43"}, body.encode())
    with pytest.raises(InvalidSignature):
        verify(secret, headers, body.encode(), now=now + TOLERANCE_SECONDS + 1)


def test_two_secrets_sign_side_by_side() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers([new, old], "msg_1", 1_700_000_000, "{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify(old, headers, b"{}", now=1_700_000_000)
    verify(new, headers, b"{}", now=1_700_000_000)


def test_a_secret_without_the_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        signing.sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 1, "{}")
