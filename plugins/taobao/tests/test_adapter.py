"""Full syncs through the adapter against the fake gateway: nothing missed, nothing doubled, faults survived."""

from __future__ import annotations

import json
from collections import deque
from datetime import timedelta
from typing import Any

import pytest
from tongcrm.plugin.errors import ChannelAuthError, ChannelUnavailable
from tongcrm.plugin.types import NormalisedOrder, OrderPage
from tongcrm_taobao.adapter import SyncTuning, TaobaoAdapter
from tongcrm_taobao.fake_server import FaultPlan
from tongcrm_taobao.fake_shop import ShopConfig
from tongcrm_taobao.normalise import missing_fields, normalise_trade

from .conftest import ANCHOR, Rig, RigFactory

INCREMENT = "taobao.trades.sold.increment.get"


async def sync(
    adapter: TaobaoAdapter, cursor: str | None = None, *, max_pages: int = 10_000
) -> tuple[list[OrderPage], str]:
    """Drive the adapter like the core does: page by page, retrying a page that failed transiently."""
    pages: list[OrderPage] = []
    failures = 0
    for _ in range(max_pages):
        try:
            page = await adapter.fetch_orders(cursor)
        except ChannelUnavailable:
            failures += 1
            assert failures < 50
            continue
        pages.append(page)
        if cursor is not None:
            assert json.loads(page.next_cursor)["start"] >= json.loads(cursor)["start"], (
                "cursor moved backwards"
            )
        cursor = page.next_cursor
        if not page.has_more:
            return pages, cursor
    raise AssertionError("sync did not catch up")


def latest(pages: list[OrderPage]) -> dict[str, NormalisedOrder]:
    out: dict[str, NormalisedOrder] = {}
    for page in pages:
        for order in page.orders:
            known = out.get(order.external_id)
            if known is None or order.modified_at >= known.modified_at:
                out[order.external_id] = order
    return out


def server_orders(rig: Rig) -> dict[str, NormalisedOrder]:
    return {str(tid): normalise_trade(rig.shop.trade(tid)) for tid in rig.shop.tids()}


async def test_full_sync_equals_the_shop_exactly(rig: Rig) -> None:
    pages, _ = await sync(rig.adapter())
    delivered = [order.external_id for page in pages for order in page.orders]
    assert len(delivered) == len(set(delivered)), "a trade was delivered twice"
    assert latest(pages) == server_orders(rig)
    assert not any(page.quarantined for page in pages)
    # presale trades lack step fields in the list API; those not paid in full were completed through
    # fullinfo (the others' step fields are never read), and the result is the shop's own trades above
    steps = [tid for tid in rig.shop.tids() if rig.shop.trade_type(tid) == "step"]
    unpaid = [tid for tid in steps if missing_fields({**rig.shop.trade(tid), "step_trade_status": None})]
    assert 0 < len(unpaid) < len(steps)
    assert rig.gateway.calls["taobao.trade.fullinfo.get"] == len(unpaid)


async def test_windows_are_at_most_30_minutes_and_never_reach_the_lag(rig: Rig) -> None:
    seen: list[dict[str, str]] = []
    original = rig.gateway.handle

    async def spy(params: dict[str, str]) -> dict[str, object]:
        if params.get("method") == INCREMENT:
            seen.append(dict(params))
        return await original(params)

    rig.gateway.handle = spy  # type: ignore[method-assign]
    await sync(rig.adapter())
    limit = (rig.business.now - timedelta(seconds=180) + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
    assert seen
    for params in seen:
        start, end = params["start_modified"], params["end_modified"]
        counting = (
            params["use_has_next"] == "false"
        )  # the total of an overfull second, before a backward walk
        assert params["use_has_next"] == "true" or (params["page_size"] == "1" and params["fields"] == "tid")
        assert int(params["page_size"]) <= 100
        assert not counting or _seconds(params["end_modified"]) - _seconds(params["start_modified"]) == 1
        assert start < end <= limit, (start, end, limit)
        span = _seconds(end) - _seconds(start)
        assert 0 < span <= 1800


def _seconds(text: str) -> int:
    from tongcrm_taobao.timefmt import parse_top_time

    return int(parse_top_time(text).timestamp())


async def test_refetching_a_cursor_returns_the_same_page(rig: Rig) -> None:
    adapter = rig.adapter(settings={"page_size": "20", "initial_sync_days": "10"})
    cursor: str | None = None
    checked = 0
    while checked < 6:
        page = await adapter.fetch_orders(cursor)
        assert await adapter.fetch_orders(cursor) == page
        checked += bool(page.orders)
        assert page.has_more
        cursor = page.next_cursor


async def test_a_dense_second_is_walked_backwards_without_gaps(rig_factory: RigFactory) -> None:
    rig = rig_factory(ShopConfig(trades=400, buyers=50, days=5, anchor=ANCHOR, burst=130))
    adapter = rig.adapter(settings={"page_size": "50"})
    pages, _ = await sync(adapter)
    assert latest(pages) == server_orders(rig)
    burst = {
        str(t)
        for t in rig.shop.tids()
        if rig.shop.modified_epoch(t) == int((ANCHOR - timedelta(hours=2)).timestamp())
    }
    assert len(burst) == 130


async def test_caught_up_resume_picks_up_changes_and_rereads_an_overlap(rig: Rig) -> None:
    adapter = rig.adapter()
    pages, cursor = await sync(adapter)
    state = json.loads(cursor)
    assert state["caught_up"] is True
    assert not (await adapter.fetch_orders(cursor)).has_more  # nothing new: still caught up

    unpaid = next(t for t in rig.shop.tids() if rig.shop.trade(t)["status"] == "WAIT_BUYER_PAY")
    rig.business.advance(60)
    rig.shop.pay(unpaid)
    new = rig.shop.create_trade()
    rig.business.advance(600)
    more, cursor2 = await sync(adapter, cursor)
    got = latest(more)
    assert got[str(unpaid)].status == "paid"
    assert str(new) in got
    assert json.loads(cursor2)["start"] > state["start"]
    assert latest(pages + more) == server_orders(rig)


async def test_initial_sync_days_bounds_the_first_window(rig: Rig) -> None:
    adapter = rig.adapter(settings={"initial_sync_days": "2"})
    pages, _ = await sync(adapter)
    floor = rig.business.now - timedelta(days=2)
    expected = {k: v for k, v in server_orders(rig).items() if v.modified_at >= floor}
    assert latest(pages) == expected
    assert 0 < len(expected) < len(rig.shop)


async def test_full_sync_survives_every_fault_class(rig_factory: RigFactory) -> None:
    faults = FaultPlan(
        call_limit=0.03,
        isp=0.08,
        slow=0.01,
        modify=0.05,
        ban_seconds=5,
        slow_seconds=0.05,
        schedule=deque(["invalid_session"]),
    )
    rig = rig_factory(ShopConfig(trades=500, buyers=120, days=10, anchor=ANCHOR, burst=120), faults)
    adapter = rig.adapter(settings={"page_size": "40"}, timeout=0.02)
    with pytest.raises(ChannelAuthError):
        await adapter.fetch_orders(None)  # the seller must re-authorise; the core stops and comes back
    pages, cursor = await sync(adapter)
    # trades modified during the sync carry "now" and are only reachable once the lag has passed
    rig.gateway.faults = FaultPlan()
    rig.business.advance(400)
    more, _ = await sync(adapter, cursor)
    for fault in ("call_limit", "isp", "slow", "modify", "invalid_session"):
        assert rig.gateway.faults_fired[fault] > 0, fault
    assert rig.gateway.modified_by_faults
    assert latest(pages + more) == server_orders(rig)
    assert not any(page.quarantined for page in pages + more)


async def test_adapter_asks_for_every_trade_type(rig: Rig) -> None:
    """Without ``type`` TOP drops fixed-price trades; the adapter must list them explicitly."""
    body = await rig.client().call(
        INCREMENT,
        {
            "fields": "tid,type",
            "start_modified": "2024-06-17 00:00:00",
            "end_modified": "2024-06-17 23:00:00",
            "page_size": 100,
        },
    )
    returned = {t["type"] for t in body.get("trades", {}).get("trade", [])}
    assert "fixed" not in returned
    pages, _ = await sync(rig.adapter())
    assert {rig.shop.trade_type(int(o)) for o in latest(pages)} >= {"fixed", "step", "tmall_i18n"}


async def test_tuning_bounds_calls_per_page(rig: Rig) -> None:
    adapter = rig.adapter(tuning=SyncTuning(max_calls_per_page=3))
    page = await adapter.fetch_orders(None)
    assert page.has_more
    assert rig.gateway.calls[INCREMENT] <= 3 + 11  # plus at most one series of halvings


@pytest.mark.parametrize("page_size", [20, 100])
async def test_windows_are_sized_to_the_density_seen(rig_factory: RigFactory, page_size: int) -> None:
    # dense enough that half-hour windows overflow a page: the walk should settle on windows holding most
    # of a page (issue #22), not on the 25-50 % a halving and doubling walk keeps them at
    rig = rig_factory(ShopConfig(trades=page_size * 60, buyers=200, days=1, anchor=ANCHOR))
    answers: list[int] = []
    original = rig.gateway.handle

    async def spy(params: dict[str, str]) -> dict[str, object]:
        body = await original(params)
        if params.get("method") == INCREMENT:
            inner: Any = body.get("trades_sold_increment_get_response", {})
            answers.append(len(inner.get("trades", {}).get("trade", [])))
        return body

    rig.gateway.handle = spy  # type: ignore[method-assign]
    pages, _ = await sync(rig.adapter(settings={"page_size": str(page_size), "initial_sync_days": "2"}))
    assert latest(pages) == server_orders(rig)
    held = [n for n in answers if n]  # the quiet day before the shop's first trade aside
    assert sum(held) / len(held) >= page_size * 0.68  # halving and doubling: 0.61 and 0.63 here
