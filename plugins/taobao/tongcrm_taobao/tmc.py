"""TMC (Taobao Message Channel) over HTTP polling: consume, confirm, and turn messages into trades to re-read.

TMC delivers at least once and in no particular order, and a message only says *that* a trade changed (its
content is a summary, not the trade). So the useful thing to do with trade and refund messages is to re-read
the named trades with ``taobao.trade.fullinfo.get`` and let the core apply them forward by ``modified``;
:func:`plan_refetch` collapses a batch into the distinct tids to re-read, dropping message ids already seen.
Messages are confirmed only after the caller has acted on them; an unconfirmed message comes back later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableSet, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from tongcrm_taobao.client import TopClient
from tongcrm_taobao.timefmt import parse_top_time

__all__ = [
    "CONFIRM_METHOD",
    "CONSUME_METHOD",
    "REFUND_TOPIC_PREFIX",
    "TRADE_TOPIC_PREFIX",
    "RefetchPlan",
    "TmcClient",
    "TmcMessage",
    "parse_message",
    "plan_refetch",
]

CONSUME_METHOD = "taobao.tmc.messages.consume"
CONFIRM_METHOD = "taobao.tmc.messages.confirm"
TRADE_TOPIC_PREFIX = "taobao_trade_"
REFUND_TOPIC_PREFIX = "taobao_refund_"
MAX_CONFIRM = 200

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TmcMessage:
    """One message envelope; ``content`` is the decoded JSON of the envelope's ``content`` string."""

    id: str
    topic: str
    content: Mapping[str, Any]
    raw_content: str
    pub_time: datetime | None = None
    pub_app_key: str = ""
    user_id: str = ""
    user_nick: str = ""

    @property
    def tid(self) -> str | None:
        """The trade the message is about, as an exact decimal string (``tid`` is beyond 2^53)."""
        value = self.content.get("tid")
        if isinstance(value, bool):
            return None
        if isinstance(value, int) and value > 0:
            return str(value)
        if isinstance(value, str) and value.strip().isdigit():
            return value.strip()
        return None


class MessageError(ValueError):
    """An envelope that cannot be read."""


def _id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    raise MessageError(f"message id is not an exact integer: {value!r}")


def parse_message(envelope: Mapping[str, Any]) -> TmcMessage:
    """Read one ``tmc_message``; raises :class:`MessageError` on an unreadable envelope or content."""
    message_id = _id(envelope.get("id"))
    topic = envelope.get("topic")
    if not isinstance(topic, str) or not topic:
        raise MessageError(f"message {message_id} has no topic")
    raw = envelope.get("content")
    if not isinstance(raw, str):
        raise MessageError(f"message {message_id}: content is not a JSON string")
    try:
        content = json.loads(raw)
    except ValueError:
        raise MessageError(f"message {message_id}: content is not valid JSON") from None
    if not isinstance(content, dict):
        raise MessageError(f"message {message_id}: content is not a JSON object")
    pub_time = None
    if envelope.get("pub_time"):
        try:
            pub_time = parse_top_time(envelope["pub_time"])
        except ValueError:
            raise MessageError(f"message {message_id}: malformed pub_time") from None
    return TmcMessage(
        id=message_id,
        topic=topic,
        content=content,
        raw_content=raw,
        pub_time=pub_time,
        pub_app_key=str(envelope.get("pub_app_key") or ""),
        user_id=str(envelope.get("user_id") or ""),
        user_nick=str(envelope.get("user_nick") or ""),
    )


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    messages: tuple[TmcMessage, ...]
    unreadable: tuple[tuple[str | None, str], ...] = ()  # (message id if known, reason)


class TmcClient:
    """Polling consumer for one TMC group. TMC calls are app-level: they carry no seller session."""

    def __init__(self, client: TopClient, *, group_name: str = "default") -> None:
        if not group_name:
            raise ValueError("TMC group_name must not be empty")
        self.client = client
        self.group_name = group_name

    async def consume(self, quantity: int = 100) -> ConsumeResult:
        if not 10 <= quantity <= 200:
            raise ValueError("TMC consume quantity must be between 10 and 200")
        body = await self.client.call(
            CONSUME_METHOD, {"group_name": self.group_name, "quantity": quantity}, with_session=False
        )
        wrapper = body.get("messages")
        raw = wrapper.get("tmc_message") if isinstance(wrapper, Mapping) else wrapper
        messages: list[TmcMessage] = []
        unreadable: list[tuple[str | None, str]] = []
        for envelope in raw if isinstance(raw, list) else []:
            try:
                if not isinstance(envelope, Mapping):
                    raise MessageError("message is not an object")
                messages.append(parse_message(envelope))
            except MessageError as exc:
                known = envelope.get("id") if isinstance(envelope, Mapping) else None
                unreadable.append((str(known) if known is not None else None, str(exc)))
                log.warning("tmc.unreadable_message", reason=str(exc))
        return ConsumeResult(tuple(messages), tuple(unreadable))

    async def confirm(self, message_ids: Iterable[str]) -> None:
        """Confirm messages in batches of at most 200 (the API's limit) so they are never delivered again."""
        ids = list(dict.fromkeys(message_ids))
        for offset in range(0, len(ids), MAX_CONFIRM):
            chunk = ids[offset : offset + MAX_CONFIRM]
            body = await self.client.call(
                CONFIRM_METHOD,
                {"group_name": self.group_name, "s_message_ids": ",".join(chunk)},
                with_session=False,
            )
            if body.get("is_success") is False:
                raise RuntimeError(f"TMC refused to confirm {len(chunk)} messages")


@dataclass(frozen=True, slots=True)
class RefetchPlan:
    """What a batch of messages asks for: trades to re-read, and the message ids to confirm afterwards."""

    tids: tuple[str, ...]
    confirm: tuple[str, ...]
    ignored: tuple[str, ...] = field(default=())  # ids of messages on other topics, or without a tid


def plan_refetch(messages: Sequence[TmcMessage], seen: MutableSet[str] | None = None) -> RefetchPlan:
    """Distinct tids named by trade/refund messages, skipping message ids in ``seen`` (and adding new ones).

    Every message ends up confirmable: a redelivered one (already in ``seen``) was acted on before, and one on
    a topic we do not handle has nothing to act on. ``seen`` may be any set the caller keeps between polls.
    """
    seen = seen if seen is not None else set()
    tids: dict[str, None] = {}
    confirm: list[str] = []
    ignored: list[str] = []
    for message in messages:
        confirm.append(message.id)
        if message.id in seen:
            continue
        seen.add(message.id)
        tid = message.tid
        if tid is None or not message.topic.startswith((TRADE_TOPIC_PREFIX, REFUND_TOPIC_PREFIX)):
            ignored.append(message.id)
            continue
        tids.setdefault(tid, None)
    return RefetchPlan(tids=tuple(tids), confirm=tuple(dict.fromkeys(confirm)), ignored=tuple(ignored))
