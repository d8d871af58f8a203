"""The JD channel adapter: pulls one shop's orders with ``jingdong.pop.order.search`` in sliding windows.

Why windows and not deep paging: JD recommends sliding the time window (protocols.md §2.3), and deep paging
over a live result set skips records whenever an earlier record leaves it. So the adapter queries by
*modified* time (``dateType`` 0) in windows that hold a few pages at most:

- a window opens at the cursor's ``since`` and ends at ``since + span``, but never later than
  ``clock() - safety_lag`` (JD indexes orders a little after they change);
- if its first page reports more than ``max_pages_per_window`` pages, the window is shrunk and re-queried;
  quiet windows let the next span grow, up to ``max_span``;
- if ``orderTotal`` changes while a window is being paged, orders moved in or out mid-scan, so the window is
  scanned again from its first page (nothing can slip between pages);
- the next window starts ``overlap`` before the previous end, to catch orders indexed late; versions the
  previous window already delivered in that overlap are skipped (see :mod:`tongcrm_jd.cursor`);
- when a window reaches the safety horizon the sync is caught up: ``has_more`` is ``False`` and the next call
  (the next poll) continues from there.

Every order state is requested, so cancellations and completions are seen. The adapter is stateless apart from
the cursor, so fetching the same cursor again asks the same questions.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from tongcrm.plugin.types import ChannelContext, OrderPage

from tongcrm_jd.client import JosClient, RetryPolicy
from tongcrm_jd.cursor import SyncCursor
from tongcrm_jd.errors import JosRequestError
from tongcrm_jd.normalise import OPTIONAL_FIELDS, ORDER_STATES, normalise_records
from tongcrm_jd.settings import JdSettings, parse_settings
from tongcrm_jd.timeutil import format_jd_time

ORDER_SEARCH = "jingdong.pop.order.search"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SyncTuning:
    """Window sizes and margins, in seconds. ``min_span`` > ``overlap`` so windows always advance."""

    initial_span: int = 3600
    min_span: int = 300
    max_span: int = 86_400
    overlap: int = 120
    safety_lag: int = 60
    max_pages_per_window: int = 5
    max_windows_per_call: int = 24
    max_skip_keys: int = 5000

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.min_span <= self.initial_span <= self.max_span:
            raise ValueError("need 0 <= overlap < min_span <= initial_span <= max_span")
        if self.max_span > 30 * 86_400:
            raise ValueError("JD allows a window of at most one month")
        if self.safety_lag < 0 or self.max_pages_per_window < 1 or self.max_windows_per_call < 1:
            raise ValueError("safety_lag, max_pages_per_window and max_windows_per_call must be positive")


@dataclass(frozen=True, slots=True)
class _SearchResult:
    total: int
    records: list[Any]


def _whole_seconds(value: datetime) -> datetime:
    return value.replace(microsecond=0)


class JdChannelAdapter:
    """A :class:`~tongcrm.plugin.types.ChannelAdapter` for one JD shop."""

    def __init__(
        self,
        context: ChannelContext,
        *,
        tuning: SyncTuning | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        deadline: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.account_name = context.account_name
        self.settings: JdSettings = parse_settings(context.settings)
        self._clock = context.clock
        self._since = context.since
        self._until = context.until
        self.tuning = tuning or SyncTuning()
        self.client = JosClient(
            app_key=self.settings.app_key,
            app_secret=self.settings.app_secret,
            access_token=self.settings.access_token,
            gateway_url=self.settings.gateway_url,
            clock=context.clock,
            retry=retry,
            sleep=sleep,
            rng=rng,
            deadline=deadline,
            transport=transport,
            call_gate=context.call_gate,
            calls_per_second=self.settings.calls_per_second,
        )

    def __repr__(self) -> str:
        return f"JdChannelAdapter(account={self.account_name!r}, settings={self.settings!r})"

    async def aclose(self) -> None:
        await self.client.aclose()

    def initial_cursor(self) -> SyncCursor:
        """With no cursor: the operator's ``since``, else the configured look-back."""
        start = self._since or (self._clock() - timedelta(days=self.settings.initial_sync_days))
        return SyncCursor(since=_whole_seconds(start), span=self.tuning.initial_span)

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        """One page of orders after ``cursor`` (see the module docstring for how windows move)."""
        state = SyncCursor.decode(cursor) if cursor is not None else self.initial_cursor()
        tuning = self.tuning
        for _ in range(tuning.max_windows_per_call):
            horizon = _whole_seconds(self._clock() - timedelta(seconds=tuning.safety_lag))
            if self._until is not None:  # a backfill window: its end is the horizon
                horizon = min(horizon, _whole_seconds(self._until))
            if state.end is None and state.since >= horizon:
                return OrderPage(orders=(), next_cursor=state.encode(), has_more=False)
            end = state.end or min(state.since + timedelta(seconds=state.span), horizon)
            result = await self._search(state.since, end, state.page)
            pages = max(1, math.ceil(result.total / self.settings.page_size))
            window = int((end - state.since).total_seconds())
            if state.page == 1 and pages > tuning.max_pages_per_window and window > tuning.min_span:
                state = replace(state, span=self._shrunk(window, result.total), end=None)
                continue
            if state.total is not None and result.total != state.total:
                log.info("jd.sync.window_changed", account=self.account_name, window_start=str(state.since))
                restarted = replace(state, end=end, page=1, total=None, carry=())
                return self._page(result.records, state, restarted, has_more=True)
            if state.page < pages:
                following = replace(state, end=end, page=state.page + 1, total=result.total)
                return self._page(result.records, state, following, has_more=True, window_end=end)
            next_since = max(state.since, end - timedelta(seconds=tuning.overlap))
            span = state.span
            if result.total <= self.settings.page_size // 2:
                span = min(tuning.max_span, span * 2)
            following = SyncCursor(since=next_since, span=span)
            caught_up = end >= horizon
            page = self._page(result.records, state, following, has_more=not caught_up, window_end=end)
            if page.orders or page.quarantined or caught_up:
                return page
            state = SyncCursor.decode(page.next_cursor)
        return OrderPage(orders=(), next_cursor=state.encode(), has_more=True)

    def _shrunk(self, window: int, total: int) -> int:
        target = self.tuning.max_pages_per_window * self.settings.page_size // 2
        proposed = window * target // max(total, 1)
        return max(self.tuning.min_span, min(proposed, window // 2))

    def _page(
        self,
        records: list[Any],
        current: SyncCursor,
        following: SyncCursor,
        *,
        has_more: bool,
        window_end: datetime | None = None,
    ) -> OrderPage:
        """Drop versions already delivered (overlap, repeats within the page), normalise the rest, and
        work out the ``skip``/``carry`` bookkeeping of the next cursor."""
        skip = set(current.skip)
        fresh: list[Any] = []
        keys: list[str] = []
        for record in records:
            key = _version_key(record)
            if key is not None:
                if key in skip:
                    continue
                skip.add(key)
                keys.append(key)
            fresh.append(record)
        carry = list(current.carry) if following.page > 1 or following.end is None else []
        if window_end is not None:
            threshold = format_jd_time(window_end - timedelta(seconds=self.tuning.overlap))
            carry.extend(k for k in keys if k.rsplit("@", 1)[1] >= threshold)
            carry = carry[: self.tuning.max_skip_keys]
        if following.page > 1:
            following = replace(following, skip=current.skip, carry=tuple(carry))
        elif following.end is None:  # a new window: this window's overlap keys become its skip list
            since_text = format_jd_time(following.since)
            following = replace(following, skip=tuple(k for k in carry if k.rsplit("@", 1)[1] >= since_text))
        else:  # the same window rescanned from its first page
            following = replace(following, skip=current.skip, carry=())
        orders, quarantined = normalise_records(fresh)
        return OrderPage(
            orders=tuple(orders),
            next_cursor=following.encode(),
            has_more=has_more,
            quarantined=tuple(quarantined),
        )

    async def _search(self, since: datetime, end: datetime, page: int) -> _SearchResult:
        business = {
            "start_date": format_jd_time(since),
            "end_date": format_jd_time(end),
            "order_state": ",".join(ORDER_STATES),
            "optional_fields": ",".join(OPTIONAL_FIELDS),
            "page": str(page),
            "page_size": str(self.settings.page_size),
            "dateType": "0",
            "sortType": "0",
        }
        payload = await self.client.call(ORDER_SEARCH, business)
        result = payload.get("searchorderinfo_result")
        if not isinstance(result, dict):
            raise JosRequestError("malformed_response", en_desc="searchorderinfo_result missing")
        total = result.get("orderTotal", 0)
        records = result.get("orderInfoList") or []
        if isinstance(total, bool) or not isinstance(total, int | str) or not str(total).isdigit():
            raise JosRequestError("malformed_response", en_desc=f"orderTotal is not a count: {total!r}")
        if not isinstance(records, list):
            raise JosRequestError("malformed_response", en_desc="orderInfoList is not a list")
        return _SearchResult(total=int(total), records=records)


def _version_key(record: Any) -> str | None:
    """``orderId@modified``: one version of one order. ``None`` when the record lacks either (it will be
    quarantined by the normaliser and is not worth remembering)."""
    if not isinstance(record, dict):
        return None
    order_id, modified = record.get("orderId"), record.get("modified")
    if isinstance(order_id, bool) or not isinstance(order_id, str | int) or not isinstance(modified, str):
        return None
    return f"{order_id}@{modified}"


def create_adapter(context: ChannelContext) -> JdChannelAdapter:
    """The factory the channel spec hands the core."""
    return JdChannelAdapter(context)
