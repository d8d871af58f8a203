"""TOP request signing (protocols.md §1.2).

The platform signs the concatenation ``k1v1k2v2…`` of every request parameter except ``sign`` itself and
empty values, sorted by raw ASCII key, using the raw (not URL-encoded) values. The three methods differ only
in the digest wrapped around that string. Keeping this a pure function lets the client and the fake gateway
share one definition, and the published vector in the tests pins it to the platform's behaviour.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final, Literal

SignMethod = Literal["md5", "hmac", "hmac-sha256"]
SIGN_METHODS: Final[tuple[SignMethod, ...]] = ("md5", "hmac", "hmac-sha256")

__all__ = ["SIGN_METHODS", "SignMethod", "canonical_string", "parse_sign_method", "sign"]


def parse_sign_method(value: str) -> SignMethod:
    """Validate a configured sign method; the platform answers any other with an invalid-signature error."""
    for method in SIGN_METHODS:
        if value == method:
            return method
    raise ValueError(f"unknown TOP sign_method {value!r}; expected one of {', '.join(SIGN_METHODS)}")


def canonical_string(params: Mapping[str, str | None]) -> str:
    """The string TOP hashes: sorted ``key+value`` pairs, without ``sign`` and without empty values.

    Keys are compared by code point, which for the ASCII parameter names TOP uses is raw ASCII order (Python's
    ``sorted`` on ``str``), not locale order.
    """
    return "".join(f"{key}{value}" for key, value in sorted(params.items()) if key != "sign" and value)


def sign(params: Mapping[str, str | None], secret: str, method: SignMethod, *, body: bytes = b"") -> str:
    """Return the upper-case hex signature of ``params`` with the app secret.

    ``body`` is appended to the signed string when a raw request body is sent instead of a form (the official
    SDK does this); form requests leave it empty.
    """
    data = canonical_string(params).encode("utf-8") + body
    key = secret.encode("utf-8")
    if method == "md5":
        digest = hashlib.md5(key + data + key, usedforsecurity=False).hexdigest()
    elif method == "hmac":
        digest = hmac.new(key, data, hashlib.md5).hexdigest()
    elif method == "hmac-sha256":
        digest = hmac.new(key, data, hashlib.sha256).hexdigest()
    else:  # pragma: no cover - Literal exhausts the cases; kept for callers that bypass typing
        raise ValueError(f"unknown TOP sign_method {method!r}")
    return digest.upper()
