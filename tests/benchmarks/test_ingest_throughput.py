"""End-to-end ingest: fake TOP gateway on 127.0.0.1 → tongcrm-taobao's client → ingest engine → database.

Reports orders/s on each backend and, on PostgreSQL, ``COPY`` of the same normalised order rows as the
physical ceiling. Size with ``TONGCRM_BENCH_TRADES`` (default 100,000 trades from 30 % as many buyers).
Run: ``python -m pytest tests/benchmarks/test_ingest_throughput.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import os
import time
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
from tongcrm.plugin.types import ChannelContext, NormalisedOrder
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread

TRADES = int(os.environ.get("TONGCRM_BENCH_TRADES", "100000"))
BUYERS = max(1, TRADES * 3 // 10)
VAULT = Vault("bench-secret-0123456789abcdef")


def _run(coro: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)


async def _copy_ceiling(db: TestDatabase, orders: list[NormalisedOrder]) -> float:
    """``COPY`` the same order rows into a scratch copy of the orders table: what the disk can take."""
    rows = [
        (o.external_id, o.status.value, o.total_fen, o.paid_fen, o.created_at, o.modified_at) for o in orders
    ]
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute(
            "CREATE TEMP TABLE bench_copy (external_id text, status text, total_fen bigint, paid_fen bigint,"
            " placed_at timestamptz, modified_at timestamptz)"
        )
        started = time.perf_counter()
        await driver.copy_records_to_table("bench_copy", records=rows)
        elapsed = time.perf_counter() - started
        await driver.execute("DROP TABLE bench_copy")
    return len(rows) / elapsed


@pytest.mark.slow
async def test_end_to_end_ingest_throughput(
    tongcrm_db: TestDatabase, benchmark: Any, report_figure: Any
) -> None:
    from tongcrm_taobao.fake_server import FakeTopGateway, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    anchor = datetime(2024, 11, 11, 23, 0, tzinfo=UTC)
    clock = lambda: anchor + timedelta(hours=1)  # noqa: E731
    shop = FakeShop(ShopConfig(trades=TRADES, buyers=BUYERS, days=10, anchor=anchor), clock=clock)
    gateway = FakeTopGateway(shop, app_key="12345678", app_secret="bench-secret", session="bench-session")
    host = PluginHost(autoload=True, disabled=set())
    with serve_in_thread(create_app(gateway)) as url:
        settings = {
            "app_key": "12345678",
            "app_secret": "bench-secret",
            "session": "bench-session",
            "gateway_url": f"{url}/router/rest",
            "initial_sync_days": "11",
        }
        async with tongcrm_db.sessions() as session, session.begin():
            await accounts.create_account(session, host, VAULT, "taobao", "bench", settings)
        ctx = IngestContext(host=host, vault=VAULT, clock=clock, tz=ZoneInfo("Asia/Shanghai"))

        started = time.perf_counter()
        report = await sync_account(tongcrm_db.sessions, ctx, "bench")
        elapsed = time.perf_counter() - started
        assert report.error is None and report.caught_up

        # the platform side alone: the same pages fetched and normalised without a database
        adapter = host.channel("taobao").factory(ChannelContext("bench", settings, clock=clock))
        fetched: list[NormalisedOrder] = []
        cursor = None
        f_started = time.perf_counter()
        while True:
            page = await adapter.fetch_orders(cursor)
            fetched.extend(page.orders)
            cursor = page.next_cursor
            if not page.has_more:
                break
        fetch_elapsed = time.perf_counter() - f_started
        await adapter.aclose()

    async with tongcrm_db.sessions() as session:
        stored = (await session.execute(sa.select(sa.func.count()).select_from(Order))).scalar_one()
    assert stored == len(shop)
    rate = stored / elapsed
    line = (
        f"ingest {tongcrm_db.backend}: {stored} orders in {elapsed:.1f} s = {rate:,.0f} orders/s end to end; "
        f"fetch+normalise alone {len(fetched) / fetch_elapsed:,.0f} orders/s"
    )
    if tongcrm_db.backend == "postgresql":
        line += f"; PostgreSQL COPY ceiling {await _copy_ceiling(tongcrm_db, fetched):,.0f} rows/s"
    report_figure(line)
    benchmark.extra_info.update({"orders": stored, "orders_per_s": rate, "backend": tongcrm_db.backend})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
