"""JOS failures as the typed errors the core understands (:mod:`tongcrm.plugin.errors`).

Each JD-specific class subclasses the core class that tells the core what to do next (stop the account, try
again later, give up on this request), and adds what an operator needs to read the failure: JD's own code and
both the Chinese and the English text, because JD's English descriptions are often blank or vaguer than the
Chinese ones.
"""

from __future__ import annotations

from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable

#: ``error_response`` codes (strings on the wire) the client treats specially; see protocols.md §2.2.
CODE_CALL_LIMITED = "2"
CODE_INVALID_ACCESS_TOKEN = "19"  # noqa: S105 - an error code, not a password


def _describe(code: str, zh_desc: str, en_desc: str) -> str:
    text = " / ".join(part for part in (en_desc, zh_desc) if part) or "no description"
    return f"JOS error {code}: {text}" if code else f"JOS error: {text}"


class JosAuthError(ChannelAuthError):
    """``access_token`` invalid or expired (code 19): the seller must re-authorise; retrying cannot help."""

    def __init__(self, code: str, zh_desc: str = "", en_desc: str = "") -> None:
        super().__init__(_describe(code, zh_desc, en_desc), code=code)
        self.zh_desc = zh_desc
        self.en_desc = en_desc


class JosRequestError(ChannelRequestError):
    """A gateway ``error_response`` other than the call limit and token codes: a caller or config error."""

    def __init__(self, code: str, zh_desc: str = "", en_desc: str = "") -> None:
        super().__init__(_describe(code, zh_desc, en_desc), code=code)
        self.zh_desc = zh_desc
        self.en_desc = en_desc


class JosBusinessError(ChannelRequestError):
    """The call went through but the API refused it (``apiResult.success == false``).

    ``code`` is ``apiResult.numberCode`` when present; ``chinese_message`` and ``english_message`` come from
    ``chineseErrCode`` and ``englishErrCode``, which despite their names hold the human-readable texts.
    """

    def __init__(self, code: str, chinese_message: str, english_message: str) -> None:
        super().__init__(_describe(code, chinese_message, english_message), code=code)
        self.chinese_message = chinese_message
        self.english_message = english_message


class JosUnavailable(ChannelUnavailable):
    """Call limits, timeouts, connection failures and gateway hiccups that outlived the client's retries."""


class JosProtocolError(Exception):
    """A body that is not a JOS envelope at all. Internal: the client retries it and then reports it as
    :class:`JosUnavailable`, since a truncated or HTML body from a proxy is almost always transient."""


__all__ = [
    "CODE_CALL_LIMITED",
    "CODE_INVALID_ACCESS_TOKEN",
    "JosAuthError",
    "JosBusinessError",
    "JosProtocolError",
    "JosRequestError",
    "JosUnavailable",
]
