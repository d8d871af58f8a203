"""Taobao push: TMC messages → re-read trades → ingest, acknowledged only after commit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.channels.models import PushMessage
from tongcrm.crypto import Vault
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.push import poll_push
from tongcrm.ingest.service import sync_account
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

VAULT = Vault("push-test-secret-0123456789")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def rig() -> Iterator[tuple[Any, str, Clock]]:
    from tongcrm_taobao.fake_server import FakeTopGateway, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    anchor = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)
    clock = Clock(anchor + timedelta(hours=1))
    shop = FakeShop(ShopConfig(trades=120, buyers=40, days=2, anchor=anchor), clock=clock)
    gateway = FakeTopGateway(shop, app_key="12345678", app_secret="push-secret", session="push-session")
    with serve_in_thread(create_app(gateway)) as url:
        yield gateway, f"{url}/router/rest", clock


async def _status(db: TestDatabase, tid: int) -> str:
    async with db.sessions() as session:
        return (
            await session.execute(sa.select(Order.platform_status).where(Order.external_id == str(tid)))
        ).scalar_one()


async def test_payment_arrives_by_push_and_redelivery_changes_nothing(
    tongcrm_db: TestDatabase, rig: tuple[Any, str, Clock]
) -> None:
    gateway, url, clock = rig
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            VAULT,
            "taobao",
            "shop",
            {
                "app_key": "12345678",
                "app_secret": "push-secret",
                "session": "push-session",
                "gateway_url": url,
                "initial_sync_days": "3",
            },
        )
    ctx = IngestContext(host=host, vault=VAULT, clock=clock, tz=ZoneInfo("Asia/Shanghai"))
    assert (await sync_account(tongcrm_db.sessions, ctx, "shop")).caught_up
    gateway.shop.tmc.confirm([m["id"] for m in gateway.shop.tmc.consume(200)])  # history is not news

    unpaid = next(t for t in gateway.shop.tids() if gateway.shop.trade(t)["status"] == "WAIT_BUYER_PAY")
    assert await _status(tongcrm_db, unpaid) == "WAIT_BUYER_PAY"
    gateway.shop.pay(unpaid)
    report = await poll_push(tongcrm_db.sessions, ctx, "shop", holder="t1")
    assert (report.error, report.new_messages, report.applied) == (None, 1, 1)
    assert await _status(tongcrm_db, unpaid) == "WAIT_SELLER_SEND_GOODS"
    assert gateway.shop.tmc.pending() == 0  # confirmed after the commit

    # a worker that dies after committing but before confirming: TMC redelivers, nothing changes
    from tongcrm_taobao.adapter import TaobaoAdapter

    gateway.shop.ship(unpaid)
    real_ack = TaobaoAdapter.ack_push

    async def die_before_ack(self: Any, batch: Any) -> None:
        raise RuntimeError("worker killed before confirming")

    TaobaoAdapter.ack_push = die_before_ack  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="killed"):
            await poll_push(tongcrm_db.sessions, ctx, "shop", holder="t2")
    finally:
        TaobaoAdapter.ack_push = real_ack  # type: ignore[method-assign]
    assert await _status(tongcrm_db, unpaid) == "WAIT_BUYER_CONFIRM_GOODS"  # committed
    assert gateway.shop.tmc.pending() == 1  # but not confirmed
    clock.now += timedelta(seconds=301)  # TMC's visibility timeout passes: redelivery
    redelivered = await poll_push(tongcrm_db.sessions, ctx, "shop", holder="t3")
    assert (redelivered.messages, redelivered.new_messages, redelivered.applied) == (1, 0, 0)
    assert gateway.shop.tmc.pending() == 0
    async with tongcrm_db.sessions() as session:
        seen = (await session.execute(sa.select(sa.func.count()).select_from(PushMessage))).scalar_one()
    assert seen == 2
