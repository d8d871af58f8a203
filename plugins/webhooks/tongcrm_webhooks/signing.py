"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

A secret is ``whsec_`` + base64 of 24 to 64 random bytes; the key is those bytes. The signed content is
``"{webhook-id}.{webhook-timestamp}.{body}"``; the signature is base64 of its HMAC-SHA256, sent as
``v1,<signature>``. Several signatures are separated by spaces (``webhook-signature: v1,a v1,b``): during a
secret rotation every message is signed with the old and the new secret, so receivers can switch at leisure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    content = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_in_force: Iterable[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three headers of one attempt (the timestamp is the attempt's, in Unix seconds)."""
    signatures = " ".join(sign(s, msg_id, timestamp, body) for s in secrets_in_force)
    if not signatures:
        raise ValueError("an endpoint without a secret in force cannot be signed for")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }
