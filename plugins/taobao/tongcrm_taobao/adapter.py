"""The Taobao channel adapter: pages of normalised orders from ``taobao.trades.sold.increment.get``.

How a sync walks the platform without missing anything
======================================================

The increment API lists trades by *modified* time, newest first, in windows of at most a day (30 minutes is
advised). Paging forward through a window is unsafe: when a trade on page 1 is modified again while we read
page 2, it leaves the window, every later trade moves up one place, and the trade that slid from page 2 to
page 1 is never seen. The platform's advice is to page *backwards* from the last page, but with
``use_has_next=true`` the last page is unknown. So the adapter avoids paging in the common case altogether:

1. **Single-call windows.** A window ``[start, end)`` is asked for with ``page_no=1``. If the answer says
   ``has_next=false`` the whole window came back in one response, a consistent snapshot, and is done. If it
   says ``has_next=true`` the window is shortened and asked again; the window length (``span``) is remembered
   in the cursor and sized to the density of the answers just read (three quarters of a page a window, at
   most 30 minutes; an overfull answer's oldest trade sizes the retry).
2. **Backward walk, only when a single second overflows a page** (a batch shipment of hundreds of trades):
   one call without ``use_has_next`` gives ``total_results``, and the pages are then read from the last to the
   first. Trades leaving the window during the walk then only cause duplicates, never gaps.
3. **Windows stay in the past.** No window ends after ``clock() - safety_lag``, so trades modified while we
   read cannot enter a window we are reading; trades that leave one re-appear, with their new modified time,
   in a later window. When the windows reach the lag the page says ``has_more=False``.
4. **Overlap on resume.** A caught-up cursor re-reads ``overlap`` seconds before its start on the next fetch,
   for trades the platform indexed late. Those repeats reach the core as duplicates it already ignores
   (orders apply forward by ``modified_at`` only).

The platform treats both window ends as inclusive (as far as anyone can tell); the adapter keeps a trade only
if ``start <= modified < end``, so a trade on a boundary belongs to exactly one window either way.

Trades whose increment record lacks a field normalisation needs are re-read with
``taobao.trade.fullinfo.get``.
The cursor is a small JSON record (:mod:`cursor`); it only moves forward, and fetching the same cursor twice
against the same platform state and clock returns the same page.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from tongcrm.plugin.types import ChannelContext, NormalisedOrder, OrderPage, PushBatch, QuarantinedRecord

from tongcrm_taobao.client import DEFAULT_GATEWAY, TopClient
from tongcrm_taobao.cursor import Cursor, Walk
from tongcrm_taobao.errors import TopErrorInfo, TopRequestError
from tongcrm_taobao.normalise import missing_fields, normalise_trades, raw_json, trade_id
from tongcrm_taobao.signing import parse_sign_method
from tongcrm_taobao.timefmt import parse_top_time
from tongcrm_taobao.tmc import TmcClient, plan_refetch

__all__ = ["INCREMENT_METHOD", "TRADE_FIELDS", "TRADE_TYPES", "SyncTuning", "TaobaoAdapter"]

INCREMENT_METHOD = "taobao.trades.sold.increment.get"
FULLINFO_METHOD = "taobao.trade.fullinfo.get"
#: fullinfo requests of one page in flight at once (as many as the push path's re-reads)
FULLINFO_CONCURRENCY = 5

#: What we ask for. No receiver name/phone/address: tongcrm does not need them, and asking for less is safer.
TRADE_FIELDS = ",".join(
    (
        "tid", "tid_str", "type", "status", "created", "modified", "pay_time", "consign_time", "end_time",
        "payment", "total_fee", "post_fee", "discount_fee", "received_payment", "buyer_open_uid", "ouid",
        "omid",
        "receiver_state", "receiver_city", "step_trade_status", "step_paid_fee", "orders",
    )
)  # fmt: skip

#: Without ``type`` the list APIs only return guarantee_trade/auto_delivery/ec/cod/step trades and silently
#: drop ordinary ``fixed`` (一口价) trades, so every type a shop can sell is listed explicitly.
TRADE_TYPES = ",".join(
    (
        "fixed", "auction", "guarantee_trade", "step", "independent_simple_trade", "independent_shop_trade",
        "auto_delivery", "ec", "cod", "game_equipment", "shopex_trade", "netcn_trade", "external_trade",
        "instant_trade", "b2c_cod", "hotel_trade", "super_market_trade", "super_market_cod_trade", "taohua",
        "waimai", "o2o_offlinetrade", "nopaid", "eticket", "tmall_i18n", "insurance_plus", "finance",
        "pre_auth_type",
    )
)  # fmt: skip

MAX_WINDOW = 30 * 60
MIN_WINDOW = 1

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SyncTuning:
    """Knobs of the window walk; the defaults suit production, tests shrink ``max_calls_per_page``."""

    safety_lag: int = 180
    overlap: int = 300
    max_calls_per_page: int = 48


@dataclass(slots=True)
class _Window:
    trades: list[Mapping[str, Any]]
    has_next: bool


def _setting_int(settings: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = settings.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"taobao setting {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"taobao setting {name} must be between {low} and {high}, got {value}")
    return value


def _required(settings: Mapping[str, str], name: str) -> str:
    value = settings.get(name)
    if not value:
        raise ValueError(f"taobao setting {name} is required")
    return value


class TaobaoAdapter:
    """A :class:`~tongcrm.plugin.types.ChannelAdapter` for one Taobao/Tmall shop."""

    def __init__(
        self, ctx: ChannelContext, client: TopClient | None = None, *, tuning: SyncTuning | None = None
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.page_size = _setting_int(settings, "page_size", 100, 1, 100)
        self.initial_sync_days = _setting_int(settings, "initial_sync_days", 90, 1, 90)
        self.tuning = tuning or SyncTuning()
        self.client = client or TopClient(
            app_key=_required(settings, "app_key"),
            app_secret=_required(settings, "app_secret"),
            session=_required(settings, "session"),
            gateway_url=settings.get("gateway_url") or DEFAULT_GATEWAY,
            sign_method=parse_sign_method(settings.get("sign_method") or "hmac-sha256"),
            call_gate=ctx.call_gate,
            calls_per_second=_setting_int(settings, "calls_per_second", 0, 0, 100_000),
        )
        self._log = log.bind(account=ctx.account_name)
        self.tmc = TmcClient(self.client, group_name=settings.get("tmc_group") or "default")

    async def aclose(self) -> None:
        await self.client.aclose()

    # -------------------------------------------------------------------------------------------------- push

    async def fetch_push(self) -> PushBatch:
        """Consume one TMC batch and re-read the trades it names (a message only says *that* a trade changed).

        Unreadable messages are quarantined and acknowledged with the rest, so they are not redelivered forever.
        Nothing is confirmed here: the core calls :meth:`ack_push` after it committed the batch.
        """
        consumed = await self.tmc.consume(quantity=100)
        plan = plan_refetch(consumed.messages)
        limit = asyncio.Semaphore(5)

        async def read(tid: str) -> object:
            async with limit:
                try:
                    body = await self.client.call(FULLINFO_METHOD, {"fields": TRADE_FIELDS, "tid": tid})
                except TopRequestError as exc:
                    return {"tid": tid, "_refused": exc.message}
                trade = body.get("trade")
                return (
                    trade
                    if isinstance(trade, Mapping)
                    else {"tid": tid, "_refused": "no trade in the answer"}
                )

        trades = await asyncio.gather(*(read(tid) for tid in plan.tids))
        orders, bad = normalise_trades(trades)
        bad.extend(
            QuarantinedRecord(
                None, f"unreadable TMC message: {reason}", json.dumps({"message_id": message_id})
            )
            for message_id, reason in consumed.unreadable
        )
        ids = [*plan.confirm, *(m for m, _ in consumed.unreadable if m is not None)]
        return PushBatch(orders=tuple(orders), message_ids=tuple(dict.fromkeys(ids)), quarantined=tuple(bad))

    async def ack_push(self, batch: PushBatch) -> None:
        await self.tmc.confirm(batch.message_ids)

    # ------------------------------------------------------------------------------------------------ paging

    def _now(self) -> int:
        return math.floor(self.ctx.clock().timestamp())

    def _initial(self) -> Cursor:
        """With no cursor: the operator's ``since``, else the configured look-back."""
        begin = self.ctx.since or (self.ctx.clock() - timedelta(days=self.initial_sync_days))
        return Cursor(start=math.floor(begin.timestamp()), span=MAX_WINDOW)

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        state = Cursor.decode(cursor) if cursor else self._initial()
        limit = self._now() - self.tuning.safety_lag
        if self.ctx.until is not None:  # a backfill window: its end is the horizon
            limit = min(limit, math.floor(self.ctx.until.timestamp()))
        must_reach = state.start
        pos = state.start - self.tuning.overlap if state.caught_up and state.walk is None else state.start
        span, walk = state.span, state.walk
        collected: dict[str, NormalisedOrder] = {}
        quarantined: list[QuarantinedRecord] = []
        calls = 0
        while True:
            if walk is not None:
                window = await self._list(pos, walk.end, page=walk.page, count_only=False)
                calls += 1
                await self._collect(window.trades, pos, walk.end, collected, quarantined)
                if walk.page > 1:
                    walk = Walk(walk.end, walk.page - 1)
                else:
                    pos, walk = walk.end, None
            else:
                if pos >= limit:
                    break
                end = min(pos + span, limit)
                window = await self._list(pos, end, page=1, count_only=False)
                calls += 1
                if window.has_next and end - pos > MIN_WINDOW:
                    span = self._shrunk(pos, end, window.trades)
                    continue
                if window.has_next:  # one second holds more than a page: walk it backwards
                    total = await self._count(pos, end)
                    calls += 1
                    walk = Walk(end=end, page=max(1, math.ceil(total / self.page_size)))
                    continue
                await self._collect(window.trades, pos, end, collected, quarantined)
                span = self._resized(span, end - pos, len(window.trades))
                pos = end
            if pos >= must_reach and walk is None and pos >= limit:
                break
            if pos >= must_reach and (
                len(collected) >= self.page_size or calls >= self.tuning.max_calls_per_page
            ):
                break
        caught_up = walk is None and pos >= limit
        next_cursor = Cursor(start=max(pos, state.start), span=span, caught_up=caught_up, walk=walk)
        self._log.debug(
            "taobao.page",
            orders=len(collected),
            quarantined=len(quarantined),
            calls=calls,
            caught_up=caught_up,
        )
        return OrderPage(
            orders=tuple(sorted(collected.values(), key=lambda o: (o.modified_at, o.external_id))),
            next_cursor=next_cursor.encode(),
            has_more=not caught_up,
            quarantined=tuple(quarantined),
        )

    # ---------------------------------------------------------------------------------------- window sizes

    def _target(self) -> int:
        """Trades a window is sized to hold: most of a page, with room for the density to vary."""
        return max(1, self.page_size * 3 // 4)

    def _resized(self, span: int, width: int, count: int) -> int:
        """The next window's span after one of ``width`` seconds held ``count`` trades in one answer.

        Sized to the density just seen (:meth:`_target` trades), growing at most fourfold a step and never past
        :data:`MAX_WINDOW`. Doubling only below a quarter of a page left windows of 25-50 trades: more than
        twice the list calls a sync needs (issue #22: 567 answers for 20,000 trades), each a round trip and a
        signed request."""
        if width < span and count < self._target():  # a window cut short by the lag says little
            return span
        proposed = width * self._target() // max(count, 1)
        return max(MIN_WINDOW, min(MAX_WINDOW, width * 4, proposed))

    def _shrunk(self, start: int, end: int, trades: Sequence[Mapping[str, Any]]) -> int:
        """A span shorter than the overfull window ``[start, end)``, sized from its answer.

        The answer lists the window's newest trades first, a full page of them, so ``[oldest, end)`` holds at
        least that many: the density over that stretch sizes the retry (to :meth:`_target` trades). Whatever the
        answer's order, the span shrinks strictly, so the retries end; with no usable times it halves."""
        width = end - start
        oldest = end
        for trade in trades:
            try:
                oldest = min(oldest, math.floor(parse_top_time(trade.get("modified")).timestamp()))
            except ValueError:
                continue
        if trades and oldest < end:
            proposed = (end - max(oldest, start)) * self._target() // len(trades)
        else:
            proposed = width // 2
        return max(MIN_WINDOW, min(proposed, width - 1))

    # ------------------------------------------------------------------------------------------ API calls

    def _window_params(self, start: int, end: int) -> dict[str, str | int | bool | datetime | None]:
        return {
            "fields": TRADE_FIELDS,
            "type": TRADE_TYPES,
            "start_modified": _at(start),
            "end_modified": _at(end),
            "page_size": self.page_size,
        }

    async def _list(self, start: int, end: int, *, page: int, count_only: bool) -> _Window:
        params = self._window_params(start, end)
        params.update(page_no=page, use_has_next=True)
        body = await self.client.call(INCREMENT_METHOD, params)
        trades = _trade_list(body)
        has_next = body.get("has_next")
        if not isinstance(has_next, bool):  # the gateway ignored use_has_next: derive it from the total
            total = body.get("total_results")
            has_next = isinstance(total, int) and total > page * self.page_size
        return _Window(trades=trades, has_next=has_next)

    async def _count(self, start: int, end: int) -> int:
        params = self._window_params(start, end)
        params.update(page_no=1, page_size=1, fields="tid", use_has_next=False)
        body = await self.client.call(INCREMENT_METHOD, params)
        total = body.get("total_results")
        if isinstance(total, bool) or not isinstance(total, int):
            raise TopRequestError(
                TopErrorInfo(code=-1, msg=f"{INCREMENT_METHOD}: no total_results when counting")
            )
        return int(total)

    async def _collect(
        self,
        trades: Sequence[Mapping[str, Any]],
        start: int,
        end: int,
        collected: dict[str, NormalisedOrder],
        quarantined: list[QuarantinedRecord],
    ) -> None:
        """Keep the window's own trades (``start <= modified < end``), completed by fullinfo where needed."""
        kept: list[object] = []
        incomplete: list[int] = []  # positions in ``kept`` that fullinfo completes
        for trade in trades:
            try:
                modified = math.floor(parse_top_time(trade.get("modified")).timestamp())
            except ValueError as exc:
                quarantined.append(
                    QuarantinedRecord(trade_id(trade), f"unusable modified time: {exc}", raw_json(trade))
                )
                continue
            if not start <= modified < end:
                continue
            if missing_fields(trade):
                incomplete.append(len(kept))
            kept.append(trade)
        if incomplete:
            completed = await self._complete_all([cast(Mapping[str, Any], kept[i]) for i in incomplete])
            for i, full in zip(incomplete, completed, strict=True):
                kept[i] = full
        orders, bad = normalise_trades(kept)
        quarantined.extend(bad)
        for order in orders:
            known = collected.get(order.external_id)
            if known is None or order.modified_at >= known.modified_at:
                collected[order.external_id] = order

    async def _complete_all(self, trades: Sequence[Mapping[str, Any]]) -> list[object]:
        """:meth:`_complete` for several trades at once, at most :data:`FULLINFO_CONCURRENCY` in flight.

        One request after the other left the fetch side waiting on a round trip per trade (issue #22); the call
        gate still spaces the requests to the platform's limit. A failure cancels the requests still in flight
        and propagates as it did (the page is retried)."""
        limit = asyncio.Semaphore(FULLINFO_CONCURRENCY)

        async def one(trade: Mapping[str, Any]) -> object:
            async with limit:
                return await self._complete(trade)

        tasks = [asyncio.ensure_future(one(trade)) for trade in trades]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _complete(self, trade: Mapping[str, Any]) -> object:
        """Fill the fields the list API left out from ``taobao.trade.fullinfo.get``.

        A trade the platform refuses to show (deleted, not this seller's) is returned as it was, so
        normalisation quarantines it with the reason; transient failures propagate and the page is retried.
        """
        tid = trade_id(trade)
        if tid is None:
            return trade
        try:
            body = await self.client.call(FULLINFO_METHOD, {"fields": TRADE_FIELDS, "tid": tid})
        except TopRequestError as exc:
            self._log.warning("taobao.fullinfo_refused", tid=tid, code=exc.code)
            return trade
        full = body.get("trade")
        return {**trade, **full} if isinstance(full, Mapping) else trade


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _trade_list(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    trades = body.get("trades")
    if isinstance(trades, Mapping):  # simplify=false: {"trades": {"trade": [...]}}; absent when empty
        trades = trades.get("trade")
    if not isinstance(trades, list):
        return []
    return [t if isinstance(t, Mapping) else {"_not_an_object": t} for t in trades]
