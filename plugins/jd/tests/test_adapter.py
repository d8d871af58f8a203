"""Full syncs through the adapter against the fake gateway: exact, gap-free, duplicate-free, fault-tolerant."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable
from tongcrm.plugin.types import ChannelAdapter, NormalisedOrder, OrderPage
from tongcrm_jd.adapter import JdChannelAdapter, SyncTuning
from tongcrm_jd.client import RetryPolicy
from tongcrm_jd.fake_server import FakeJosGateway
from tongcrm_jd.fake_shop import FakeShop
from tongcrm_jd.normalise import normalise_order
from tongcrm_jd.testing import ManualClock, RecordingSleep
from tongcrm_jd.timeutil import format_jd_time, parse_jd_time

AdapterFactory = Callable[..., JdChannelAdapter]


async def sync(
    adapter: JdChannelAdapter, cursor: str | None = None, limit: int = 2000
) -> tuple[list[OrderPage], str]:
    """Fetch pages until caught up; return them and the last cursor."""
    pages: list[OrderPage] = []
    for _ in range(limit):
        page = await adapter.fetch_orders(cursor)
        pages.append(page)
        cursor = page.next_cursor
        if not page.has_more:
            return pages, cursor
    raise AssertionError("sync did not catch up")


def delivered(pages: list[OrderPage]) -> list[NormalisedOrder]:
    return [order for page in pages for order in page.orders]


def latest(orders: list[NormalisedOrder]) -> dict[str, NormalisedOrder]:
    """What the core would hold: per order, the version with the newest modified time."""
    held: dict[str, NormalisedOrder] = {}
    for order in orders:
        if order.external_id not in held or order.modified_at > held[order.external_id].modified_at:
            held[order.external_id] = order
    return held


def expected(shop: FakeShop, since: str) -> dict[str, NormalisedOrder]:
    return {r["orderId"]: normalise_order(r) for r in shop if r["modified"] >= since}


async def test_adapter_satisfies_the_protocol(make_adapter: AdapterFactory) -> None:
    assert isinstance(make_adapter(), ChannelAdapter)


async def test_full_sync_equals_the_shop_exactly(
    make_adapter: AdapterFactory, shop: FakeShop, gateway: FakeJosGateway, clock: ManualClock
) -> None:
    adapter = make_adapter()
    pages, _ = await sync(adapter)
    orders = delivered(pages)
    counts = Counter(order.external_id for order in orders)
    assert counts.most_common(1)[0][1] == 1, "an order was delivered twice"
    start = format_jd_time(clock() - timedelta(days=25))
    assert latest(orders) == expected(shop, start)
    assert all(not page.quarantined for page in pages)
    assert pages[-1].has_more is False
    assert all(len(page.orders) <= 100 for page in pages)
    assert {o.status for o in orders} >= {"paid", "shipped", "completed", "closed", "refunded"}
    horizon = format_jd_time(clock() - timedelta(seconds=60))
    searches = [call.business for call in gateway.calls]
    assert all(b["end_date"] <= horizon for b in searches)
    assert searches[0]["start_date"] == start
    assert all(b["dateType"] == "0" and len(b["order_state"].split(",")) == 8 for b in searches)
    assert all(int(b["page_size"]) <= 100 for b in searches)


async def test_busy_windows_shrink_instead_of_deep_paging(
    make_adapter: AdapterFactory, shop: FakeShop, gateway: FakeJosGateway, clock: ManualClock
) -> None:
    tuning = SyncTuning(initial_span=20 * 86_400, max_span=20 * 86_400, max_pages_per_window=2)
    adapter = make_adapter(tuning=tuning, page_size="10")
    pages, _ = await sync(adapter)
    assert latest(delivered(pages)) == expected(shop, format_jd_time(clock() - timedelta(days=25)))
    assert max(int(call.business["page"]) for call in gateway.calls) <= 2
    spans = {
        (parse_jd_time(c.business["end_date"]) - parse_jd_time(c.business["start_date"])).total_seconds()
        for c in gateway.calls
    }
    assert min(spans) < 86_400 < max(spans)


async def test_refetching_a_cursor_returns_the_same_orders(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter(page_size="25")
    cursor: str | None = None
    for _ in range(6):
        first = await adapter.fetch_orders(cursor)
        again = await adapter.fetch_orders(cursor)
        assert first == again
        cursor = first.next_cursor


async def test_cursor_moves_forward_and_caught_up_polls_deliver_nothing_new(
    make_adapter: AdapterFactory, clock: ManualClock
) -> None:
    adapter = make_adapter()
    _, cursor = await sync(adapter)
    for _ in range(3):
        clock.advance(seconds=30)
        page = await adapter.fetch_orders(cursor)
        assert page.orders == () and page.has_more is False
        cursor = page.next_cursor


async def test_an_order_changed_after_its_window_passed_comes_again(
    make_adapter: AdapterFactory, shop: FakeShop, clock: ManualClock
) -> None:
    adapter = make_adapter()
    pages, cursor = await sync(adapter)
    first_seen = latest(delivered(pages))
    victim = next(oid for oid, o in first_seen.items() if o.platform_status == "WAIT_GOODS_RECEIVE_CONFIRM")
    clock.advance(minutes=10)
    shop.modify(
        victim, clock() - timedelta(minutes=5), state="FINISHED_L", orderEndTime=format_jd_time(clock())
    )
    later, _ = await sync(adapter, cursor)
    (changed,) = delivered(later)
    assert changed.external_id == victim
    assert changed.status == "completed" and changed.modified_at > first_seen[victim].modified_at


async def test_orders_changing_mid_scan_leave_no_gap(
    make_adapter: AdapterFactory, shop: FakeShop, gateway: FakeJosGateway, clock: ManualClock
) -> None:
    """Orders leave a window while it is paged: without the rescan, the orders behind them would be skipped."""
    tuning = SyncTuning(initial_span=26 * 86_400, max_span=26 * 86_400, max_pages_per_window=100)
    adapter = make_adapter(tuning=tuning, page_size="20")
    ordered = sorted(shop, key=lambda r: (r["modified"], int(r["orderId"])))

    def meddle(call_number: int) -> None:
        if call_number in (3, 7, 12):  # re-modify an order from an already-fetched page
            victim = ordered[call_number]["orderId"]
            shop.modify(victim, clock.advance(seconds=1), state="LOCKED")

    gateway.on_call = meddle
    pages, _ = await sync(adapter)
    gateway.on_call = None
    clock.advance(minutes=5)
    pages += (await sync(adapter, pages[-1].next_cursor))[0]
    assert latest(delivered(pages)) == expected(shop, ordered[0]["modified"])
    assert len({call.business["start_date"] for call in gateway.calls[:12]}) == 1  # one deep-paged window
    assert [call.business["page"] for call in gateway.calls[:4]] == ["1", "2", "3", "1"]  # rescanned


async def test_full_sync_with_faults_is_still_exact(
    make_adapter: AdapterFactory,
    shop: FakeShop,
    gateway: FakeJosGateway,
    clock: ManualClock,
    sleeps: RecordingSleep,
) -> None:
    gateway.faults.call_limit_rate = 0.2
    gateway.faults.server_error_rate = 0.1
    gateway.faults.slow_rate = 0.05
    gateway.faults.slow_seconds = 1.0
    adapter = make_adapter(page_size="50", deadline=0.02, retry=RetryPolicy(attempts=12, base_delay=0.1))
    pages, _ = await sync(adapter)
    orders = delivered(pages)
    assert Counter(o.external_id for o in orders).most_common(1)[0][1] == 1
    assert latest(orders) == expected(shop, format_jd_time(clock() - timedelta(days=25)))
    outcomes = Counter(call.outcome for call in gateway.calls)
    assert outcomes["error_2"] > 0 and outcomes["http_502"] > 0
    assert len(sleeps.delays) >= outcomes["error_2"] + outcomes["http_502"]


async def test_exhausted_retries_surface_and_the_same_cursor_resumes(
    make_adapter: AdapterFactory, shop: FakeShop, gateway: FakeJosGateway, clock: ManualClock
) -> None:
    adapter = make_adapter(page_size="50", retry=RetryPolicy(attempts=2, base_delay=0.1))
    first = await adapter.fetch_orders(None)
    gateway.faults.call_limited = 5
    with pytest.raises(ChannelUnavailable):
        await adapter.fetch_orders(first.next_cursor)
    gateway.faults.call_limited = 0
    rest, _ = await sync(adapter, first.next_cursor)
    assert latest(delivered([first, *rest])) == expected(shop, format_jd_time(clock() - timedelta(days=25)))


async def test_auth_and_business_failures_are_not_swallowed(
    make_adapter: AdapterFactory, gateway: FakeJosGateway
) -> None:
    adapter = make_adapter()
    gateway.faults.business_failures = 1
    with pytest.raises(ChannelRequestError):
        await adapter.fetch_orders(None)
    gateway.revoke("fake-access-token")
    with pytest.raises(ChannelAuthError):
        await adapter.fetch_orders(None)


async def test_a_malformed_order_is_quarantined_without_stopping_the_page(
    make_adapter: AdapterFactory, shop: FakeShop, clock: ManualClock
) -> None:
    victim = next(iter(shop))["orderId"]
    shop.modify(victim, parse_jd_time(shop.get(victim)["modified"]), orderPayment="12.3.4")
    pages, _ = await sync(make_adapter())
    quarantined = [q for page in pages for q in page.quarantined]
    assert [(q.external_id, "orderPayment" in q.reason) for q in quarantined] == [(victim, True)]
    others = [r for r in shop if r["orderId"] != victim]
    assert latest(delivered(pages)) == {r["orderId"]: normalise_order(r) for r in others}


async def test_invalid_cursor_is_refused(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    for bad in ("", "{}", '{"v":1,"since":"2024-01-01T00:00:00","span":60,"page":1}', "not json"):
        with pytest.raises(ChannelRequestError, match="cursor"):
            await adapter.fetch_orders(bad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"page_size": "101"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"initial_sync_days": "-1"}, "initial_sync_days"),
        ({"app_secret": ""}, "app_secret is required"),
        ({"gateway_url": "ftp://x"}, "gateway_url"),
    ],
)
async def test_settings_are_validated(
    make_adapter: AdapterFactory, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_adapter(**overrides)


async def test_repr_hides_secrets(make_adapter: AdapterFactory) -> None:
    text = repr(make_adapter())
    assert "fake-app-secret" not in text and "fake-access-token" not in text and "fake-app-key" in text
