"""Care messages that carry order data: the shipping notice's tracking number and carrier, and refund notices
for whole and partial refunds (once per refund, with the refunded amount)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from messaging_kit import SECRET_KEY, SIGN, Clock, World, beijing, dump, fake_gateway, sms_host
from tongcrm.config import Settings
from tongcrm.errors import Unprocessable
from tongcrm.messaging import flows, service
from tongcrm.orders.shipments import encode
from tongcrm.plugin.types import Shipment
from tongcrm.testing.database import TestDatabase
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate

pytestmark = pytest.mark.asyncio

SHIP_CODE, REFUND_CODE = "SMS_900010", "SMS_900011"
TEMPLATES = (
    FakeTemplate(SHIP_CODE, frozenset({"member_name", "order_id", "carrier", "tracking_number"})),
    FakeTemplate(REFUND_CODE, frozenset({"order_id", "refund_amount"})),
)


def refunds(fake: FakeAliyun) -> list[str]:
    return [a.params["refund_amount"] for a in fake.accepted if a.template_code == REFUND_CODE]


def world(db: TestDatabase, clock: Clock) -> World:
    return World(db.sessions, Settings(database_url=db.url, secret_key=SECRET_KEY).vault(), sms_host(), clock)


async def add_template(w: World, name: str, code: str, text: str, flow: str) -> list[str]:
    async with w.sessions() as session, session.begin():
        template = await service.create_template(
            session,
            name=name,
            account=w.account,
            purpose="service",
            signature=SIGN,
            template_code=code,
            text=text,
        )
        await flows.configure(session, flow, template=name)
        return list(template.variables)


async def test_shipping_notice_carries_the_latest_tracking_number_and_carrier(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock, extra_templates=TEMPLATES) as (fake, url):
        await w.setup(url)
        variables = await add_template(
            w,
            "shipping",
            SHIP_CODE,
            "${member_name}您好，订单${order_id}已由${carrier}发出，运单号${tracking_number}",
            "shipping_notice",
        )
        assert variables == ["carrier", "member_name", "order_id", "tracking_number"]
        member, other = await w.member(1), await w.member(2)
        parcels = [
            Shipment("YT0000000000001", "圆通速递", shipped_at=datetime(2024, 4, 30, 22, tzinfo=UTC)),
            Shipment("SF1234567890", "顺丰速运", shipped_at=datetime(2024, 5, 1, 1, tzinfo=UTC)),
            Shipment("ZT0000000000009", "中通快递"),  # no shipping time: older than any dated parcel
        ]
        tracked = await w.order(member, "S1", status="shipped", shipments=encode(parcels))
        untracked = await w.order(other, "S2", status="shipped")
        for order, who in ((tracked, member), (untracked, other)):
            await w.event(order, who, "shipped", "paid")
        await w.drain(w.runner())
        await w.dispatcher().run()

        by_order = {m.order_id: m for m in await w.messages(flow="flow.shipping_notice")}
        assert by_order[tracked].status == "sent", dump(list(by_order.values()))
        (accepted,) = fake.accepted
        assert accepted.template_code == SHIP_CODE
        assert dict(accepted.params) == {
            "member_name": "王小明",
            "order_id": "S1",
            "carrier": "顺丰速运",
            "tracking_number": "SF1234567890",
        }
        # an order the channel reported no parcel for is never sent half-filled
        assert (by_order[untracked].status, by_order[untracked].reason) == (
            "refused",
            "missing_variables:carrier,tracking_number",
        )


async def test_unknown_order_variables_are_refused_when_the_template_is_made(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock) as (_, url):
        await w.setup(url)
        with pytest.raises(Unprocessable, match="waybill"):
            await add_template(w, "bad", SHIP_CODE, "运单${waybill}", "shipping_notice")


async def test_partial_and_whole_refunds_each_get_one_notice_with_their_amount(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock, extra_templates=TEMPLATES) as (fake, url):
        await w.setup(url)
        await add_template(
            w, "refund", REFUND_CODE, "您的订单${order_id}已退款${refund_amount}元", "refund_notice"
        )
        member = await w.member(1)
        order = await w.order(member, "R1", status="shipped", paid_fen=12_900)
        runner = w.runner()

        # one line refunded (50.00) while the order stays shipped; the event is replayed and reordered
        await w.set_order(order, refunded_fen=5_000)
        partial = (order, member, "shipped", "shipped")
        events = [partial, partial, (order, member, "shipped", "paid")]
        random.Random(3).shuffle(events)
        for e in events:
            await w.event(*e, refunded_fen=5_000)
        await w.drain(runner)
        await w.dispatcher().run()
        assert refunds(fake) == ["50.00"]

        # the rest is refunded later: the order closes as refunded; old events arrive again, late
        clock.advance(hours=1)
        await w.set_order(order, status="refunded", refunded_fen=12_900)
        await w.event(order, member, "refunded", "shipped", refunded_fen=12_900)
        await w.event(*partial, refunded_fen=5_000)
        await w.event(order, member, "refunded", "shipped", refunded_fen=12_900)
        await w.drain(runner)
        await w.dispatcher().run()
        clock.advance(hours=1)
        await w.drain(runner)
        await w.dispatcher().run()

        messages = await w.messages(flow="flow.refund_notice")
        assert [(m.status, m.dedupe_key.rsplit(":", 1)[-1]) for m in messages] == [
            ("sent", "r5000"),
            ("sent", "r12900"),
        ], dump(messages)
        assert refunds(fake) == ["50.00", "79.00"]
        async with w.sessions() as session:
            reports = {r.flow: r for r in await flows.reports(session)}
        assert reports["refund_notice"].statuses["sent"] == 2


async def test_a_whole_refund_without_line_amounts_notifies_what_was_paid(tongcrm_db: TestDatabase) -> None:
    clock = Clock(beijing(2024, 5, 1, 10))
    w = world(tongcrm_db, clock)
    with fake_gateway(clock, extra_templates=TEMPLATES) as (fake, url):
        await w.setup(url)
        await add_template(
            w, "refund", REFUND_CODE, "您的订单${order_id}已退款${refund_amount}元", "refund_notice"
        )
        member = await w.member(1)
        order = await w.order(member, "R2", status="refunded", paid_fen=12_900)
        for _ in range(2):  # an event from before refunds carried amounts, replayed
            await w.event(order, member, "refunded", "paid")
        await w.drain(w.runner())
        await w.dispatcher().run()
        assert [dict(a.params) for a in fake.accepted if a.template_code == REFUND_CODE] == [
            {"order_id": "R2", "refund_amount": "129.00"}
        ]
        # a refund request that was not granted (nothing refunded, status unchanged) sends nothing, and
        # neither does a refund first seen long after the platform recorded it (a backfill)
        other = await w.order(member, "R3", status="shipped", paid_fen=12_900)
        await w.event(other, member, "shipped", "shipped", refunded_fen=0)
        old = await w.order(
            member,
            "R4",
            status="refunded",
            paid_fen=12_900,
            refunded_fen=12_900,
        )
        await w.set_order(old, modified_at=clock() - timedelta(days=10))
        await w.event(old, member, "refunded", None, refunded_fen=12_900)
        await w.drain(w.runner())
        await w.dispatcher().run()
        assert len(refunds(fake)) == 1
