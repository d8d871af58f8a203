"""OrderSearchInfo → NormalisedOrder: money, time, status, lines, buyers, personal data and quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tongcrm.plugin.types import LineRefundStatus, OrderStatus
from tongcrm_jd.money import MoneyError, allocate, to_fen
from tongcrm_jd.normalise import ORDER_STATES, normalise_order, normalise_records, plain_mobile


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "orderId": "280000000123",
        "orderState": "WAIT_SELLER_STOCK_OUT",
        "payType": "4",
        "orderTotalPrice": "300.00",
        "orderSellerPrice": "290.00",
        "orderPayment": "296.00",
        "freightPrice": "6.00",
        "sellerDiscount": "10.00",
        "orderStartTime": "2024-05-01 10:00:00",
        "paymentConfirmTime": "2024-05-01 10:01:30",
        "orderEndTime": "",
        "modified": "2024-05-01 10:01:30",
        "pin": "jd_buyer01",
        "open_id_buyer": "openid-abc",
        "consigneeInfo": {"fullname": "张三", "mobile": "13812345678", "province": "北京", "city": "北京市"},
        "itemInfoList": [
            {"skuId": "1001", "outerSkuId": "A-1", "skuName": "杯子", "jdPrice": "100.00", "itemTotal": "2"},
            {"skuId": "1002", "outerSkuId": "", "skuName": "盖子", "jdPrice": "100.00", "itemTotal": "1"},
        ],
        "waybill": "",
        "storeId": "0",
    }
    base.update(changes)
    return base


def test_a_paid_order() -> None:
    order = normalise_order(record())
    assert order.external_id == "280000000123"
    assert order.status is OrderStatus.PAID
    assert order.platform_status == "WAIT_SELLER_STOCK_OUT"
    assert order.created_at == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    assert order.paid_at == datetime(2024, 5, 1, 2, 1, 30, tzinfo=UTC)
    assert order.modified_at == order.paid_at
    assert (order.total_fen, order.paid_fen, order.post_fee_fen, order.discount_fen) == (
        30000,
        29600,
        600,
        1000,
    )
    assert [(line.external_id, line.sku, line.quantity, line.unit_price_fen) for line in order.lines] == [
        ("1001", "A-1", 2, 10000),
        ("1002", "1002", 1, 10000),
    ]
    # 29600 split 2:1 → 19733.33 / 9866.67: the spare fen goes to the larger remainder.
    assert [line.amount_fen for line in order.lines] == [19733, 9867]
    assert sum(line.amount_fen for line in order.lines) == order.paid_fen
    assert order.store_code is None


def test_money_is_exact_fen() -> None:
    assert to_fen("199.00", "x") == 19900
    assert to_fen("0.1", "x") == 10
    assert to_fen("12.300", "x") == 1230
    assert to_fen(Decimal("0.07"), "x") == 7
    assert to_fen(5, "x") == 500
    assert to_fen("99999999999999.99", "x") == 9_999_999_999_999_999


@pytest.mark.parametrize(
    "raw",
    ["0", "7", "199.00", "0.10", "0.1", "12.30", "007.05", " 1.00 ", "1.000", "١٢.٥٠", "99999999999999.99"],
)
def test_money_reads_the_digits_written(raw: str) -> None:
    # the platform's own form takes a short way (issue #22); every form gives the fen its digits say
    assert to_fen(raw, "x") == int(Decimal(raw.strip()) * 100)


@pytest.mark.parametrize(
    "bad",
    [
        "1.005",
        "1e3",
        "-1.00",
        "+1.00",
        "1.",
        ".5",
        "1.0.0",
        "NaN",
        "abc",
        "",
        " ",
        "1,000.00",
        "¥5",
        None,
        True,
        1.5,
    ],
)
def test_malformed_money_is_refused(bad: object) -> None:
    with pytest.raises(MoneyError):
        to_fen(bad, "orderPayment")


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=12))
def test_allocation_sums_exactly_and_stays_proportional(total: int, weights: list[int]) -> None:
    shares = allocate(total, weights)
    assert sum(shares) == total
    assert all(s >= 0 for s in shares)
    whole = sum(weights) or len(weights)
    effective = weights if sum(weights) else [1] * len(weights)
    for share, weight in zip(shares, effective, strict=True):
        assert abs(share * whole - total * weight) < whole  # within one fen of the exact share


def test_allocation_ties_go_to_earlier_lines() -> None:
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(5, [0, 0]) == [3, 2]
    assert allocate(0, []) == []
    assert allocate(7, [3]) == [7] and allocate(7, [0]) == [7]  # one line takes it all
    with pytest.raises(ValueError, match="allocation weights must not be negative"):
        allocate(7, [-1])
    with pytest.raises(ValueError, match="no lines"):
        allocate(1, [])


@pytest.mark.parametrize(
    ("state", "changes", "expected"),
    [
        ("WAIT_SELLER_STOCK_OUT", {}, OrderStatus.PAID),
        ("WAIT_SELLER_STOCK_OUT", {"paymentConfirmTime": "", "payType": "1"}, OrderStatus.CREATED),
        ("WAIT_SELLER_DELIVERY", {}, OrderStatus.PAID),
        ("WAIT_GOODS_RECEIVE_CONFIRM", {"waybill": "JDV1"}, OrderStatus.SHIPPED),
        ("FINISHED_L", {"orderEndTime": "2024-05-05 10:00:00"}, OrderStatus.COMPLETED),
        ("TRADE_CANCELED", {}, OrderStatus.REFUNDED),
        ("TRADE_CANCELED", {"paymentConfirmTime": ""}, OrderStatus.CLOSED),
        ("TRADE_CANCELED", {"paymentConfirmTime": "0000-00-00 00:00:00"}, OrderStatus.CLOSED),
        ("LOCKED", {"waybill": "JDV1"}, OrderStatus.SHIPPED),
        ("LOCKED", {}, OrderStatus.PAID),
        ("PAUSE", {"paymentConfirmTime": ""}, OrderStatus.CREATED),
        ("POP_ORDER_PAUSE", {}, OrderStatus.PAID),
        ("POP_ORDER_PAUSE", {"waybill": "0"}, OrderStatus.PAID),
    ],
)
def test_every_state_maps(state: str, changes: dict[str, Any], expected: OrderStatus) -> None:
    assert normalise_order(record(orderState=state, **changes)).status is expected


def test_the_table_covers_every_documented_state() -> None:
    assert {normalise_order(record(orderState=s)).platform_status for s in ORDER_STATES} == set(ORDER_STATES)


def test_completion_time_and_refunded_lines() -> None:
    finished = normalise_order(record(orderState="FINISHED_L", orderEndTime="2024-05-05 10:00:00"))
    assert finished.completed_at == datetime(2024, 5, 5, 2, 0, tzinfo=UTC)
    refunded = normalise_order(record(orderState="TRADE_CANCELED", orderEndTime="2024-05-02 10:00:00"))
    assert refunded.completed_at is None
    assert all(line.refund_status is LineRefundStatus.REFUNDED for line in refunded.lines)
    assert sum(line.refunded_fen for line in refunded.lines) == refunded.paid_fen


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"orderState": "TRADE_CANCELED", "paymentConfirmTime": ""}, OrderStatus.CLOSED),
        ({"orderState": "TRADE_CANCELED", "paymentConfirmTime": "0000-00-00 00:00:00"}, OrderStatus.CLOSED),
        (
            {"orderState": "WAIT_SELLER_STOCK_OUT", "paymentConfirmTime": "", "payType": "1"},
            OrderStatus.CREATED,
        ),
        ({"orderState": "PAUSE", "paymentConfirmTime": ""}, OrderStatus.CREATED),
    ],
)
def test_an_order_never_paid_has_paid_nothing(changes: dict[str, Any], status: OrderStatus) -> None:
    order = normalise_order(record(**changes))
    assert order.status is status
    assert order.paid_at is None
    assert order.paid_fen == 0  # orderPayment (296.00) was only due
    assert order.total_fen == 30000
    # the lines still say what each costs the buyer, and nothing of it is refunded
    assert sum(line.amount_fen for line in order.lines) == 29600
    assert all(line.refunded_fen == 0 for line in order.lines)


@pytest.mark.parametrize(
    "changes",
    [
        {"orderState": "TRADE_CANCELED"},  # cancelled after payment: refunded, the money had been paid
        {"orderState": "WAIT_GOODS_RECEIVE_CONFIRM", "waybill": "JDV1"},
        {"orderState": "FINISHED_L", "orderEndTime": "2024-05-05 10:00:00"},
        {"orderState": "LOCKED"},
    ],
)
def test_a_paid_order_keeps_what_was_paid(changes: dict[str, Any]) -> None:
    assert normalise_order(record(**changes)).paid_fen == 29600


def test_open_id_wins_and_pin_is_the_fallback() -> None:
    assert [(c.kind, c.value) for c in normalise_order(record()).claims] == [("jd.open_id", "openid-abc")]
    legacy = normalise_order(record(open_id_buyer=""))
    assert [(c.kind, c.value) for c in legacy.claims] == [("jd.pin", "jd_buyer01")]
    assert normalise_order(record(open_id_buyer=None, pin="jd_***")).claims == ()
    assert normalise_order(record(open_id_buyer=None, pin=None)).claims == ()


def test_consignee_never_becomes_a_claim_and_only_plain_mobiles_are_kept() -> None:
    order = normalise_order(record())
    assert order.buyer.mobile == "+8613812345678"
    assert order.buyer.name is None
    assert (order.buyer.province, order.buyer.city) == ("北京", "北京市")
    claimed = " ".join(f"{c.kind} {c.value} {c.evidence}" for c in order.claims)
    assert "13812345678" not in claimed and "张三" not in claimed
    masked = normalise_order(record(consigneeInfo={"mobile": "138****5678", "city": "北*"}))
    assert masked.buyer.mobile is None and masked.buyer.city is None
    assert plain_mobile("+86 13812345678") == "+8613812345678"
    assert plain_mobile("U2FsdGVkX1+abcdefghijklmnopqrstuvwx==") is None
    assert plain_mobile("12812345678") is None
    assert normalise_order(record(consigneeInfo="encrypted-blob")).buyer.mobile is None


def test_repeated_sku_lines_get_distinct_ids_and_store_code() -> None:
    items = [
        {"skuId": "7", "skuName": "a", "jdPrice": "10.00", "itemTotal": "1"},
        {"skuId": "7", "skuName": "a (赠品)", "jdPrice": "0.00", "itemTotal": "1"},
    ]
    order = normalise_order(record(itemInfoList=items, orderPayment="10.00", storeId="S001"))
    assert [line.external_id for line in order.lines] == ["7", "7#2"]
    assert [line.amount_fen for line in order.lines] == [1000, 0]
    assert order.store_code == "S001"


def test_numeric_ids_and_decimal_money_are_accepted() -> None:
    order = normalise_order(record(orderId=280000000999123456789, orderPayment=Decimal("296.00")))
    assert order.external_id == "280000000999123456789"
    assert order.paid_fen == 29600


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"orderId": None}, "orderId is missing"),
        ({"orderId": 1.5}, "orderId is not an id"),
        ({"orderState": "WAIT_BUYER_CONFIRM_SOMETHING_NEW"}, "unknown orderState"),
        ({"orderState": ""}, "orderState is missing"),
        ({"modified": "2024/05/01 10:00"}, "modified is not a JD time"),
        ({"orderStartTime": ""}, "orderStartTime is missing"),
        ({"orderPayment": "12.345"}, "fractions of a fen"),
        ({"orderPayment": ""}, "orderPayment is missing"),
        ({"orderTotalPrice": "-1.00"}, "orderTotalPrice is not a plain decimal"),
        ({"itemInfoList": []}, "itemInfoList is missing or empty"),
        (
            {"itemInfoList": [{"skuId": "1", "jdPrice": "1.00", "itemTotal": "0"}]},
            "itemTotal is not a positive",
        ),
        ({"itemInfoList": [{"skuId": "1", "jdPrice": "x", "itemTotal": "1"}]}, "jdPrice is not a plain"),
        ({"itemInfoList": ["sku"]}, "itemInfoList[0] is not an object"),
        # a line's id named by its position (the name is built only for the refusal)
        (
            {
                "itemInfoList": [
                    {"skuId": "1", "jdPrice": "1.00", "itemTotal": "1"},
                    {"skuId": " ", "jdPrice": "1.00", "itemTotal": "1"},
                ]
            },
            "itemInfoList[1].skuId is missing",
        ),
        (
            {"itemInfoList": [{"skuId": "1/2", "jdPrice": "1.00", "itemTotal": "1"}]},
            "itemInfoList[0].skuId is not an id",
        ),
        # longer than the core stores: refused here, so one record is quarantined, not the page's statement
        (
            {"itemInfoList": [{"skuId": "1", "skuName": "长" * 301, "jdPrice": "1.00", "itemTotal": "1"}]},
            "title is 301 characters long, more than the 300 stored",
        ),
        ({"storeId": "S" * 65}, "store_code is 65 characters long"),
    ],
)
def test_malformed_orders_are_quarantined_and_the_rest_continue(changes: dict[str, Any], reason: str) -> None:
    good_before, good_after = record(orderId="1"), record(orderId="3")
    bad = record(**changes)
    orders, quarantined = normalise_records([good_before, bad, good_after, "junk"])
    assert [o.external_id for o in orders] == ["1", "3"]
    assert len(quarantined) == 2
    assert reason in quarantined[0].reason
    assert json.loads(quarantined[0].payload)["consigneeInfo"]["fullname"] == "张三"  # raw kept for review
    assert "张三" not in quarantined[0].reason and "13812345678" not in quarantined[0].reason
    assert quarantined[1].external_id is None and quarantined[1].reason == "order record is not a JSON object"


def test_quarantine_keeps_exact_decimals() -> None:
    _, quarantined = normalise_records([record(orderPayment=Decimal("0.001"))])
    assert json.loads(quarantined[0].payload)["orderPayment"] == "0.001"
    assert quarantined[0].external_id == "280000000123"
