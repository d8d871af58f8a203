"""Windowed backfills of a Taobao and a JD fake shop (their gateways on 127.0.0.1, the plugins' real clients):
windows synced three at a time equal the shop's truth, every window asked the platform only for its own span,
and the backfill ends done, applied through its end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.backfill import backfill_views, create_backfill, work_backfill
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.platforms import jd_platform, taobao_platform
from tongcrm.testing.servers import serve_in_thread

VAULT = Vault("backfill-secret-0123456789")


@pytest.mark.parametrize("channel", ["taobao", "jd"])
async def test_a_shop_backfilled_in_parallel_windows_equals_its_truth(
    tongcrm_db: TestDatabase, channel: str
) -> None:
    app, settings, truth = (
        taobao_platform(trades=200, buyers=80) if channel == "taobao" else jd_platform(orders=200, buyers=80)
    )
    host = PluginHost(autoload=True, disabled=set())
    ctx = IngestContext(
        host=host, vault=VAULT, clock=lambda: datetime.now(UTC), tz=ZoneInfo("Asia/Shanghai"), actor="test"
    )
    until = datetime.now(UTC)
    with serve_in_thread(app) as url:
        async with tongcrm_db.sessions() as session, session.begin():
            path = settings.pop("_path")
            await accounts.create_account(
                session, host, VAULT, channel, "shop", {**settings, "gateway_url": f"{url}{path}"}
            )
            backfill_id = await create_backfill(
                session,
                host,
                "shop",
                since=until - timedelta(days=3),
                until=until,
                window=timedelta(hours=8),
                actor=SYSTEM,
            )
        failed = await work_backfill(tongcrm_db.sessions, ctx, backfill_id, holder="test", parallel=3)
    assert failed == []
    async with tongcrm_db.sessions() as session:
        stored = {
            r.external_id: r.platform_status
            for r in (await session.execute(sa.select(Order.external_id, Order.platform_status))).all()
        }
        lines = (await session.execute(sa.select(sa.func.count()).select_from(OrderLine))).scalar_one()
        (view,) = await backfill_views(session, backfill_id)
    statuses, line_count = truth()
    assert stored == statuses and lines == line_count
    assert (view.status, view.through, view.windows["done"], view.total_windows) == ("done", until, 9, 9)
    # the windows split the work: together they applied each order's latest version about once
    assert len(statuses) <= view.orders < 2 * len(statuses)
