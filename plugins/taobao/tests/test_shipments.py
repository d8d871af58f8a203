"""Shipments (carrier and waybill per parcel) from TOP trades, and through the fake gateway end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tongcrm.plugin.types import OrderStatus, Shipment
from tongcrm_taobao.fake_shop import TradeStatus
from tongcrm_taobao.normalise import normalise_trade, normalise_trades

from .conftest import Rig
from .test_adapter import latest, sync
from .test_normalise import TID, trade


def lines(*extra: dict[str, Any]) -> dict[str, Any]:
    base = [
        {"oid": TID + 1, "title": "面膜", "price": "99.00", "num": 1, "payment": "99.00",
         "divide_order_fee": "94.00", "refund_status": "NO_REFUND"},
        {"oid": TID + 2, "title": "洁面", "price": "55.50", "num": 2, "payment": "111.00",
         "divide_order_fee": "104.00", "refund_status": "NO_REFUND"},
        {"oid": TID + 3, "title": "眼霜", "price": "10.00", "num": 1, "payment": "10.00",
         "divide_order_fee": "6.00", "refund_status": "NO_REFUND"},
    ]  # fmt: skip
    for line, more in zip(base, extra, strict=False):
        line.update(more)
    return {"order": base}


def test_lines_sharing_a_waybill_are_one_parcel() -> None:
    order = normalise_trade(
        trade(
            status="WAIT_BUYER_CONFIRM_GOODS",
            total_fee="220.00",
            payment="210.00",
            orders=lines(
                {"logistics_company": "圆通速递", "invoice_no": "YT0000000000001"},
                {"logistics_company": "圆通速递", "invoice_no": "YT0000000000001"},
                {
                    "logistics_company": "顺丰速运",
                    "invoice_no": 880012345678,  # a number where a string was expected: kept, as text
                    "consign_time": "2024-06-03 18:00:00",
                },
            ),
        )
    )
    assert order.status is OrderStatus.SHIPPED
    assert order.shipments == (
        Shipment(
            tracking_number="YT0000000000001",
            carrier_name="圆通速递",
            shipped_at=datetime(2024, 6, 2, 1, 0, tzinfo=UTC),  # the trade's consign_time, GMT+8
            line_ids=(str(TID + 1), str(TID + 2)),
        ),
        Shipment(
            tracking_number="880012345678",
            carrier_name="顺丰速运",
            shipped_at=datetime(2024, 6, 3, 10, 0, tzinfo=UTC),  # the line's own consign_time
            line_ids=(str(TID + 3),),
        ),
    )


def test_lines_without_a_waybill_make_no_parcel() -> None:
    unshipped = normalise_trade(trade(status="WAIT_SELLER_SEND_GOODS", consign_time=None))
    assert unshipped.shipments == ()
    carrier_only = normalise_trade(trade(orders=lines({"logistics_company": "圆通速递", "invoice_no": " "})))
    assert carrier_only.shipments == ()


def test_malformed_logistics_quarantine_the_trade() -> None:
    bad_time = trade(orders=lines({"invoice_no": "YT1", "consign_time": "yesterday"}))
    too_long = trade(tid=TID + 10, tid_str=str(TID + 10), orders=lines({"invoice_no": "9" * 65}))
    orders, quarantined = normalise_trades([bad_time, too_long, trade(tid=TID + 20, tid_str=str(TID + 20))])
    assert [o.external_id for o in orders] == [str(TID + 20)]
    assert [(q.external_id, q.reason.split(":")[0]) for q in quarantined] == [
        (str(TID), "consign_time"),
        (str(TID + 10), "invoice_no"),
    ]
    assert all(q.payload for q in quarantined)  # kept whole, never dropped


async def test_a_shipment_reaches_the_adapter_with_its_waybill(rig: Rig) -> None:
    _, cursor = await sync(rig.adapter())
    waiting = next(
        t for t in rig.shop.tids() if rig.shop.trade(t)["status"] == TradeStatus.WAIT_SELLER_SEND_GOODS
    )
    rig.business.advance(600)
    rig.wall.advance(600)
    rig.shop.ship(waiting)
    rig.business.advance(600)
    rig.wall.advance(600)
    pages, _ = await sync(rig.adapter(), cursor)
    order = latest(pages)[str(waiting)]
    shipped_lines = [
        line for line in rig.shop.trade(waiting)["orders"]["order"] if line["refund_status"] != "SUCCESS"
    ]
    (parcel,) = order.shipments
    assert order.status is OrderStatus.SHIPPED
    assert parcel.tracking_number == shipped_lines[0]["invoice_no"]
    assert parcel.carrier_name == shipped_lines[0]["logistics_company"]
    assert parcel.line_ids == tuple(str(line["oid"]) for line in shipped_lines)
    assert parcel.shipped_at == order.shipped_at


async def test_generated_shipped_trades_carry_parcels_and_unshipped_ones_none(rig: Rig) -> None:
    pages, _ = await sync(rig.adapter())
    orders = latest(pages).values()
    shipped = [o for o in orders if o.status in (OrderStatus.SHIPPED, OrderStatus.COMPLETED)]
    assert shipped and all(o.shipments for o in shipped)
    assert all(not o.shipments for o in orders if o.status in (OrderStatus.CREATED, OrderStatus.PAID))
