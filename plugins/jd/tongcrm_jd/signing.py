"""JOS request signing (protocols.md §2.1).

The signature covers every parameter that is sent except ``sign`` itself, sorted by raw ASCII key, each as
``key + value`` with no separators, wrapped in the app secret on both sides, md5, upper-case hex. The
``360buy_param_json`` value is signed *as the exact string sent*, which is why :func:`encode_business_params`
produces that string once and the caller reuses it for both the request and the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

PARAM_JSON = "360buy_param_json"


def signature_base(params: Mapping[str, str]) -> str:
    """Concatenate ``key + value`` over the params sorted by raw key, skipping ``sign``."""
    return "".join(key + params[key] for key in sorted(params) if key != "sign")


def sign(params: Mapping[str, str], secret: str) -> str:
    """``HEX_UPPER(md5(secret + base + secret))``; md5 is the platform's choice, not a security choice."""
    payload = secret + signature_base(params) + secret
    return hashlib.md5(payload.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


def verify(params: Mapping[str, str], secret: str) -> bool:
    """Check ``params['sign']`` in constant time (the fake gateway uses this; so could push receivers)."""
    given = params.get("sign", "")
    return hmac.compare_digest(given.upper(), sign(params, secret))


def encode_business_params(params: Mapping[str, Any]) -> str:
    """The business parameters as the one compact JSON string that is both sent and signed.

    Keys are sorted so that the same request always produces the same string (and signature); non-ASCII
    text is kept as UTF-8 rather than ``\\u`` escapes, matching the official SDKs.
    """
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
