"""The fake gateway's search semantics and its generated shop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tongcrm_jd.client import JosClient
from tongcrm_jd.errors import JosBusinessError
from tongcrm_jd.fake_shop import FakeShop, generate_shop
from tongcrm_jd.normalise import ORDER_STATES

SEARCH = "jingdong.pop.order.search"
ALL = ",".join(ORDER_STATES)


def query(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "start_date": "2024-05-20 00:00:00",
        "end_date": "2024-05-27 00:00:00",
        "order_state": ALL,
        "optional_fields": "orderId,modified,orderStartTime,orderState",
        "page": "1",
        "page_size": "100",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


async def search(client: JosClient, **changes: Any) -> dict[str, Any]:
    payload = await client.call(SEARCH, query(**changes))
    result: dict[str, Any] = payload["searchorderinfo_result"]
    return result


async def test_paging_covers_the_window_exactly_once(
    make_client: Callable[..., JosClient], shop: FakeShop
) -> None:
    client = make_client()
    first = await search(client, page_size="30")
    total = first["orderTotal"]
    ids: list[str] = []
    for page in range(1, total // 30 + 2):
        ids += [o["orderId"] for o in (await search(client, page=str(page), page_size="30"))["orderInfoList"]]
    await client.aclose()
    want = [r for r in shop if "2024-05-20 00:00:00" <= r["modified"] <= "2024-05-27 00:00:00"]
    assert total == len(want) == len(ids) == len(set(ids))
    assert set(ids) == {r["orderId"] for r in want}
    stamps = [shop.get(i)["modified"] for i in ids]
    assert stamps == sorted(stamps)


async def test_filters_sort_and_projection(make_client: Callable[..., JosClient], shop: FakeShop) -> None:
    client = make_client()
    descending = await search(client, sortType="1")
    stamps = [o["modified"] for o in descending["orderInfoList"]]
    assert stamps == sorted(stamps, reverse=True)
    finished = await search(client, order_state="FINISHED_L")
    assert {o["orderState"] for o in finished["orderInfoList"]} == {"FINISHED_L"}
    created = await search(client, dateType="1")
    assert all("2024-05-20" <= o["orderStartTime"] <= "2024-05-27" for o in created["orderInfoList"])
    assert created["orderTotal"] != descending["orderTotal"]
    assert set(descending["orderInfoList"][0]) == {"orderId", "modified", "orderStartTime", "orderState"}
    recent = await search(client, start_date=None, end_date=None, order_state="WAIT_SELLER_STOCK_OUT")
    assert {o["orderState"] for o in recent["orderInfoList"]} == {"WAIT_SELLER_STOCK_OUT"}
    await client.aclose()


@pytest.mark.parametrize(
    "changes",
    [
        {"page_size": "101"},
        {"page": "0"},
        {"optional_fields": None},
        {"order_state": None},
        {"order_state": "NOT_A_STATE"},
        {"start_date": None, "end_date": None},
        {"start_date": "2024-03-01 00:00:00"},
        {"end_date": "20240527"},
    ],
)
async def test_invalid_searches_are_business_failures(
    make_client: Callable[..., JosClient], changes: dict[str, Any]
) -> None:
    client = make_client()
    with pytest.raises(JosBusinessError) as caught:
        await search(client, **changes)
    await client.aclose()
    assert caught.value.chinese_message and caught.value.english_message


def test_generated_shop_is_deterministic_and_varied() -> None:
    end = datetime(2024, 6, 1, tzinfo=UTC)
    make = lambda: generate_shop(seed=3, orders=3000, buyers=400, start=end - timedelta(days=60), end=end)  # noqa: E731
    shop = make()
    assert shop.snapshot() == make().snapshot()
    records = list(shop)
    assert Counter(r["orderState"] for r in records).keys() == set(ORDER_STATES)
    buyers = Counter(r["pin"] for r in records)
    assert max(buyers.values()) >= 10  # returning buyers
    assert any(not r["open_id_buyer"] for r in records)  # legacy buyers with a pin only
    assert any(len(r["itemInfoList"]) >= 3 for r in records)
    cancelled = [r for r in records if r["orderState"] == "TRADE_CANCELED"]
    assert {bool(r["paymentConfirmTime"]) for r in cancelled} == {True, False}
    assert all(r["modified"] <= "2024-06-01 08:00:00" for r in records)
    mobiles = Counter(
        ("*" in r["consigneeInfo"]["mobile"], len(r["consigneeInfo"]["mobile"])) for r in records
    )
    assert len(mobiles) >= 3  # masked, plain and encrypted


def test_modify_moves_an_order_in_the_index() -> None:
    end = datetime(2024, 6, 1, tzinfo=UTC)
    shop = generate_shop(seed=1, orders=50, buyers=10, start=end - timedelta(days=5), end=end)
    victim = next(iter(shop))["orderId"]
    everything = frozenset(ORDER_STATES)
    later = "2024-06-01 09:00:00"
    assert victim not in shop.search(
        by_created=False, start=later, end=None, states=everything, descending=False
    )
    shop.modify(victim, datetime(2024, 6, 1, 1, 0, tzinfo=UTC), state="FINISHED_L")
    found = shop.search(by_created=False, start=later, end=None, states=everything, descending=False)
    assert found == [victim]
    assert shop.get(victim)["orderState"] == "FINISHED_L"
    assert len(shop.search(by_created=False, start=None, end=None, states=everything, descending=False)) == 50
