"""Mobile numbers as tongcrm holds them (E.164) and as Chinese gateways want them (11 domestic digits).

tongcrm stores numbers as ``+86…``; dysmsapi takes and reports bare 11-digit mainland numbers. Anything
that is not a mainland mobile cannot be sent through a domestic signature, so it is refused before any
request is made.
Numbers are personal data: :func:`mask` is the only form that may reach a log line.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAINLAND_MOBILE", "from_platform", "mask", "provider_id", "to_domestic"]

#: A mainland mobile number: 11 digits starting 13-19.
MAINLAND_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_E164_CN = re.compile(r"^\+861[3-9]\d{9}$")


def to_domestic(mobile_e164: str) -> str | None:
    """``+8613800138000`` → ``13800138000``; ``None`` for a number that is not a mainland mobile in E.164."""
    value = mobile_e164.strip()
    if not _E164_CN.match(value):
        return None
    return value[3:]


def from_platform(value: str) -> str | None:
    """A number as the platform reports it (``13800138000``, sometimes ``8613…`` or ``+8613…``) → E.164."""
    digits = re.sub(r"[\s-]", "", value)
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11:
            digits = digits[len(prefix) :]
            break
    if not MAINLAND_MOBILE.match(digits):
        return None
    return "+86" + digits


def mask(number: str) -> str:
    """Keep the first three and last two digits: enough to tell numbers apart in a log, not to dial one."""
    digits = re.sub(r"\D", "", number)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) < 6:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 5)}{digits[-2:]}"


def provider_id(biz_id: str, domestic: str) -> str:
    """The id of one recipient's copy of one dysmsapi request.

    A request to many numbers gets one ``BizId``; delivery reports carry ``biz_id`` and ``phone_number``. The
    pair names one recipient, so both the sender and the receipt parser derive the same id from it. The number
    enters only as a digest so that the id can sit in tables and API responses without being personal data
    in the clear (the digest is not a secret; mainland numbers are too few for that).
    """
    digest = hashlib.sha256(f"{biz_id}|{domestic}".encode()).hexdigest()[:16]
    return f"{biz_id}:{digest}"
