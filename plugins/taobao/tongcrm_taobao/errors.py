"""TOP ``error_response`` bodies, how they are classified, and the typed errors the client raises.

The classification follows protocols.md §1.3: ``isp.*`` sub-codes are the platform's own trouble and worth
retrying, code 7 is a call limit that tells us how long to wait, code 27 means the seller must re-authorise,
and everything else is a caller error that retrying will not fix. The raised errors subclass the core's
:mod:`tongcrm.plugin.errors` so the sync engine can act on them without knowing anything about Taobao.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable

__all__ = [
    "CODE_CALL_LIMITED",
    "CODE_INVALID_SESSION",
    "CODE_SERVICE_UNAVAILABLE",
    "ErrorClass",
    "TopAuthError",
    "TopErrorInfo",
    "TopRequestError",
    "TopUnavailable",
    "ban_seconds",
    "classify",
]

CODE_CALL_LIMITED = 7
CODE_SERVICE_UNAVAILABLE = 10
CODE_INVALID_SESSION = 27

_BAN = re.compile(r"ban will last for (\d+) more seconds", re.IGNORECASE)


class ErrorClass(enum.Enum):
    CALL_LIMITED = "call_limited"
    TRANSIENT = "transient"
    AUTH = "auth"
    REQUEST = "request"


@dataclass(frozen=True, slots=True)
class TopErrorInfo:
    """The fields of one ``error_response``; ``code`` is a JSON number on TOP."""

    code: int
    msg: str
    sub_code: str = ""
    sub_msg: str = ""
    request_id: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TopErrorInfo:
        raw_code = body.get("code")
        try:
            code = int(raw_code) if raw_code is not None and not isinstance(raw_code, bool) else -1
        except (TypeError, ValueError):
            code = -1
        return cls(
            code=code,
            msg=str(body.get("msg") or ""),
            sub_code=str(body.get("sub_code") or ""),
            sub_msg=str(body.get("sub_msg") or ""),
            request_id=str(body.get("request_id") or ""),
        )

    def describe(self) -> str:
        """A message for logs and errors: only ever what the platform said, never our parameters."""
        parts = [f"TOP error {self.code}: {self.msg}"]
        if self.sub_code:
            parts.append(f"[{self.sub_code}]")
        if self.sub_msg:
            parts.append(self.sub_msg)
        if self.request_id:
            parts.append(f"(request_id {self.request_id})")
        return " ".join(parts)


def ban_seconds(info: TopErrorInfo) -> int | None:
    """The remaining ban time of a call-limit error ("This ban will last for N more seconds"), if stated."""
    match = _BAN.search(info.sub_msg) or _BAN.search(info.msg)
    return int(match.group(1)) if match else None


def classify(info: TopErrorInfo) -> ErrorClass:
    """Decide what an error means for the caller.

    Code 10 ("Service Currently Unavailable") carries ``isp.*`` sub-codes in practice and is treated as
    transient even when the sub-code is missing.
    """
    if info.code == CODE_CALL_LIMITED:
        return ErrorClass.CALL_LIMITED
    if info.code == CODE_INVALID_SESSION:
        return ErrorClass.AUTH
    if info.sub_code.startswith("isp.") or info.code == CODE_SERVICE_UNAVAILABLE:
        return ErrorClass.TRANSIENT
    return ErrorClass.REQUEST


class TopAuthError(ChannelAuthError):
    """Code 27: the seller's session is invalid or expired; only re-authorisation helps."""

    def __init__(self, info: TopErrorInfo) -> None:
        super().__init__(info.describe(), code=str(info.code))
        self.info = info


class TopRequestError(ChannelRequestError):
    """A caller-side error (``isv.*``, missing/invalid arguments, bad signature…); retrying won't fix it."""

    def __init__(self, info: TopErrorInfo) -> None:
        super().__init__(info.describe(), code=str(info.code))
        self.info = info


class TopUnavailable(ChannelUnavailable):
    """A transient failure that outlived the client's retries. ``info`` is the last platform error, if any."""

    def __init__(
        self, message: str, *, info: TopErrorInfo | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=str(info.code) if info else "", retry_after=retry_after)
        self.info = info
