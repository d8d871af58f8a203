"""Parsing what Aliyun pushes back: delivery reports (``SmsReport``) and member replies (``SmsUp``).

Both arrive as a JSON array POSTed to a callback URL, and both are re-sent (1, 5, 10, 30 min, then hourly,
10 attempts) until the callback answers :data:`ACK_BODY`. So:

- parsing is pure (bytes in, records and errors out), which keeps the future HTTP routes thin: parse, hand
  the records to the core in one transaction, then answer the ack;
- every record carries a ``dedupe_key`` that is the same on every retry of the same entry, so a retried push
  changes nothing;
- an entry that cannot be understood is returned as an :class:`EntryError` next to the good ones. It is never
  dropped silently; the route should still ack (a retry would bring the same bytes) and let the core keep the
  error for an operator.

Platform times are Beijing time without an offset (``2017-07-12 10:42:19``); they come out as aware UTC.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from tongcrm.plugin.types import DeliveryReceipt, InboundReply

from tongcrm_sms_gateway.phones import from_platform, provider_id

__all__ = [
    "ACK_BODY",
    "BEIJING",
    "DEFAULT_OPT_OUT_KEYWORDS",
    "EntryError",
    "OptOut",
    "OptOutMatcher",
    "ParseOutcome",
    "ParsedReceipt",
    "ack_bytes",
    "parse_platform_time",
    "parse_sms_reports",
    "parse_sms_up",
]

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
#: The body Aliyun waits for before it stops re-sending a push.
ACK_BODY: Mapping[str, Any] = {"code": 0, "msg": "接收成功"}
#: Replies Aliyun itself treats as an unsubscribe (R on promotional templates, T/TD by convention), plus 退订.
DEFAULT_OPT_OUT_KEYWORDS: tuple[str, ...] = ("T", "TD", "R", "退订")

T = TypeVar("T")


def ack_bytes() -> bytes:
    return json.dumps(ACK_BODY, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class EntryError:
    """An entry that could not be parsed: its position, why, and the entry (for quarantine, not for logs)."""

    index: int | None
    reason: str
    payload: str


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """A delivery receipt and the key that identifies it across the platform's retries.

    ``DeliveryReceipt`` has no ``dedupe_key`` field yet; until it does, the key travels beside it.
    """

    receipt: DeliveryReceipt
    dedupe_key: str


@dataclass(frozen=True, slots=True)
class ParseOutcome(Generic[T]):
    records: tuple[T, ...]
    errors: tuple[EntryError, ...]


def parse_platform_time(value: object) -> datetime:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time → aware UTC. Raises ``ValueError`` on anything else."""
    if not isinstance(value, str):
        raise ValueError("time is not a string")
    local = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")
    return local.replace(tzinfo=BEIJING).astimezone(UTC)


def _key(kind: str, *parts: str) -> str:
    """A dedupe key; hashed because its parts include the number, and keys end up in tables and logs."""
    return f"aliyun.{kind}:" + hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:32]


#: The longest identifier (``biz_id``, ``out_id``, ``sequence_id``, ``sign_name``, codes...) a push may carry.
#: Aliyun's are a few dozen characters at most; longer ones cannot be the platform's and would not fit the
#: columns that keep them (a ``biz_id`` becomes part of a 200-character provider id).
MAX_ID = 64
#: The longest reply kept whole; longer text is cut (an SMS reply is at most a few long messages).
MAX_CONTENT = 1000
#: How much of an unparseable body is kept for operators.
MAX_RAW = 64 * 1024


def _text(entry: Mapping[str, Any], name: str, *, required: bool = True, limit: int = MAX_ID) -> str:
    """A text field of an entry, stripped; ``ValueError`` (the entry's error) when it is missing, not text,
    longer than ``limit`` or holds a NUL, which no database text column takes."""
    value = entry.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing {name}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} is not text")
    text = str(value).strip()
    try:  # JSON allows "\ud800", which no database (and no hash of the key) can encode
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate)") from None
    if required and not text:
        raise ValueError(f"empty {name}")
    if len(text) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    if "\x00" in text:
        raise ValueError(f"{name} contains a NUL character")
    return text


def _content(entry: Mapping[str, Any]) -> str:
    """A member's reply text: kept even when odd (a NUL becomes U+FFFD, a very long text is cut), since a
    refusal inside it must still be honoured."""
    value = entry.get("content")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("content is not text")
    text = str(value).replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    return text.strip()[:MAX_CONTENT]


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ValueError("success is not a boolean")


def _entries(body: bytes | str | object) -> tuple[list[Any], EntryError | None]:
    if isinstance(body, bytes | str):
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        kept = raw[:MAX_RAW].replace("\x00", "\ufffd")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return [], EntryError(None, f"body is not JSON: {exc.msg}", kept)
        except RecursionError:
            return [], EntryError(None, "body is not JSON Aliyun sends: nested too deeply", kept)
    if not isinstance(body, list):
        return [], EntryError(
            None, "body is not a JSON array", json.dumps(body, ensure_ascii=False, default=str)[:MAX_RAW]
        )
    return body, None


def _parse_all(body: bytes | str | object, one: Callable[[Mapping[str, Any]], T]) -> ParseOutcome[T]:
    entries, error = _entries(body)
    if error is not None:
        return ParseOutcome((), (error,))
    records: list[T] = []
    errors: list[EntryError] = []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ValueError("entry is not a JSON object")
            records.append(one(entry))
        except ValueError as exc:
            errors.append(EntryError(index, str(exc), json.dumps(entry, ensure_ascii=False, default=str)))
    return ParseOutcome(tuple(records), tuple(errors))


def _report(entry: Mapping[str, Any]) -> ParsedReceipt:
    mobile = from_platform(_text(entry, "phone_number"))
    if mobile is None:
        raise ValueError("phone_number is not a mainland mobile number")
    phone = mobile[3:]
    biz_id = _text(entry, "biz_id")
    report_time = _text(entry, "report_time")
    at = parse_platform_time(report_time)
    delivered = _bool(entry.get("success"))
    code = _text(entry, "err_code", required=False) or ("DELIVERED" if delivered else "")
    out_id = _text(entry, "out_id", required=False) or None
    receipt = DeliveryReceipt(
        message_id=out_id, provider_id=provider_id(biz_id, phone), delivered=delivered, code=code, at=at
    )
    return ParsedReceipt(receipt, _key("report", biz_id, phone, report_time, code, str(delivered)))


def _reply(entry: Mapping[str, Any]) -> InboundReply:
    mobile = from_platform(_text(entry, "phone_number"))
    if mobile is None:
        raise ValueError("phone_number is not a mainland mobile number")
    send_time = _text(entry, "send_time")
    at = parse_platform_time(send_time)
    signature = _text(entry, "sign_name")
    content = _content(entry)
    sequence_id = _text(entry, "sequence_id", required=False)
    if sequence_id:
        key = f"aliyun.up:{sequence_id}"
    else:  # the sequence id is the platform's own key; without it, the entry's whole content is
        key = _key("up", mobile, send_time, signature, _text(entry, "dest_code", required=False), content)
    return InboundReply(mobile_e164=mobile, signature=signature, content=content, at=at, dedupe_key=key)


def parse_sms_reports(body: bytes | str | object) -> ParseOutcome[ParsedReceipt]:
    """An ``SmsReport`` push → receipts keyed by (biz_id, number, report time, status), and errors."""
    return _parse_all(body, _report)


def parse_sms_up(body: bytes | str | object) -> ParseOutcome[InboundReply]:
    """An ``SmsUp`` push → replies keyed by ``sequence_id``, and errors."""
    return _parse_all(body, _reply)


# ----------------------------------------------------------------------------------------------------------
# opt-out replies


@dataclass(frozen=True, slots=True)
class OptOut:
    """A member asked this signature to stop; Aliyun blocks per signature, so tongcrm records it so too."""

    mobile_e164: str
    signature: str
    keyword: str
    at: datetime
    dedupe_key: str


def _normalise(text: str) -> str:
    """Full-width → half-width (NFKC), no whitespace anywhere, no punctuation at either end, case-folded.

    Phones send ``ＴＤ``, `` td ``, ``T D``, ``退订。`` and ``R!`` for the same wish.
    """
    folded = "".join(unicodedata.normalize("NFKC", text).split())
    start, end = 0, len(folded)
    while start < end and unicodedata.category(folded[start]).startswith(("P", "S")):
        start += 1
    while end > start and unicodedata.category(folded[end - 1]).startswith(("P", "S")):
        end -= 1
    return folded[start:end].casefold()


class OptOutMatcher:
    """Decides whether a reply is an unsubscribe.

    ``keywords`` must be the whole reply (after normalisation): ``T`` alone is an opt-out, "Thanks" is not.
    ``phrases`` may appear anywhere in it (default ``退订``, so "请帮我退订" counts): the law asks senders to
    stop once a member refuses, so a clear Chinese refusal inside a sentence is honoured too.
    """

    def __init__(
        self, keywords: Iterable[str] = DEFAULT_OPT_OUT_KEYWORDS, phrases: Iterable[str] = ("退订",)
    ):
        self._keywords = {_normalise(k): k for k in keywords if _normalise(k)}
        self._phrases = {_normalise(p): p for p in phrases if _normalise(p)}

    def keyword(self, content: str) -> str | None:
        """The configured keyword or phrase ``content`` matches, or ``None``."""
        text = _normalise(content)
        if text in self._keywords:
            return self._keywords[text]
        for phrase, original in self._phrases.items():
            if phrase in text:
                return original
        return None

    def is_opt_out(self, content: str) -> bool:
        return self.keyword(content) is not None

    def match(self, reply: InboundReply) -> OptOut | None:
        """The opt-out ``reply`` expresses, for its number and signature; ``None`` for an ordinary reply."""
        keyword = self.keyword(reply.content)
        if keyword is None:
            return None
        return OptOut(reply.mobile_e164, reply.signature, keyword, reply.at, reply.dedupe_key)
