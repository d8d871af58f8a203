"""Phone numbers: one canonical form (E.164) so the same person typed three ways is one identity, and one
masked form for output.

``13800138000``, ``+86 138-0013-8000`` and ``008613800138000`` all become ``+8613800138000``.
"""

from __future__ import annotations

import functools
import re
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import PhoneNumberType

from tongcrm.errors import Unprocessable

if TYPE_CHECKING:
    from tongcrm.crypto import Vault

DEFAULT_REGION = "CN"
#: Purpose strings that keep blind indexes and ciphertexts of mobiles apart from other data.
MOBILE_INDEX_PURPOSE = "identity.mobile"
MOBILE_CONTEXT = "member.mobile"

#: the blind indexes of the mobiles a unit of work has looked up, by E.164 (None: outside one, nothing kept)
_LOOKUPS: ContextVar[dict[str, tuple[str, ...]] | None] = ContextVar("tongcrm_mobile_lookups", default=None)


def mobile_lookup(vault: Vault, e164: str) -> tuple[str, ...]:
    """The values a mobile (E.164) may be stored under: its blind index under every configured key, the
    current key's first. Computed once in a unit of work that keeps them (:func:`lookups_kept`).

    Why (issue #22, branch tillcpu17): a till's sale to a new buyer named by mobile computed the same index
    twice (finding the buyer, then preparing the new member's identity); each is an HMAC per key."""
    kept = _LOOKUPS.get()
    if kept is None:
        return tuple(vault.blind_indexes(e164, purpose=MOBILE_INDEX_PURPOSE))
    found = kept.get(e164)
    if found is None:
        found = kept[e164] = tuple(vault.blind_indexes(e164, purpose=MOBILE_INDEX_PURPOSE))
    return found


def keep_lookups() -> Token[dict[str, tuple[str, ...]] | None]:
    """Keep the mobiles' blind indexes :func:`mobile_lookup` computes, until :func:`drop_lookups` with the
    token answered (a unit of work: the same vault and keys throughout, and nothing kept past it). Two calls,
    not a context manager: a till's unit of work pays for every layer around it."""
    return _LOOKUPS.set({})


def drop_lookups(token: Token[dict[str, tuple[str, ...]] | None]) -> None:
    """End what :func:`keep_lookups` began: nothing computed in it is kept."""
    _LOOKUPS.reset(token)


_MOBILE_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.PERSONAL_NUMBER}
)


def _cn_mobile_pattern() -> re.Pattern[str]:
    """phonenumbers' own pattern for Chinese mobile numbers (national form), over ASCII digits only: phonenumbers
    applies it to the digits it has normalised, and a ``\\d`` matching another script's digits would hand back
    a number that is not E.164 (stored under another blind index than the same mobile in ASCII)."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    pattern = metadata.mobile.national_number_pattern if metadata and metadata.mobile else None
    return re.compile(pattern or r"(?!)", re.ASCII)  # without metadata, never take the shortcut


_CN_MOBILE = _cn_mobile_pattern()


class InvalidMobile(Unprocessable):
    """Not a valid mobile number. The message never repeats the number in full."""


def normalise_mobile(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of ``raw``, or :class:`InvalidMobile`. A leading ``00`` is the international prefix.

    The refusal's code says what is wrong (``mobile.not_phone``: no number at all; ``mobile.invalid``: a number
    no numbering plan has, often a digit too many or too few; ``mobile.not_mobile``: a landline) and its params
    what the message shows of the input: ``digits`` and their ``last`` two, or the ``typed`` text when it is
    four characters or fewer (the console words them in Chinese)."""
    e164, problem, code = _verdict(raw, region)
    if problem:
        raise InvalidMobile(problem, code=code, params=_hint_params(raw))
    return e164


# Parsing and validating costs ~0.2 ms; ingest sees the same buyers' numbers again and again, the invalid ones
# (a masked ``138****8000``, a landline) as often as the valid: both verdicts are cached, the invalid one as
# its message (an exception raised from the cache would carry its first traceback along).
@functools.lru_cache(maxsize=65_536)
def _verdict(raw: str, region: str) -> tuple[str, str, str]:
    """(E.164 form, "", "") or ("", why ``raw`` is not a mobile number, the refusal's code)."""
    if region == "CN" and len(raw) == 11 and _CN_MOBILE.fullmatch(raw):
        # the common case (a bare Chinese mobile) checked against phonenumbers' own mobile pattern for CN,
        # which is what the full parse below would accept it by: same answer, a twentieth of the time
        return "+86" + raw, "", ""
    if len(raw) == 14 and raw.startswith("+86") and _CN_MOBILE.fullmatch(raw, 3):
        # a Chinese mobile already in E.164 (what channels that normalise numbers hand over): +86 is CN's
        # calling code whatever the region, so the parse below reads the same national number as above
        return raw, "", ""
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    hint = _hint(raw)
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return "", f"{hint} is not a phone number", "mobile.not_phone"
    if not phonenumbers.is_valid_number(number):
        return "", f"{hint} is not a valid phone number", "mobile.invalid"
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        return "", f"{hint} is not a mobile number", "mobile.not_mobile"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), "", ""


def mask_mobile(e164: str) -> str:
    """``+8613800138000`` → ``138****8000``; other countries keep their calling code: ``+1 650***0000``."""
    if len(e164) == 14 and e164.startswith("+861") and e164[1:].isdigit():
        # a Chinese mobile (the common case: every lookup masks one) without re-parsing the number
        return e164[3:6] + "****" + e164[-4:]
    try:
        number = phonenumbers.parse(e164, None)
        national = str(number.national_number)
        code = number.country_code
    except phonenumbers.NumberParseException:
        return "****"
    stars = "*" * max(len(national) - 7, 1)
    masked = national[:3] + stars + national[-4:] if len(national) > 7 else "*" * len(national)
    return masked if code == 86 else f"+{code} {masked}"


def _hint_params(raw: str) -> dict[str, str | int]:
    """What :func:`_hint` shows of ``raw``, as params: never the number in full."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) <= 4:
        return {"typed": raw if len(raw) <= 4 else "", "digits": len(digits)}
    return {"digits": len(digits), "last": digits[-2:]}


def _hint(raw: str) -> str:
    """A safe description of rejected input for error messages: its length and last two characters."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) <= 4:
        return f"{raw!r}" if len(raw) <= 4 else "the value"
    return f"the number ending in {digits[-2:]} ({len(digits)} digits)"
