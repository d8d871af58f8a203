"""Aliyun RPC ("POP") signature version 1.0, as dysmsapi checks it.

The signature covers every request parameter except ``Signature`` itself, so the client and the fake gateway
must agree byte for byte on the canonical form. Both therefore use this one module: the client to sign, the
fake server to recompute and compare. The rules (protocols.md §3.1):

- percent-encode UTF-8 with only ``A-Z a-z 0-9 - _ . ~`` left bare; a space is ``%20`` (never ``+``), ``*`` is
  ``%2A`` and ``~`` stays ``~``;
- the canonical query is ``enc(k)=enc(v)`` joined with ``&``, sorted by key;
- the string to sign is ``METHOD & enc("/") & enc(canonical query)`` — the query is encoded a second time;
- the signature is base64(HMAC-SHA1(key = secret + "&", string to sign)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

__all__ = ["canonical_query", "percent_encode", "sign", "signed_body", "string_to_sign", "verify"]


def percent_encode(value: str) -> str:
    """Aliyun's flavour of RFC 3986 encoding.

    ``quote`` with ``safe="~"`` leaves exactly the unreserved set bare and encodes a space as ``%20`` and
    ``*`` as ``%2A``, which is what the platform expects; Python's ``quote_plus`` (``+`` for a space) and
    Java's ``URLEncoder`` (which the vendor's SDKs patch afterwards) would both sign a different string.
    """
    return quote(value, safe="~", encoding="utf-8")


def canonical_query(params: Mapping[str, str]) -> str:
    """The sorted, encoded ``k=v&...`` form of every parameter but ``Signature``.

    Keys are sorted as plain strings, which for the ASCII parameter names Aliyun uses is the byte order the
    server sorts by.
    """
    return "&".join(
        f"{percent_encode(key)}={percent_encode(params[key])}" for key in sorted(params) if key != "Signature"
    )


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(params: Mapping[str, str], secret: str, method: str = "GET") -> str:
    """Return the base64 ``Signature`` value (not yet percent-encoded) for ``params``."""
    digest = hmac.new(
        (secret + "&").encode("utf-8"), string_to_sign(method, params).encode("utf-8"), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(params: Mapping[str, str], secret: str, method: str) -> bool:
    """Whether ``params["Signature"]`` is the signature of the other parameters; compared in constant time."""
    given = params.get("Signature", "")
    return hmac.compare_digest(given.encode("utf-8"), sign(params, secret, method).encode("utf-8"))


def signed_body(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    """The form-encoded request (body for POST, query for GET) with ``Signature`` appended.

    Encoding the transport with the same rules as the signature means the server decodes exactly the values
    that were signed; a generic form encoder would turn spaces into ``+``, which decodes the same but is one
    more thing to reason about.
    """
    return f"{canonical_query(params)}&Signature={percent_encode(sign(params, secret, method))}"
