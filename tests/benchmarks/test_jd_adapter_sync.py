"""Benchmarks (skipped by default: run with ``--benchmark-enable``): the fake gateway at 100,000 orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tongcrm.plugin.types import ChannelContext
from tongcrm_jd.adapter import JdChannelAdapter
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.fake_shop import generate_shop
from tongcrm_jd.testing import ManualClock


@pytest.mark.slow
def test_full_sync_of_100k_orders(benchmark: BenchmarkFixture) -> None:
    import asyncio

    now = datetime(2024, 6, 1, tzinfo=UTC)
    shop = generate_shop(seed=5, orders=100_000, buyers=20_000, start=now - timedelta(days=90), end=now)
    clock = ManualClock(now + timedelta(minutes=5))

    async def run() -> int:
        gateway = FakeJosGateway(shop=shop, clock=clock)
        settings = {
            "app_key": gateway.app_key,
            "app_secret": gateway.app_secret,
            "access_token": "fake-access-token",
            "gateway_url": "http://jos.test/routerjson",
            "initial_sync_days": "91",
        }
        adapter = JdChannelAdapter(
            ChannelContext("bench", settings, clock), transport=httpx.ASGITransport(app=create_app(gateway))
        )
        seen: set[str] = set()
        cursor = None
        while True:
            page = await adapter.fetch_orders(cursor)
            seen.update(o.external_id for o in page.orders)
            cursor = page.next_cursor
            if not page.has_more:
                break
        await adapter.aclose()
        return len(seen)

    count = benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    assert count == 100_000
