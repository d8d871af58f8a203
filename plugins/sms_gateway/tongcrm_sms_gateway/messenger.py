"""The ``aliyun_sms`` messenger: turns a batch of tongcrm messages into as few dysmsapi calls as is safe.

Planning a batch
    Messages that share signature, template and variables go out together through ``SendSms`` (≤ 1000 numbers,
    one shared ``TemplateParam``) — a campaign without personal variables is one call per thousand members.
    Messages whose variables differ are grouped by template into ``SendBatchSms`` (≤ 100, a signature and a
    variable set per number). A request that ends up carrying a single message is sent with ``SendSms``.
    A number appears at most once per request, so that one recipient's copy is named by the request's
    ``BizId`` and the number without ambiguity.

Correlating delivery reports
    Every recipient's ``provider_id`` is :func:`tongcrm_sms_gateway.phones.provider_id` of the request's
    ``BizId`` and the number; a delivery report carries both (``biz_id``, ``phone_number``), so the receipt
    parser derives the same id and the core matches the two without any state in the plugin. ``OutId`` carries
    tongcrm's message id when a request carries one message, and is left out otherwise (the platform would
    echo one ``OutId`` to every recipient; ``SendBatchSms`` has no ``OutId`` at all), so a report's
    ``message_id`` is either right or ``None``, never another message's id.

Send rate
    ``max_send_rate`` caps the messages released in any one second (plus :data:`RATE_WINDOW_MARGIN`), counted
    before every request, per-recipient re-sends included. When the core hands the messenger a
    :class:`~tongcrm.plugin.types.SendRateGate` (the dispatcher always does) the window is the account's
    shared one in the core's database, so it holds across dispatcher runs and processes; without one (tests,
    scripts) an in-memory :class:`~tongcrm_sms_gateway.ratelimit.SlidingWindowLimiter` holds it for this
    messenger's lifetime only.

Timeouts and at-most-once
    A request that times out (or whose connection breaks after it went out) may have been accepted. Aliyun's
    ``SendSms`` takes no idempotency token and protocols.md §3.1 documents no API to look a send up by
    ``OutId``, so a retry could deliver the message twice. Its messages are answered ``IN_DOUBT``
    (``tongcrm.TIMEOUT``, ``tongcrm.CONNECTION_LOST``): the core never re-sends them, and a delivery report
    that arrives for the request settles them (matched by ``OutId`` = our message id when the request carried
    one message). The request's rate grant is released in doubt too, so it keeps counting as in flight: the
    gateway may count it later. A request that never left (no connection) is retried as usual.

Failures
    A per-recipient code on a multi-message request (a bad number, one member's flow control) is resolved by
    re-sending that request's messages one at a time, so only the culprit fails. A number that is not a
    mainland mobile fails before any call. Nothing here raises for a message's problem; every message gets
    exactly one :class:`~tongcrm.plugin.types.SendResult`, in the order of the batch.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from tongcrm.plugin.types import MessengerContext, OutboundMessage, SendOutcome, SendRateGate, SendResult

from tongcrm_sms_gateway.aliyun import (
    DEFAULT_ENDPOINT,
    SEND_BATCH_SMS_LIMIT,
    SEND_SMS_LIMIT,
    AliyunAnswer,
    AliyunSmsClient,
    rule_for,
    template_param_json,
)
from tongcrm_sms_gateway.phones import provider_id, to_domestic
from tongcrm_sms_gateway.ratelimit import SlidingWindowLimiter

__all__ = ["AliyunSmsMessenger", "messenger_from_context"]

log = structlog.get_logger(__name__)

#: Margin on the limiter's window, so that jitter between our clock and the gateway's arrival times cannot
#: squeeze two windows' worth of messages into one second as the gateway sees it.
RATE_WINDOW_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class _Item:
    index: int
    message: OutboundMessage
    phone: str
    params_json: str


@dataclass(slots=True)
class _Held:
    """Whether the request a rate grant is held for may have reached the gateway unanswered."""

    in_doubt: bool = True


@dataclass(frozen=True, slots=True)
class _Request:
    items: tuple[_Item, ...]
    batch_api: bool  # SendBatchSms rather than SendSms


def _chunks(items: Sequence[_Item], size: int) -> list[list[_Item]]:
    """Split into chunks of at most ``size`` in which no number repeats (first fit, order kept)."""
    chunks: list[tuple[list[_Item], set[str]]] = []
    for item in items:
        for chunk, phones in chunks:
            if len(chunk) < size and item.phone not in phones:
                chunk.append(item)
                phones.add(item.phone)
                break
        else:
            chunks.append(([item], {item.phone}))
    return [chunk for chunk, _ in chunks]


def plan(items: Sequence[_Item], max_request: int | None = None) -> list[_Request]:
    """Which requests carry which messages (see the module docstring). ``max_request`` caps every request."""
    sms_limit = min(SEND_SMS_LIMIT, max_request or SEND_SMS_LIMIT)
    batch_limit = min(SEND_BATCH_SMS_LIMIT, max_request or SEND_BATCH_SMS_LIMIT)
    shared: dict[tuple[str, str, str], list[_Item]] = defaultdict(list)
    for item in items:
        shared[(item.message.signature, item.message.template_code, item.params_json)].append(item)
    requests: list[_Request] = []
    personal: dict[str, list[_Item]] = defaultdict(list)
    for group in shared.values():
        if len(group) == 1:
            personal[group[0].message.template_code].append(group[0])
            continue
        requests.extend(_Request(tuple(chunk), batch_api=False) for chunk in _chunks(group, sms_limit))
    for group in personal.values():
        for chunk in _chunks(group, batch_limit):
            requests.append(_Request(tuple(chunk), batch_api=len(chunk) > 1))
    return requests


class AliyunSmsMessenger:
    """A :class:`tongcrm.plugin.types.Messenger` over one Aliyun account."""

    max_batch = SEND_SMS_LIMIT

    def __init__(
        self,
        client: AliyunSmsClient,
        *,
        max_rate: int | None = None,
        concurrency: int = 4,
        rate_gate: SendRateGate | None = None,
    ) -> None:
        self._client = client
        self._max_rate = max_rate
        self._window = 1.0 + RATE_WINDOW_MARGIN
        self._gate = rate_gate if max_rate else None
        self._gate_turn = asyncio.Lock()  # this messenger's requests wait for the shared window in turn
        self._limiter = (
            SlidingWindowLimiter(max_rate, self._window) if max_rate and rate_gate is None else None
        )
        self._max_request = max_rate
        self._slots = asyncio.Semaphore(max(concurrency, 1))

    @asynccontextmanager
    async def _permits(self, count: int) -> AsyncIterator[_Held]:
        """Permits for one request, held until it has finished (see SendRateGate). The caller clears
        ``in_doubt`` on the yielded holder once the request got an answer; anything else (a timeout, a
        cancellation) releases the grant in doubt, because the gateway may still count the request."""
        held = _Held()
        if self._gate is not None and self._max_rate:
            async with self._gate_turn:
                grant = await self._gate.acquire(count, rate=self._max_rate, window=self._window)
            try:
                yield held
            finally:
                await grant.release(in_doubt=held.in_doubt)
            return
        if self._limiter is not None:
            await self._limiter.acquire(count)
        yield held

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, batch: Sequence[OutboundMessage]) -> Sequence[SendResult]:
        results: list[SendResult | None] = [None] * len(batch)
        items: list[_Item] = []
        for index, message in enumerate(batch):
            phone = to_domestic(message.mobile_e164)
            if phone is None:
                results[index] = SendResult(
                    message.message_id,
                    SendOutcome.FAILED_NUMBER,
                    code="tongcrm.NOT_CN_MOBILE",
                    detail="not a mainland China mobile number in E.164 (+861…)",
                )
                continue
            items.append(_Item(index, message, phone, template_param_json(message.params)))
        requests = plan(items, self._max_request)
        for done in await asyncio.gather(*(self._execute(request) for request in requests)):
            for index, result in done:
                results[index] = result
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # a planning bug, not a message's problem
            raise AssertionError(f"messages {missing} got no result")
        return [r for r in results if r is not None]

    async def _execute(self, request: _Request) -> list[tuple[int, SendResult]]:
        answer = await self._call(request)
        rule = rule_for(answer.code)
        if rule.per_recipient and len(request.items) > 1:
            log.info("aliyun_sms.isolate", code=answer.code, recipients=len(request.items))
            singles = await asyncio.gather(
                *(self._execute(_Request((item,), batch_api=False)) for item in request.items)
            )
            return [pair for single in singles for pair in single]
        return [(item.index, _result(item, answer)) for item in request.items]

    async def _call(self, request: _Request) -> AliyunAnswer:
        items = request.items
        async with self._slots, self._permits(len(items)) as held:
            if request.batch_api:
                answer = await self._client.send_batch_sms(
                    [i.phone for i in items],
                    sign_names=[i.message.signature for i in items],
                    template_code=items[0].message.template_code,
                    template_params=[i.params_json for i in items],
                )
            else:
                first = items[0]
                answer = await self._client.send_sms(
                    [i.phone for i in items],
                    sign_name=first.message.signature,
                    template_code=first.message.template_code,
                    template_param=first.params_json,
                    out_id=first.message.message_id if len(items) == 1 else None,
                )
            held.in_doubt = answer.in_doubt
            return answer


def _result(item: _Item, answer: AliyunAnswer) -> SendResult:
    rule = rule_for(answer.code)
    return SendResult(
        message_id=item.message.message_id,
        outcome=rule.outcome,
        provider_id=provider_id(answer.biz_id, item.phone) if answer.ok and answer.biz_id else None,
        code=answer.code,
        detail=answer.message,
    )


def _positive_int(settings: dict[str, str], name: str) -> int | None:
    raw = (settings.get(name) or "").strip()
    if not raw:
        return None
    value = int(raw)
    if value < 1:
        raise ValueError(f"setting {name} must be a positive integer, got {raw!r}")
    return value


def messenger_from_context(context: MessengerContext) -> AliyunSmsMessenger:
    """The factory of the ``aliyun_sms`` MessengerSpec: settings (secrets already decrypted) → messenger."""
    settings = dict(context.settings)
    client = AliyunSmsClient(
        access_key_id=settings.get("access_key_id", ""),
        access_key_secret=settings.get("access_key_secret", ""),
        endpoint=settings.get("endpoint") or DEFAULT_ENDPOINT,
        region=settings.get("region") or "cn-hangzhou",
        timeout=float(settings.get("timeout_seconds") or 10.0),
        clock=context.clock,
    )
    return AliyunSmsMessenger(
        client,
        max_rate=_positive_int(settings, "max_send_rate"),
        concurrency=_positive_int(settings, "concurrency") or 4,
        rate_gate=getattr(context, "rate_gate", None),
    )
