"""Fixtures for the taobao plugin tests: controllable clocks, a fake gateway on an in-process ASGI transport,
and clients whose sleeps advance a fake wall clock instead of waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tongcrm.plugin.types import ChannelContext
from tongcrm_taobao.adapter import SyncTuning, TaobaoAdapter
from tongcrm_taobao.client import RetryPolicy, TopClient
from tongcrm_taobao.fake_server import FakeTopGateway, FaultPlan
from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

APP_KEY = "12345678"
SECRET = "helloworld"
SESSION = "fake-session"
ANCHOR = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Rig:
    """Everything one test needs: the gateway, its shop, both clocks, and what the client slept."""

    gateway: FakeTopGateway
    wall: FakeClock
    business: FakeClock
    slept: list[float] = field(default_factory=list)
    clients: list[TopClient] = field(default_factory=list)

    @property
    def shop(self) -> FakeShop:
        return self.gateway.shop

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall.advance(seconds)

    def client(self, **overrides: Any) -> TopClient:
        options: dict[str, Any] = {
            "app_key": APP_KEY,
            "app_secret": SECRET,
            "session": SESSION,
            "gateway_url": "http://127.0.0.1/router/rest",
            "sign_method": "hmac-sha256",
            "retry": RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8, max_ban_wait=60),
            "sleep": self.sleep,
            "wall_clock": self.wall,
            "transport": httpx.ASGITransport(app=self.gateway.asgi_app()),
        }
        options.update(overrides)
        client = TopClient(**options)
        self.clients.append(client)
        return client

    def adapter(
        self,
        *,
        settings: dict[str, str] | None = None,
        tuning: SyncTuning | None = None,
        **client_options: Any,
    ) -> TaobaoAdapter:
        ctx = ChannelContext(
            account_name="shop-1",
            settings={
                "app_key": APP_KEY,
                "app_secret": SECRET,
                "session": SESSION,
                "initial_sync_days": "30",
                **(settings or {}),
            },
            clock=self.business,
        )
        return TaobaoAdapter(ctx, self.client(**client_options), tuning=tuning)


RigFactory = Callable[..., Rig]


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    made: list[Rig] = []

    def build(config: ShopConfig | None = None, faults: FaultPlan | None = None) -> Rig:
        wall = FakeClock(datetime.now(UTC))
        business = FakeClock(ANCHOR + timedelta(hours=1))
        shop = FakeShop(
            config or ShopConfig(trades=300, buyers=80, days=10, anchor=ANCHOR),
            clock=business,
            app_key=APP_KEY,
        )
        gateway = FakeTopGateway(
            shop, app_key=APP_KEY, app_secret=SECRET, session=SESSION, faults=faults, wall_clock=wall
        )
        rig = Rig(gateway=gateway, wall=wall, business=business)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        for client in rig.clients:
            await client.aclose()


@pytest.fixture
def rig(rig_factory: RigFactory) -> Rig:
    return rig_factory()
