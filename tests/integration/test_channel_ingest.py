"""End to end: a platform's fake gateway on 127.0.0.1 → the plugin's real client → the ingest engine → the
database. A full sync must equal the platform exactly (no gaps, no duplicates), with faults switched on."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

VAULT = Vault("integration-secret-0123456789")
GMT8 = ZoneInfo("Asia/Shanghai")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _gmt8(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=GMT8).astimezone(UTC)


async def _stored(db: TestDatabase) -> dict[str, tuple[str, datetime]]:
    async with db.sessions() as session:
        rows = (
            await session.execute(sa.select(Order.external_id, Order.platform_status, Order.modified_at))
        ).all()
    assert len(rows) == len({r.external_id for r in rows}), "an order was stored twice"
    return {r.external_id: (r.platform_status, r.modified_at) for r in rows}


async def _sync_until_caught_up(
    db: TestDatabase, ctx: IngestContext, host: PluginHost, name: str, reauth: dict[str, str]
) -> list[Any]:
    reports = []
    for _ in range(20):
        report = await sync_account(db.sessions, ctx, name)
        reports.append(report)
        if report.needs_reauth:  # the fault plan expired the session: the operator re-authorises
            async with db.sessions() as session, session.begin():
                await accounts.update_secrets(session, host, VAULT, name, reauth)
            continue
        if report.caught_up and report.error is None:
            return reports
    raise AssertionError(f"sync did not catch up: {reports}")


# --------------------------------------------------------------------------------------------------- Taobao


@pytest.fixture
def taobao_gateway() -> Iterator[tuple[Any, str, Clock]]:
    from tongcrm_taobao.fake_server import FakeTopGateway, FaultPlan, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    anchor = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)
    clock = Clock(anchor + timedelta(hours=1))
    shop = FakeShop(ShopConfig(trades=400, buyers=100, days=3, anchor=anchor, burst=60), clock=clock)
    # every fault class fires at least once (scheduled first), then some at random
    faults = FaultPlan(
        isp=0.03,
        slow=0.02,
        modify=0.02,
        ban_seconds=1,
        slow_seconds=0.05,
        schedule=deque(["isp", "call_limit", "slow", "modify", "invalid_session", "isp"]),
    )
    gateway = FakeTopGateway(
        shop, app_key="12345678", app_secret="it-secret", session="it-session", faults=faults
    )
    with serve_in_thread(create_app(gateway)) as url:
        yield gateway, f"{url}/router/rest", clock


@pytest.mark.slow
async def test_taobao_full_sync_equals_the_platform_with_every_fault(
    tongcrm_db: TestDatabase, taobao_gateway: tuple[Any, str, Clock]
) -> None:
    gateway, url, clock = taobao_gateway
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            VAULT,
            "taobao",
            "tmall-flagship",
            {
                "app_key": "12345678",
                "app_secret": "it-secret",
                "session": "it-session",
                "gateway_url": url,
                "initial_sync_days": "5",
            },
        )
    ctx = IngestContext(host=host, vault=VAULT, clock=clock, tz=GMT8)
    await _sync_until_caught_up(tongcrm_db, ctx, host, "tmall-flagship", {"session": "it-session"})
    # trades the fault plan modified during the sync land in later windows: let time pass and sync again
    gateway.faults.modify = 0.0
    clock.now += timedelta(minutes=10)
    await _sync_until_caught_up(tongcrm_db, ctx, host, "tmall-flagship", {"session": "it-session"})

    expected = {str(tid): gateway.shop.trade(tid) for tid in gateway.shop.tids()}
    stored = await _stored(tongcrm_db)
    assert set(stored) == set(expected), "gaps or extra orders"
    for tid, trade in expected.items():
        assert stored[tid] == (trade["status"], _gmt8(trade["modified"])), f"trade {tid} differs"
    assert sum(gateway.faults_fired.values()) > 0, "the fault plan fired no fault: the test proves nothing"


# ------------------------------------------------------------------------------------------------------- JD


@pytest.fixture
def jd_gateway() -> Iterator[tuple[Any, str, Clock]]:
    from tongcrm_jd.fake_server import FakeJosGateway, FaultPlan, create_app
    from tongcrm_jd.fake_shop import generate_shop

    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    clock = Clock(now + timedelta(minutes=10))
    shop = generate_shop(seed=3, orders=600, buyers=150, start=now - timedelta(days=4), end=now)
    gateway = FakeJosGateway(
        shop=shop,
        app_key="it-app",
        app_secret="it-secret",
        access_tokens={"it-token"},
        clock=clock,
        faults=FaultPlan(
            call_limited=1,
            server_errors=2,
            slow=1,
            call_limit_rate=0.05,
            server_error_rate=0.05,
            slow_seconds=0.05,
        ),
    )
    with serve_in_thread(create_app(gateway)) as url:
        yield gateway, f"{url}/routerjson", clock


@pytest.mark.slow
async def test_jd_full_sync_equals_the_platform_with_faults(
    tongcrm_db: TestDatabase, jd_gateway: tuple[Any, str, Clock]
) -> None:
    gateway, url, clock = jd_gateway
    host = PluginHost(autoload=True, disabled=set())
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(
            session,
            host,
            VAULT,
            "jd",
            "jd-pop",
            {
                "app_key": "it-app",
                "app_secret": "it-secret",
                "access_token": "it-token",
                "gateway_url": url,
                "initial_sync_days": "5",
            },
        )
    ctx = IngestContext(host=host, vault=VAULT, clock=clock, tz=GMT8)
    await _sync_until_caught_up(tongcrm_db, ctx, host, "jd-pop", {"access_token": "it-token"})
    expected = gateway.shop.snapshot()
    stored = await _stored(tongcrm_db)
    assert any(call.outcome != "ok" for call in gateway.calls), "no fault fired: the test proves nothing"
    assert set(stored) == set(expected)
    for order_id, record in expected.items():
        assert stored[order_id] == (record["orderState"], _gmt8(record["modified"])), (
            f"order {order_id} differs"
        )
