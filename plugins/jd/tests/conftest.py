"""Shared fixtures: a movable clock, a generated shop behind the fake gateway, and adapters wired to it in-process.

Everything runs over ``httpx.ASGITransport`` (or loopback sockets); no test reaches outside 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tongcrm.plugin.types import ChannelContext
from tongcrm_jd.adapter import JdChannelAdapter, SyncTuning
from tongcrm_jd.client import JosClient, RetryPolicy
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.fake_shop import FakeShop, generate_shop
from tongcrm_jd.testing import ManualClock as Clock
from tongcrm_jd.testing import RecordingSleep as Sleeps

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
GATEWAY_URL = "http://jos.test/routerjson"
TOKEN = "fake-access-token"


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def shop() -> FakeShop:
    return generate_shop(
        seed=7, orders=1200, buyers=250, start=NOW - timedelta(days=20), end=NOW - timedelta(minutes=10)
    )


@pytest.fixture
def gateway(shop: FakeShop, clock: Clock) -> FakeJosGateway:
    return FakeJosGateway(shop=shop, clock=clock, seed=11)


@pytest.fixture
def transport(gateway: FakeJosGateway) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(gateway))


def settings_for(gateway: FakeJosGateway, **overrides: str) -> dict[str, str]:
    settings = {
        "app_key": gateway.app_key,
        "app_secret": gateway.app_secret,
        "access_token": TOKEN,
        "gateway_url": GATEWAY_URL,
        "initial_sync_days": "25",
        "page_size": "100",
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def make_client(
    gateway: FakeJosGateway, clock: Clock, sleeps: Sleeps, transport: httpx.ASGITransport
) -> Callable[..., JosClient]:
    def build(**kwargs: Any) -> JosClient:
        options: dict[str, Any] = {
            "app_key": gateway.app_key,
            "app_secret": gateway.app_secret,
            "access_token": TOKEN,
            "gateway_url": GATEWAY_URL,
            "clock": clock,
            "sleep": sleeps,
            "retry": RetryPolicy(attempts=4, base_delay=0.5, max_delay=4.0),
            "transport": transport,
            "deadline": 0.5,
        }
        options.update(kwargs)
        return JosClient(**options)

    return build


@pytest.fixture
async def make_adapter(
    gateway: FakeJosGateway, clock: Clock, sleeps: Sleeps, transport: httpx.ASGITransport
) -> AsyncIterator[Callable[..., JdChannelAdapter]]:
    adapters: list[JdChannelAdapter] = []

    def build(*, tuning: SyncTuning | None = None, **overrides: Any) -> JdChannelAdapter:
        settings = settings_for(gateway, **{k: v for k, v in overrides.items() if isinstance(v, str)})
        options = {k: v for k, v in overrides.items() if not isinstance(v, str)}
        options.setdefault("retry", RetryPolicy(attempts=6, base_delay=0.5, max_delay=4.0))
        options.setdefault("deadline", 0.5)
        adapter = JdChannelAdapter(
            ChannelContext(account_name="jd-test", settings=settings, clock=clock),
            tuning=tuning,
            sleep=sleeps,
            transport=transport,
            **options,
        )
        adapters.append(adapter)
        return adapter

    yield build
    for adapter in adapters:
        await adapter.aclose()
