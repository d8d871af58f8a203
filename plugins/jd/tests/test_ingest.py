"""JD orders through the core's ingest into the database: what the member base holds as paid.

The fake JOS gateway is served on 127.0.0.1 and the sync runs exactly as ``tongcrm sync`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.fake_shop import FakeShop, generate_shop
from tongcrm_jd.money import to_fen

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW + timedelta(minutes=10)


@pytest.fixture
def shop() -> FakeShop:
    return generate_shop(seed=5, orders=120, buyers=30, start=NOW - timedelta(days=2), end=NOW)


@pytest.fixture
def gateway_url(shop: FakeShop) -> Iterator[str]:
    gateway = FakeJosGateway(shop=shop, clock=clock)
    with serve_in_thread(create_app(gateway)) as url:
        yield f"{url}/routerjson"


async def _sync(db: TestDatabase, settings: Settings, host: PluginHost, since: datetime | None = None) -> Any:
    ctx = IngestContext(host=host, vault=settings.vault(), clock=clock, tz=settings.tz, actor="test")
    report = await sync_account(db.sessions, ctx, "jd-pop", since=since)
    assert report.error is None, report.error
    return report


async def _paid(db: TestDatabase) -> dict[str, tuple[str, int]]:
    async with db.sessions() as session:
        rows = await session.execute(sa.select(Order.external_id, Order.status, Order.paid_fen))
        return {r.external_id: (r.status, r.paid_fen) for r in rows}


async def test_orders_never_paid_hold_no_money_and_a_re_sync_corrects_old_rows(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, shop: FakeShop, gateway_url: str
) -> None:
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            tongcrm_settings.vault(),
            "jd",
            "jd-pop",
            {
                "app_key": "fake-app-key",
                "app_secret": "fake-app-secret",
                "access_token": "fake-access-token",
                "gateway_url": gateway_url,
                "initial_sync_days": "3",
            },
        )
    cancelled = [
        r["orderId"] for r in shop if r["orderState"] == "TRADE_CANCELED" and not r["paymentConfirmTime"]
    ]
    refunded = [r["orderId"] for r in shop if r["orderState"] == "TRADE_CANCELED" and r["paymentConfirmTime"]]
    assert cancelled and refunded, "the generated shop should hold both kinds of cancelled order"

    first = await _sync(tongcrm_db, tongcrm_settings, host)
    assert first.applied == len(shop)
    held = await _paid(tongcrm_db)
    for order_id in cancelled:
        assert held[order_id] == ("closed", 0)
    for order_id in refunded:  # cancelled after payment: the money had been paid (and went back)
        assert held[order_id] == ("refunded", to_fen(shop.get(order_id)["orderPayment"], "orderPayment"))

    # rows stored before the fix hold orderPayment; JD will not modify a cancelled order again, so only a
    # re-sync of the same platform version can correct them
    async with tongcrm_db.sessions() as session, session.begin():
        for order_id in cancelled:
            await session.execute(
                sa.update(Order)
                .where(Order.external_id == order_id)
                .values(paid_fen=to_fen(shop.get(order_id)["orderPayment"], "orderPayment"))
            )
    again = await _sync(tongcrm_db, tongcrm_settings, host, since=NOW - timedelta(days=3))
    assert again.applied == len(cancelled)  # only the corrected rows are written; the rest are unchanged
    assert again.unchanged == len(shop) - len(cancelled)
    assert await _paid(tongcrm_db) == held
