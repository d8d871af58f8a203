"""End to end: a Taobao shop ships a trade and refunds one line of another → the fake TOP gateway → sync →
ingest → order events → care flows → dispatcher → the fake Aliyun gateway. The shipping notice carries the
platform's carrier and waybill; the partial refund gets its own notice with the refunded amount."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.members.service import update_member
from tongcrm.messaging import flows, service
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

GMT8 = ZoneInfo("Asia/Shanghai")
SIGN, SHIP, REFUND = "通通会员", "SMS_SHIP", "SMS_REFUND"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def gateways() -> Iterator[tuple[Any, str, Any, str, Clock]]:
    from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate
    from tongcrm_taobao.fake_server import FakeTopGateway, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    anchor = datetime(2024, 6, 18, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
    clock = Clock(anchor + timedelta(hours=1))
    shop = FakeShop(ShopConfig(trades=150, buyers=40, days=2, anchor=anchor), clock=clock)
    top = FakeTopGateway(shop, app_key="12345678", app_secret="care-secret", session="care-session")
    sms = FakeAliyun(
        access_keys={"k": "s"},
        signatures={SIGN},
        templates=[
            FakeTemplate(SHIP, frozenset({"order_id", "carrier", "tracking_number"})),
            FakeTemplate(REFUND, frozenset({"order_id", "refund_amount"})),
        ],
        clock=clock,
    )
    with serve_in_thread(create_app(top)) as top_url, serve_in_thread(sms.app) as sms_url:
        yield top, f"{top_url}/router/rest", sms, sms_url, clock


async def _member_of(db: TestDatabase, tid: int) -> tuple[int, int]:
    async with db.sessions() as session:
        row = (
            await session.execute(sa.select(Order.id, Order.member_id).where(Order.external_id == str(tid)))
        ).one()
    assert row.member_id is not None
    return row.id, row.member_id


async def test_shipping_and_partial_refund_messages_carry_the_platform_data(
    tongcrm_db: TestDatabase, gateways: tuple[Any, str, Any, str, Clock]
) -> None:
    top, top_url, sms, sms_url, clock = gateways
    settings = Settings(database_url=tongcrm_db.url, secret_key="care-secret-key-0123456789")
    vault = settings.vault()
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            vault,
            "taobao",
            "tmall",
            {
                "app_key": "12345678",
                "app_secret": "care-secret",
                "session": "care-session",
                "gateway_url": top_url,
                "initial_sync_days": "3",
            },
        )
        await service.create_account(
            session, host, vault, "aliyun_sms", "sms", {"access_key_id": "k", "access_key_secret": "s",
                                                        "endpoint": sms_url + "/"}
        )  # fmt: skip
        for name, code, text, flow in (
            ("ship", SHIP, "订单${order_id}已由${carrier}发出，运单号${tracking_number}", "shipping_notice"),
            ("refund", REFUND, "订单${order_id}已退款${refund_amount}元", "refund_notice"),
        ):
            await service.create_template(
                session,
                name=name,
                account="sms",
                purpose="service",
                signature=SIGN,
                template_code=code,
                text=text,
            )
            await flows.configure(session, flow, template=name)
    ingest = IngestContext(host=host, vault=vault, clock=clock, tz=GMT8)
    runner = Runner(
        tongcrm_db.sessions, host, load_job_modules(), clock=clock, services={"settings": settings}
    )

    async def settle() -> None:
        report = await sync_account(tongcrm_db.sessions, ingest, "tmall")
        assert report.error is None and report.caught_up, report
        for _ in range(10):
            if not await runner.run_once():
                break
        await Dispatcher(tongcrm_db.sessions, host, vault, clock=clock).run()

    # the shop as it is: buyers known by open_uid only, no mobile, so nothing can be sent yet
    await settle()
    assert sms.accepted == []
    shop = top.shop
    waiting = next(t for t in shop.tids() if shop.trade(t)["status"] == "WAIT_SELLER_SEND_GOODS")
    finished = next(
        t
        for t in shop.tids()
        if shop.trade(t)["status"] == "TRADE_FINISHED"
        and len(shop.trade(t)["orders"]["order"]) > 1
        and all(line["refund_status"] == "NO_REFUND" for line in shop.trade(t)["orders"]["order"])
    )
    targets = {tid: await _member_of(tongcrm_db, tid) for tid in (waiting, finished)}
    async with tongcrm_db.sessions() as session, session.begin():
        for n, member_id in enumerate(sorted({m for _, m in targets.values()})):
            await update_member(session, vault, member_id, 1, {"mobile": f"+86137{n:08d}"}, SYSTEM)

    clock.now += timedelta(minutes=5)
    shop.ship(waiting)
    shop.refund_line(finished)
    clock.now += timedelta(minutes=10)
    await settle()
    await settle()  # a second pass, as the next poll would: nothing goes twice

    sent = {(a.template_code, a.params["order_id"]): a for a in sms.accepted}
    assert len(sent) == len(sms.accepted) == 2, [(a.template_code, dict(a.params)) for a in sms.accepted]
    shipped_line = shop.trade(waiting)["orders"]["order"][0]
    assert dict(sent[(SHIP, str(waiting))].params) == {
        "order_id": str(waiting),
        "carrier": shipped_line["logistics_company"],
        "tracking_number": shipped_line["invoice_no"],
    }
    refunded_line = next(
        line for line in shop.trade(finished)["orders"]["order"] if line["refund_status"] == "SUCCESS"
    )
    assert sent[(REFUND, str(finished))].params["refund_amount"] == refunded_line["divide_order_fee"]
    async with tongcrm_db.sessions() as session:
        order = await session.get(Order, targets[waiting][0])
        assert order is not None and order.shipments[0]["tracking_number"] == shipped_line["invoice_no"]
        logged = (
            await session.execute(
                sa.select(Message.flow, Message.status).where(
                    Message.order_id.in_([o for o, _ in targets.values()])
                )
            )
        ).all()
    assert sorted(logged) == [("flow.refund_notice", "sent"), ("flow.shipping_notice", "sent")]
