"""Shipments from ``waybill``/``logisticsId``, and through the fake JOS gateway end to end."""

from __future__ import annotations

from datetime import timedelta

from tongcrm.plugin.types import OrderStatus, Shipment
from tongcrm_jd.fake_shop import FakeShop, logistics_id
from tongcrm_jd.normalise import OPTIONAL_FIELDS, normalise_order, normalise_records
from tongcrm_jd.testing import ManualClock

from .test_adapter import AdapterFactory, delivered, latest, sync
from .test_normalise import record


def test_waybill_and_carrier_become_a_shipment() -> None:
    order = normalise_order(
        record(orderState="WAIT_GOODS_RECEIVE_CONFIRM", waybill="JDV000000000042", logisticsId="2087")
    )
    assert order.status is OrderStatus.SHIPPED
    assert order.shipments == (Shipment(tracking_number="JDV000000000042", carrier_code="2087"),)
    assert "logisticsId" in OPTIONAL_FIELDS


def test_no_waybill_no_shipment_and_several_waybills_several() -> None:
    assert normalise_order(record(waybill="0", logisticsId="0")).shipments == ()
    assert normalise_order(record()).shipments == ()
    split = normalise_order(
        record(orderState="WAIT_GOODS_RECEIVE_CONFIRM", waybill="JDV1, JDV2,JDV1", logisticsId="0")
    )
    assert [(s.tracking_number, s.carrier_code) for s in split.shipments] == [("JDV1", None), ("JDV2", None)]
    # a hold state proves shipment by its waybill, and the waybill is kept
    held = normalise_order(record(orderState="LOCKED", waybill="JDV9", logisticsId=463))
    assert held.status is OrderStatus.SHIPPED and held.shipments[0].carrier_code == "463"


def test_malformed_waybills_are_quarantined() -> None:
    orders, quarantined = normalise_records(
        [
            record(orderId="1", waybill={"no": "JDV1"}),
            record(orderId="2", waybill="JDV1", logisticsId=["x"]),
            record(orderId="3", waybill="X" * 65),
            record(orderId="4"),
        ]
    )
    assert [o.external_id for o in orders] == ["4"]
    assert [q.external_id for q in quarantined] == ["1", "2", "3"]
    assert all(q.payload and q.reason for q in quarantined)


async def test_a_shipped_order_reaches_the_adapter_with_its_waybill(
    make_adapter: AdapterFactory, shop: FakeShop, clock: ManualClock
) -> None:
    adapter = make_adapter()
    pages, cursor = await sync(adapter)
    first = latest(delivered(pages))
    assert all(o.shipments for o in first.values() if o.platform_status == "WAIT_GOODS_RECEIVE_CONFIRM")
    waiting = next(oid for oid, o in first.items() if o.platform_status == "WAIT_SELLER_STOCK_OUT")
    assert first[waiting].shipments == ()
    clock.advance(minutes=10)
    shop.ship(waiting, clock() - timedelta(minutes=5))
    later, _ = await sync(adapter, cursor)
    (changed,) = delivered(later)
    stored = shop.get(waiting)
    assert changed.status is OrderStatus.SHIPPED
    assert changed.shipments == (
        Shipment(tracking_number=stored["waybill"], carrier_code=logistics_id(stored["waybill"])),
    )
